"""--backend vllm's process handling, hermetic: a stand-in `vllm` executable (plumbing only; the real
vLLM runs in `make test-vllm`) shows the flags glmv passes, the wait for /health, the stop at the end,
and that a SIGKILLed glmv leaves no server behind."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glmv_cli.engine.managed import ManagedVllmBackend, vllm_command
from glmv_cli.errors import ModelLoadError, UsageError

FAKE = textwrap.dedent(
    """\
    #!{python}
    import http.server, json, os, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_VLLM_ARGS"], "w") as f:
        json.dump({{"args": args, "pid": os.getpid()}}, f)
    if os.environ.get("FAKE_VLLM_FAIL"):
        print("CUDA out of memory while loading", flush=True)
        sys.exit(3)
    port = int(args[args.index("--port") + 1])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch) -> Path:
    exe = tmp_path / "vllm"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("FAKE_VLLM_ARGS", str(tmp_path / "args.json"))
    return exe


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead, only not yet reaped
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_dead(pid: int, timeout: float = 30) -> bool:
    """Wait for the process to end (the event: its pidfd turns readable), at most `timeout` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_vllm_flags_follow_glmvs_options():
    cmd = vllm_command(
        "vllm", "zai-org/GLM-4.6V-Flash", port=9, served_name="GLM-4.6V-Flash", dtype="bf16", quant="4bit",
        max_pages=2, max_tokens=1000, gpu_memory_utilization=0.8,
    )  # fmt: skip
    flag = lambda name: cmd[cmd.index(name) + 1]  # noqa: E731
    assert cmd[:3] == ["vllm", "serve", "zai-org/GLM-4.6V-Flash"] and flag("--host") == "127.0.0.1"
    assert flag("--max-model-len") == str(2 * 6144 + 4096 + 1000)
    assert json.loads(flag("--limit-mm-per-prompt")) == {"image": 2}
    assert json.loads(flag("--structured-outputs-config"))["backend"] == "guidance"
    assert flag("--dtype") == "bfloat16" and flag("--quantization") == "bitsandbytes"
    assert flag("--gpu-memory-utilization") == "0.8" and "--enable-prefix-caching" in cmd


def test_server_starts_on_first_use_and_stops_on_close(fake_vllm, tmp_path):
    lines: list[str] = []
    backend = ManagedVllmBackend("some/model", command=str(fake_vllm), on_status=lines.append, max_pages=3)
    assert backend.identity()["backend"] == "vllm" and backend.server is None  # identity starts nothing
    backend.remote  # noqa: B018 - starts the server, waits for /health
    started = json.loads((tmp_path / "args.json").read_text())
    assert started["args"][:2] == ["serve", "some/model"] and "model" in started["args"]
    assert any("ready" in line for line in lines)
    backend.close()
    assert _wait_dead(started["pid"])


def test_a_server_that_fails_to_start_is_a_clear_error(fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_FAIL", "1")
    backend = ManagedVllmBackend("m", command=str(fake_vllm))
    with pytest.raises(ModelLoadError, match="exited with 3: .*CUDA out of memory"):
        backend.remote  # noqa: B018
    with pytest.raises(UsageError, match="needs the `vllm` command"):
        ManagedVllmBackend("m", command="/no/such/vllm")


def test_sigkilled_glmv_leaves_no_server(fake_vllm, tmp_path):
    """The server is started from a worker thread that ends (as a loader thread would); glmv is then
    killed outright: the parent-death signal still takes the server down."""
    script = textwrap.dedent(
        f"""
        import signal, threading
        from glmv_cli.engine.managed import ManagedVllmBackend
        backend = ManagedVllmBackend("m", command={str(fake_vllm)!r})
        t = threading.Thread(target=lambda: backend.remote)
        t.start(); t.join()
        print("ready", flush=True)
        signal.pause()  # until killed
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert proc.stdout.readline().strip() == "ready"  # the event: the server is up
        server = json.loads((tmp_path / "args.json").read_text())["pid"]
        assert _alive(server)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait_dead(server), "the server outlived a SIGKILLed glmv"
    finally:
        proc.kill()
