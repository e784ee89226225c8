"""`--backend vllm`: glmv starts a vLLM server of its own, runs the job through it, and stops it.

On a GPU, vLLM's kernels and scheduler decode several times faster than transformers. glmv runs
`vllm serve MODEL` on a free 127.0.0.1 port in its own process group, with flags from glmv's
options (dtype and quantisation, context length, images per prompt, structured outputs through
llguidance as glmv's own engine uses, prefix caching, GPU memory share, served name), waits for
/health, then talks to it as the remote backend does. The server stops when the job ends, on
Ctrl-C and on a failure; if glmv is killed outright, the kernel's parent-death signal (Linux
PR_SET_PDEATHSIG) sends it SIGTERM, and vLLM takes its engine workers down with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glmv_cli.engine.base import Backend, Generation, Request
from glmv_cli.errors import ModelLoadError, UsageError

PAGE_TOKENS = 6144  # GLM-4.6V's processor keeps at most this many visual tokens per image
PROMPT_TOKENS = 4096  # system text, schema, text layer
MAX_CONTEXT = 131072  # GLM-4.6V-Flash's context
START_TIMEOUT_S = 900.0  # a first start compiles kernels and loads ~20 GB of weights
QUANT_FLAGS = {"4bit": ["--quantization", "bitsandbytes"], "8bit": ["--quantization", "fp8"]}


def vllm_command(
    executable: str,
    model: str,
    *,
    port: int,
    served_name: str,
    dtype: str = "auto",
    quant: str = "auto",
    revision: str | None = None,
    max_pages: int = 8,
    max_tokens: int = 2048,
    gpu_memory_utilization: float | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The `vllm serve` command line for glmv's options."""
    max_len = min(MAX_CONTEXT, max_pages * PAGE_TOKENS + PROMPT_TOKENS + max_tokens)
    cmd = [executable, "serve", model, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--served-model-name", served_name, "--max-model-len", str(max_len)]
    cmd += ["--limit-mm-per-prompt", json.dumps({"image": max_pages})]
    # Constrained decoding with llguidance and no free whitespace, as glmv's own engine decodes.
    cmd += ["--structured-outputs-config", json.dumps({"backend": "guidance", "disable_any_whitespace": True})]
    cmd += ["--enable-prefix-caching", "--seed", "0"]
    if dtype not in ("auto", ""):
        cmd += ["--dtype", {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)]
    cmd += QUANT_FLAGS.get(quant, [])
    if revision:
        cmd += ["--revision", revision]
    if gpu_memory_utilization is not None:
        cmd += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return cmd + list(extra)


class ServerProcess:
    """An HTTP server command in its own process group, its output in `log`; stop() ends the whole group.

    `name` is how errors call it; `grace` is how long stop() waits after SIGTERM before SIGKILL. The
    bench's servers (bench/vllm_server.py) are these too.
    """

    name = "server"
    grace = 30.0

    def __init__(
        self, cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        self.cmd, self.port, self.log, self.env, self.cwd = cmd, port, log, env, cwd
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self._log: Any = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Start it from a thread that lives until stop(): the parent-death signal fires when the thread
        that started a child ends, so a short-lived worker thread must not be that parent."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        started, failure = threading.Event(), []

        def parent() -> None:
            try:
                self.proc = subprocess.Popen(
                    self.cmd,
                    cwd=self.cwd,
                    env=self.env,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # its own group: Ctrl-C in the terminal reaches glmv, which stops it
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - one libc call before exec
                )
            except OSError as exc:
                failure.append(exc)
            started.set()
            self._stopped.wait()

        threading.Thread(target=parent, name=f"{self.name}-parent", daemon=True).start()
        started.wait()
        if failure:
            self._log.close()
            raise ModelLoadError(f"cannot start {self.cmd[0]}: {failure[0].strerror or failure[0]}")

    def wait_healthy(self, timeout: float, on_wait: Callable[[float], None] | None = None) -> None:
        """Until /health answers 200; ModelLoadError with the log's tail if it exits or times out."""
        assert self.proc is not None
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise ModelLoadError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.base}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    return
            if on_wait is not None:
                on_wait(time.monotonic() - started)
            time.sleep(0.5)
        raise ModelLoadError(f"{self.name} was not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        if self._log is not None and not self._log.closed:
            self._log.flush()
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(line.strip()[:200] for line in text[-lines:]) or "no output"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds (engine workers)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=self.grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        self.proc = None
        self._stopped.set()


class ManagedVllmBackend(Backend):
    """The remote backend over a vLLM server this process starts on first use and stops on close()."""

    accepts_encoded_images = True
    takes_requests_as_ready = True

    def __init__(
        self,
        model: str,
        *,
        command: str | None = None,
        served_name: str | None = None,
        concurrency: int | None = None,
        request_timeout: float | None = None,
        start_timeout: float = START_TIMEOUT_S,
        on_status: Callable[[str], None] | None = None,
        **options: Any,
    ):
        self.model_id = model
        self.executable = command or shutil.which("vllm") or ""
        if not self.executable or not (shutil.which(self.executable) or Path(self.executable).is_file()):
            raise UsageError(
                "--backend vllm needs the `vllm` command",
                "pip install vllm (on a CUDA machine), or name it: --vllm-command /path/to/venv/bin/vllm",
            )
        self.served_name = served_name or model.rstrip("/").split("/")[-1]
        self.options, self.concurrency, self.request_timeout = options, concurrency, request_timeout
        self.start_timeout, self.on_status = start_timeout, on_status
        self.server: ServerProcess | None = None
        self._remote: Backend | None = None
        self._lock = threading.Lock()

    @property
    def remote(self) -> Backend:
        with self._lock:
            if self._remote is None:
                self._remote = self._start()
            return self._remote

    def _start(self) -> Backend:
        from glmv_cli.engine.remote import RemoteBackend

        port = free_port()
        cmd = vllm_command(self.executable, self.model_id, port=port, served_name=self.served_name, **self.options)
        log = Path(tempfile.mkdtemp(prefix="glmv-vllm-")) / "vllm-serve.log"
        server = ServerProcess(cmd, port, log)
        server.name = "vllm serve"
        self._status(f"starting vllm serve for {self.model_id} (log: {log})")
        server.start()
        self.server = server
        try:
            server.wait_healthy(self.start_timeout, lambda s: self._status(f"vllm serve starting: {s:.0f} s"))
        except BaseException:
            self.close()
            raise
        self._status(f"vllm serve ready at {server.base}/v1")
        return RemoteBackend(
            [f"{server.base}/v1"],
            model=self.served_name,
            concurrency=self.concurrency,
            request_timeout=self.request_timeout,
        )

    def _status(self, line: str) -> None:
        if self.on_status is not None:
            self.on_status(line)

    # The Backend interface, through the server.
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        return self.remote.generate(requests)

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        return self.remote.stream(request, on_text)

    def identity(self) -> dict[str, Any]:
        return {"backend": "vllm", "model": self.model_id, **{k: v for k, v in self.options.items() if v is not None}}

    def __getattr__(self, name: str) -> Any:  # estimate_tokens, max_image_pixels, generate_stream, ...
        if name.startswith("_") or name in ("server", "options"):
            raise AttributeError(name)
        return getattr(self.remote, name)

    def default_batch_size(self) -> int:
        return self.remote.default_batch_size()

    def estimate_tokens(self, request: Request) -> int:
        return self.remote.estimate_tokens(request)

    def max_image_pixels(self) -> int | None:
        return self.remote.max_image_pixels()

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
        if self.server is not None:
            self.server.stop()
            self.server = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In the server process, before exec: SIGTERM when glmv dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
