"""`vllm serve` on a checkpoint in `.venv-vllm`, for the bench's vLLM row and the `vllm` tests.

Starts the server on 127.0.0.1 in its own process group (glmv's own ServerProcess, the one
`--backend vllm` uses) with the environment ../shared/VLLM-CPU.md found necessary on CPU machines,
polls /health, and stops the whole group (the engine worker spins a core at 100% even when idle,
so stop it as soon as it is not needed). No bench extras: the tests import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from glmv_cli.engine import managed
from glmv_cli.engine.managed import free_port  # noqa: F401 - the bench's and the tests' port picker

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-vllm"
VLLM = VENV / "bin" / "vllm"
STRUCTURED_BACKEND = "xgrammar"  # vLLM's default choice ("auto"); "guidance" (llguidance) is the other compact-JSON one
HEALTH_TIMEOUT_S = 180


def available() -> bool:
    """Whether `make vllm` has built the environment."""
    return VLLM.exists()


def server_env() -> dict[str, str]:
    """The environment ../shared/VLLM-CPU.md found necessary on these CPU machines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(
        VLLM_TARGET_DEVICE="cpu",
        VLLM_CPU_KVCACHE_SPACE="2",  # GiB
        HF_HUB_OFFLINE="1",
        VLLM_ALLOW_LONG_MAX_MODEL_LEN="1",
        PATH=f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
    )
    return env


class ServerProcess(managed.ServerProcess):
    """glmv's server process (engine/managed.py), started at once from the repository root."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str]):
        super().__init__(cmd, port, log, env=env, cwd=ROOT)
        self.start()

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S, on_wait=None) -> None:  # type: ignore[override]
        super().wait_healthy(timeout, on_wait)


class Server(ServerProcess):
    """`vllm serve CHECKPOINT` on 127.0.0.1 with the CPU environment above."""

    name = "vllm serve"

    def __init__(
        self,
        checkpoint: Path,
        port: int,
        log: Path,
        served_name: str,
        max_model_len: int = 16384,
        extra_args: tuple[str, ...] = (),
    ):
        config = json.dumps({"backend": STRUCTURED_BACKEND, "disable_any_whitespace": True})
        cmd = [
            str(VLLM),
            "serve",
            str(checkpoint),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            str(max_model_len),
            "--served-model-name",
            served_name,
            "--seed",
            "0",
            "--structured-outputs-config",
            config,
            *extra_args,
        ]
        super().__init__(cmd, port, log, server_env())
