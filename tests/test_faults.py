"""Fault injection: every stage of a document's trip fails for one document of five, and only for it.

Each test makes one stage raise (or, for reading and rendering, hang) on `bad.png`; the run goes
on: four records are ok, one is failed with that stage's error code, the output file holds all
five, stderr has no traceback, and the exit code is 3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from glmv_cli.cli import app
from tests.conftest import ANSWERED, SAMPLES

runner = CliRunner()
SMALL = "vendor, total float: grand total, date date"
BAD_SIZE = (333, 222)  # the bad document's image size: how engine-level faults find its rows


@pytest.fixture
def five(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("invoice-acme.png", "receipt-cafe.jpg", "screenshot-login.png", "invoice-acme.pdf"):
        shutil.copy(SAMPLES / name, folder / name)
    Image.new("RGB", BAD_SIZE, "white").save(folder / "bad.png")
    return folder


def run(folder: Path, tmp_path: Path, *extra: str):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(
        app,
        ["extract", str(folder), "--schema", SMALL, "--max-tokens", "256", "--max-pages", "1", "-o", str(out), *extra],
    )
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return result, records


def assert_one_failed(result, records, code: str) -> dict:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.exit_code == 3, (result.exit_code, result.stderr)
    assert len(records) == 5, records
    by_name = {Path(r["file"]).name: r for r in records}
    bad = by_name.pop("bad.png")
    assert bad["status"] == "failed" and bad["error_code"] == code, bad
    assert bad["error"] and "\n" not in bad["error"]
    assert all(r["status"] in ANSWERED for r in by_name.values()), [(n, r["error"]) for n, r in by_name.items()]
    return bad


def _is_bad(path) -> bool:
    return Path(str(path)).name == "bad.png"


def _hang_forever(*_args, **_kwargs):
    threading.Event().wait()


def _bad_rows(requests) -> bool:
    return any(r.images and r.images[0].size == BAD_SIZE for r in requests)


def test_read_raises(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.extraction import stages

    real = stages.read_file

    def read(path, **kw):
        if _is_bad(path):
            raise RuntimeError("disk on fire")
        return real(path, **kw)

    monkeypatch.setattr(stages, "read_file", read)
    bad = assert_one_failed(*run(five, tmp_path), "read_failed")
    assert "disk on fire" in bad["error"]


def test_read_hangs(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.extraction import stages

    real = stages.read_file
    monkeypatch.setattr(stages, "read_file", lambda p, **kw: _hang_forever() if _is_bad(p) else real(p, **kw))
    assert_one_failed(*run(five, tmp_path, "--read-timeout", "1"), "read_timeout")


def test_decode_raises(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.extraction import stages

    real = stages.load_document

    def load(data, **kw):
        if _is_bad(kw["name"]):
            raise ValueError("decoder bug")
        return real(data, **kw)

    monkeypatch.setattr(stages, "load_document", load)
    assert_one_failed(*run(five, tmp_path), "load_failed")


def test_render_hangs(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.extraction import stages

    real = stages.load_document
    monkeypatch.setattr(
        stages, "load_document", lambda d, **kw: _hang_forever() if _is_bad(kw["name"]) else real(d, **kw)
    )
    assert_one_failed(*run(five, tmp_path, "--render-timeout", "0.5"), "render_timeout")


def test_preprocess_raises(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.engine.local import LocalBackend

    real = LocalBackend.prepare

    def prepare(self, request):
        if _bad_rows([request]):
            raise ValueError("absolute aspect ratio must be smaller than 200")
        return real(self, request)

    monkeypatch.setattr(LocalBackend, "prepare", prepare)
    assert_one_failed(*run(five, tmp_path), "preprocess_failed")


@pytest.mark.parametrize("think", [False, True])
def test_generate_raises(model_env, five, tmp_path, monkeypatch, think):
    from glmv_cli.engine.local import LocalBackend

    real = LocalBackend._run

    def generate(self, requests, *args, **kw):
        if _bad_rows(requests):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(self, requests, *args, **kw)

    monkeypatch.setattr(LocalBackend, "_run", generate)
    extra = ("--think", "--think-budget", "8") if think else ()
    bad = assert_one_failed(*run(five, tmp_path, "--batch-size", "5", *extra), "generation_failed")
    assert "device-side assert" in bad["error"]


def test_batch_level_generate_failure_retries_rows(model_env, five, tmp_path, monkeypatch):
    """Even a backend that fails whole batches (no isolation of its own) fails one document only.

    Its stream breaks at the bad document, and so does every batch holding it: the pipeline
    goes on in batches from the documents that were in flight, and retries a failed batch row by row.
    """
    from glmv_cli.engine.local import LocalBackend

    real = LocalBackend.generate
    real_stream = LocalBackend.generate_stream

    def generate(self, requests):
        if _bad_rows(requests):
            raise RuntimeError("batch exploded")
        return real(self, requests)

    def generate_stream(self, requests, **kw):
        def checked():
            for r in requests:
                if r is not None and _bad_rows([r]):
                    raise RuntimeError("stream exploded")
                yield r

        return real_stream(self, checked(), **kw)

    monkeypatch.setattr(LocalBackend, "generate", generate)
    monkeypatch.setattr(LocalBackend, "generate_stream", generate_stream)
    assert_one_failed(*run(five, tmp_path, "--batch-size", "5"), "generation_failed")


def test_validate_raises(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.extraction import stages

    real = stages.Stages._check

    def check(self, gen):
        if _is_bad(gen.tag):
            raise TypeError("validator bug")
        return real(self, gen)

    monkeypatch.setattr(stages.Stages, "_check", check)
    assert_one_failed(*run(five, tmp_path), "invalid_output")


@pytest.mark.parametrize("method", ["get", "put"])
def test_cache_raises(model_env, five, tmp_path, monkeypatch, method):
    from glmv_cli.cache import ResultCache
    from glmv_cli.extraction import stages

    bad_sha = hashlib.sha256((five / "bad.png").read_bytes()).hexdigest()
    real_key = stages.cache_key
    monkeypatch.setattr(
        stages, "cache_key", lambda parts: ("bad-" if parts["file"] == bad_sha else "") + real_key(parts)
    )
    real = getattr(ResultCache, method)

    def fail(self, key, *args, **kw):
        if key.startswith("bad-"):
            raise OSError("database disk image is malformed")
        return real(self, key, *args, **kw)

    monkeypatch.setattr(ResultCache, method, fail)
    bad = assert_one_failed(*run(five, tmp_path), "cache_failed")
    if method == "put":
        assert bad["data"] is not None  # the answer is kept; only caching it failed


def test_write_raises(model_env, five, tmp_path, monkeypatch):
    from glmv_cli.outputs.writers import JsonlWriter

    real = JsonlWriter.write

    def write(self, record):
        if _is_bad(record.file) and record.status in ANSWERED:
            raise ValueError("cannot serialise")
        return real(self, record)

    monkeypatch.setattr(JsonlWriter, "write", write)
    assert_one_failed(*run(five, tmp_path), "write_failed")
