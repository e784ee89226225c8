"""`vllm serve` on a checkpoint in `.venv-vllm`, for the bench's vLLM row and the `vllm` tests.

Starts the server on 127.0.0.1 in its own process group with the environment
../shared/VLLM-CPU.md found necessary on CPU machines, polls /health, and stops the whole group
(the engine worker spins a core at 100% even when idle, so stop it as soon as it is not needed).
Standard library only: the tests import it without the bench's extras.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the server process: SIGTERM when the process that started it dies (e.g. killed on timeout)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    """An HTTP server command in its own process group, its output in `log`; stop() ends the whole group.

    `name` is how errors call it; `grace` is how long stop() waits after SIGTERM before SIGKILL.
    """

    name = "server"
    grace = 30.0

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict[str, str]):
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - a no-op libc call, before exec
        )

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.base}/health", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not healthy after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 3) -> str:
        self._log.flush()
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip()[:200] for line in text[-lines:]) or "no output"

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=self.grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # e.g. engine workers that outlived the API server
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


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
