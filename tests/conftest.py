"""Shared fixtures: the tiny same-architecture checkpoint, built once per session, and a hermetic env."""

from __future__ import annotations

import ast
import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SAMPLES = ROOT / "samples"
# Statuses with data. Random weights run answers into their token budget, so the tiny checkpoint's
# answers are often closed early, hence review: plumbing tests accept both.
ANSWERED = ("ok", "review")


def answered(status: str) -> str:
    """ok for both statuses that carry data (ok, review); any other status as it is."""
    return "ok" if status in ANSWERED else status


# No test may reach the network, or the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist, share the cores between workers: torch's default of one thread per core in
# every worker (and in every glmv it starts) oversubscribes them. `make test` sets this before
# Python starts (which works best); this covers a plain `pytest -n N`, and the glmv processes tests start.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(_threads))


# CPython 3.11 keeps ast.parse's recursion counter per interpreter, not per thread (python/cpython#106905):
# two threads parsing at once can fail one of them with "SystemError: AST constructor recursion depth
# mismatch". In a test process the main thread parses whenever pytest rewrites a module it imports
# (plugin packages such as anyio), and any thread parses when it formats a traceback (3.11's caret
# anchors). CI failed test_review_page_api once that way, while a test server's thread printed a
# client's broken pipe. One parse at a time in the test process.
_ast_parse, _ast_lock = ast.parse, threading.Lock()


def _one_parse_at_a_time(*args, **kwargs):
    with _ast_lock:
        return _ast_parse(*args, **kwargs)


ast.parse = _one_parse_at_a_time


class QuietHTTPServer(http.server.ThreadingHTTPServer):
    """A threaded test server that does not print its handlers' errors: a client that hangs up early (a
    timeout, a cancelled batch) is what several tests want, and printing a traceback from a server
    thread is noise at best (and a parse racing the main thread's, above)."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


def needs_corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not beside the repository")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight GLM-4.6V-architecture checkpoint (about 1.8 MB), built offline."""
    from glmv_cli.engine.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-glm4v")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("GLMV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("GLMV_MODEL", raising=False)


@pytest.fixture
def model_env(monkeypatch, tiny_model) -> Path:
    """GLMV_MODEL pointing at the tiny checkpoint."""
    monkeypatch.setenv("GLMV_MODEL", str(tiny_model))
    return tiny_model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def glmv_serve(model: Path, tmp: Path, *args: str, timeout: float = 120) -> Iterator[tuple[str, Path]]:
    """`glmv serve -m MODEL ARGS` in a subprocess at a free port: (base URL, stderr log) once /health is ok.

    Its cache lives in `tmp`; the process is terminated (then killed) on exit.
    """
    port = free_port()
    log = tmp / "serve-stderr.log"
    env = {**os.environ, "GLMV_CACHE_DIR": str(tmp / "serve-cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("GLMV_MODEL", None)
    env.pop("GLMV_API_KEYS", None)
    cmd = [sys.executable, "-m", "glmv_cli", "serve", "-m", str(model), "--port", str(port), *args]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"glmv serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    assert json.load(response)["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"glmv serve did not come up:\n{log.read_text()}")
                time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
