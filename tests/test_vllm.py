"""The remote backend against a real vLLM (its CPU build in .venv-vllm) serving the tiny checkpoint.

Opt-in: `make test-vllm` (pytest -m vllm). The server takes about a minute to start and its
engine worker spins a core while it lives, so one server serves the whole module and is stopped
at its end; the default suite never starts it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bench import vllm_server
from glmv_cli.engine.base import GenerationSettings, Request
from glmv_cli.engine.remote import RemoteBackend
from tests.conftest import ROOT, needs_corpus
from tests.test_remote import HOOK, closed_port_url

pytestmark = pytest.mark.vllm
SERVED = "glmv-tiny"


def skip_unless_vllm_run(request) -> None:
    """Skip unless pytest runs the vllm marker (`make test-vllm`) and `make vllm` built .venv-vllm."""
    expr = request.config.getoption("markexpr") or ""
    if "vllm" not in expr or "not vllm" in expr:
        pytest.skip("starts a vLLM server: run with `make test-vllm` (pytest -m vllm)")
    if not vllm_server.available():
        pytest.skip(".venv-vllm is absent: `make vllm` builds it (../shared/VLLM-CPU.md)")


@pytest.fixture(scope="module")
def vllm_url(request, tmp_path_factory):
    skip_unless_vllm_run(request)
    tiny_model = request.getfixturevalue("tiny_model")  # built only when the server will start
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    server = vllm_server.Server(tiny_model, vllm_server.free_port(), log, SERVED)
    try:
        server.wait_healthy()
        yield f"{server.base}/v1"
    finally:
        server.stop()


def glmv(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """glmv in a subprocess; returns the run and the torch / transformers modules it imported."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HOOK)
    modules = tmp_path / "modules.txt"
    env = {**os.environ, "PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}", "GLMV_TEST_MODULES": str(modules)}
    run = subprocess.run(
        [sys.executable, "-m", "glmv_cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
    )
    return run, [m for m in modules.read_text().split("\n") if m] if modules.exists() else ["(hook did not run)"]


def test_backend_keeps_vllms_logprobs_and_fails_over_a_dead_url(vllm_url):
    remote = RemoteBackend([closed_port_url(), vllm_url], concurrency=4, backoff_s=0.05)
    assert remote.identity()["model"] == SERVED and remote.identity()["max_model_len"] == 16384
    schema = {"type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}
    image = Image.new("RGB", (64, 48), (255, 255, 255))
    settings = GenerationSettings(max_new_tokens=32)
    requests = [Request(images=[image], prompt="Total?", json_schema=schema, settings=settings) for _ in range(4)]
    gens = remote.generate(requests)
    assert all(g.error is None for g in gens), [g.error for g in gens]
    for gen in gens:
        assert gen.finish_reason in ("stop", "length") and gen.prompt_tokens > 0
        assert gen.token_logprobs and len(gen.token_logprobs) == len(gen.tokens) == gen.output_tokens
        assert all(lp <= 0 for lp in gen.token_logprobs)
        if gen.finish_reason == "stop":
            assert json.loads(gen.text).keys() == {"total"}  # vLLM constrained the answer to the schema
    assert [e.url for e in remote._endpoints.all if e.down_until > time.monotonic()] == [remote.base_urls[0]]


def test_extract_over_a_corpus_folder_writes_every_record(vllm_url, tmp_path):
    invoices = needs_corpus() / "invoices"
    documents = sorted(p.name for p in invoices.iterdir() if not p.name.endswith(".json"))
    args = ["extract", str(invoices), "--schema", "invoice", "--exclude", "*.json", "--max-pages", "1"]
    args += ["--max-tokens", "256", "--no-cache", "--backend", "openai", "--api-key", "unused"]
    run, heavy = glmv(tmp_path, *args, "--base-url", closed_port_url(), "--base-url", vllm_url)
    assert run.returncode in (0, 3), run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert sorted(Path(r["file"]).name for r in records) == documents
    assert {r["model"] for r in records} == {SERVED} and heavy == []
    # random weights: answers are often cut off at the budget; whatever happened, it is said
    for r in records:
        assert r["status"] in ("ok", "review", "failed")
        assert r["status"] != "failed" or (r["error"] and r["error_code"]), r
    answered = [r for r in records if r["status"] in ("ok", "review")]
    assert all(r.get("confidence") is not None for r in answered), "vLLM's log-probabilities give confidence"


def test_ask_streams_from_vllm(vllm_url, tmp_path):
    image = tmp_path / "page.png"
    Image.new("RGB", (120, 80), (250, 250, 250)).save(image)
    args = ["ask", str(image), "What is shown?", "--max-tokens", "24", "--backend", "openai", "--stats"]
    run, heavy = glmv(tmp_path, *args, "--base-url", vllm_url)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.endswith("\n") and "tokens/s" in run.stderr and heavy == []


def test_backend_vllm_runs_its_own_server_and_matches_a_hand_started_one(vllm_url, tmp_path):
    """`--backend vllm` starts vllm serve on the trained checkpoint, runs the job, stops it: the records
    equal `--backend openai` against a server started by hand on the same checkpoint."""
    trained = ROOT / "models" / "glmv-tiny-trained"
    sys.path.insert(0, str(ROOT / "tools"))
    import synth_docs

    synth_docs.write_folder(tmp_path / "docs", 20261210, 3, ("invoice",), forms=("pdf",))
    common = ["extract", str(tmp_path / "docs"), "--schema", "invoice_number, date, total float", "--no-cache"]
    common += ["--text-hint", "on", "-m", str(trained)]
    env = {**vllm_server.server_env(), "PATH": os.environ["PATH"]}
    managed = subprocess.run(
        [sys.executable, "-m", "glmv_cli", *common, "--backend", "vllm", "--vllm-command", str(vllm_server.VLLM)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert managed.returncode == 0, managed.stderr[-2000:]
    assert "vllm serve ready" in managed.stderr
    hand = vllm_server.Server(trained, vllm_server.free_port(), tmp_path / "hand.log", trained.name)
    try:
        hand.wait_healthy()
        remote = subprocess.run(
            [sys.executable, "-m", "glmv_cli", *common, "--backend", "openai", "--base-url", f"{hand.base}/v1"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        hand.stop()
    assert remote.returncode == 0, remote.stderr[-2000:]
    mine = [json.loads(line) for line in managed.stdout.splitlines()]
    theirs = [json.loads(line) for line in remote.stdout.splitlines()]
    assert [(r["file"], r["status"], r["data"]) for r in mine] == [(r["file"], r["status"], r["data"]) for r in theirs]
    assert subprocess.run(["pgrep", "-f", "vllm serve .*glmv-tiny-trained"], capture_output=True).returncode == 1


def _descendants(pid: int) -> list[int]:
    """Every process below pid (vLLM's API server starts its engine core as a child)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def test_sigkilled_glmv_leaves_no_vllm(tiny_model, tmp_path, request):
    """`glmv extract --backend vllm` killed with SIGKILL once its server is up: the real vllm serve and every
    process under it end (the parent-death signal), none is left behind."""
    skip_unless_vllm_run(request)
    from tests.test_managed import _wait_dead

    model = tmp_path / "own-tiny"  # a path of its own: no other server's command line holds it
    shutil.copytree(tiny_model, model)
    args = ["extract", str(ROOT / "samples"), "--schema", "invoice", "--no-cache", "--max-tokens", "4096"]
    args += ["-m", str(model), "--backend", "vllm", "--vllm-command", str(vllm_server.VLLM)]
    env = {**vllm_server.server_env(), "PATH": os.environ["PATH"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "glmv_cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in proc.stderr:  # the event: the server is up and the job has begun
            if "vllm serve ready" in line:
                break
        found = subprocess.run(["pgrep", "-f", f"vllm serve {model}"], capture_output=True, text=True)
        [server] = [int(p) for p in found.stdout.split()]
        family = [server, *_descendants(server)]
        assert proc.poll() is None, "glmv finished before it could be killed: give it more work"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for pid in family:
            assert _wait_dead(pid, timeout=120), f"process {pid} under vllm serve outlived a SIGKILLed glmv"
    finally:
        proc.kill()
