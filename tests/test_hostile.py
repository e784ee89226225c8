"""Hostile folders end to end: odd files, extreme pages, crashes and interrupts never cost the run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

from glmv_cli.cache import ResultCache
from glmv_cli.inputs import discover
from tests.conftest import ANSWERED, ROOT, SAMPLES, needs_corpus

SMALL = "vendor, total float: grand total, date date"


def make_pdf(path: Path, sizes: list[tuple[float, float]]) -> Path:
    pdf = pdfium.PdfDocument.new()
    for width, height in sizes:
        pdf.new_page(width, height).close()
    pdf.save(str(path))
    pdf.close()
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """The issue's folder: a good invoice beside everything that used to stop, hang or crash a run."""
    folder = tmp_path_factory.mktemp("hostile")
    shutil.copy(SAMPLES / "invoice-acme.png", folder / "invoice.png")
    os.symlink("loop.png", folder / "loop.png")
    os.mkfifo(folder / "f.pdf")
    make_pdf(folder / "sliver.pdf", [(0.2, 842)])
    Image.new("RGB", (1, 3000), "white").save(folder / "thin.png")
    Image.new("L", (20000, 14000), 255).save(folder / "huge.jpg", quality=30)
    make_pdf(folder / "long.pdf", [(100, 100)] * 117)
    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus"
    encrypted = corpus / "nasty" / "encrypted_pdfium_pw-test_user.pdf"
    if encrypted.exists():
        shutil.copy(encrypted, folder / "encrypted.pdf")
    return folder


def glmv(*args: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "glmv_cli", *args],
        env=env,
        cwd=kw.pop("cwd", ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.fixture
def env(model_env, tmp_path) -> dict[str, str]:
    return {**os.environ, "GLMV_MODEL": str(model_env), "GLMV_CACHE_DIR": str(tmp_path / "cache")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hostile_folder(hostile, env, tmp_path):
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    proc = glmv("extract", str(hostile), "--schema", SMALL, "--max-tokens", "128", "-o", str(out), env=env)
    _, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 3, stderr
    assert "Traceback" not in stderr
    records = {Path(r["file"]).name: r for r in read_jsonl(out)}
    assert set(records) == {p.name for p in hostile.iterdir()}, "one record per file"
    for name, r in records.items():
        if r["status"] == "failed":
            assert r["error_code"] and r["error"] and "\n" not in r["error"], (name, r)
    assert records["invoice.png"]["status"] in ANSWERED
    assert records["loop.png"]["error_code"] == "not_a_regular_file"
    assert records["f.pdf"]["error_code"] == "not_a_regular_file"
    # Extreme shapes are padded into the model's range instead of crashing its processor.
    assert records["sliver.pdf"]["status"] in ANSWERED, records["sliver.pdf"]
    assert records["thin.png"]["status"] in ANSWERED, records["thin.png"]
    assert records["huge.jpg"]["status"] in ANSWERED, records["huge.jpg"]  # decoded at 1/4 scale by the JPEG decoder
    long = records["long.pdf"]
    assert long["status"] in ANSWERED and long["pages"] == list(range(1, 9)) and long["page_count"] == 117
    assert long["warning"].startswith("117 pages; used 1-8; raise --max-pages")
    if "encrypted.pdf" in records:
        assert records["encrypted.pdf"]["error_code"] == "pdf_encrypted"
    assert "over --max-pages" in stderr
    print(f"hostile folder: {took:.1f} s")


def test_nasty_corpus_codes(env, tmp_path):
    nasty = needs_corpus() / "nasty"
    out = tmp_path / "out.jsonl"
    proc = glmv("extract", str(nasty), "--schema", "invoice", "--max-tokens", "128", "-o", str(out), env=env)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3 and "Traceback" not in stderr
    records = read_jsonl(out)
    assert len(records) == len(list(nasty.iterdir()))
    assert all(r["error_code"] for r in records if r["status"] == "failed")


def kill_and_resume(folder: Path, env: dict[str, str], tmp_path: Path, moments: list[float]) -> None:
    """SIGKILL a run at each moment, then re-run: the output is whole, each document exactly once."""
    out = tmp_path / "out.jsonl"
    args = ["extract", str(folder), "--schema", SMALL, "--max-tokens", "64", "--batch-size", "2", "-o", str(out), "-q"]
    cache = ResultCache(Path(env["GLMV_CACHE_DIR"]))
    expected = sorted(str(p) for p in discover([folder]))
    for moment in moments:
        proc = glmv(*args, env=env)
        time.sleep(moment)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if out.exists():  # the previous complete output, never a torn one
            assert sorted(r["file"] for r in read_jsonl(out)) == expected
        finished = cache.info()["entries"] if cache.path.exists() else 0
        stats = tmp_path / "stats.json"
        rerun = glmv(*args, "--stats-json", str(stats), env=env)
        _, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode in (0, 3), stderr
        assert sorted(r["file"] for r in read_jsonl(out)) == expected  # each exactly once
        assert json.loads(stats.read_text())["docs_cached"] == finished  # finished work is not recomputed
        cache.clear()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp files left behind"


def test_kill_9_then_rerun(env, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.py", "*.json"))
    kill_and_resume(folder, env, tmp_path, [0.3, 3.0])  # while loading, while answering (5 moments: slow test)


def test_first_ctrl_c_writes_what_finished(env, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.py", "*.json"))
    out = tmp_path / "out.jsonl"
    args = ["extract", str(folder), "--schema", SMALL, "--max-tokens", "64", "--batch-size", "1", "-o", str(out)]
    proc = glmv(*args, env=env)
    cache = ResultCache(Path(env["GLMV_CACHE_DIR"]))
    deadline = time.monotonic() + 120
    # Signal once the first document is cached: the run loop (and its Ctrl-C handler) is live.
    while not (cache.path.exists() and cache.info()["entries"]) and proc.poll() is None:
        assert time.monotonic() < deadline, "no document finished in 120 s"
        time.sleep(0.1)
    if proc.poll() is not None:
        pytest.skip("the run finished before the signal could be sent")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    records = read_jsonl(out)  # what finished is written, as a complete file
    assert records and len({r["file"] for r in records}) == len(records)
    assert "documents ok" in stderr  # statistics still printed


def test_second_ctrl_c_stops_at_once(env, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.py", "*.json"))
    out = tmp_path / "out.jsonl"
    out.write_text('{"previous": true}\n')
    proc = glmv("extract", str(folder), "--schema", SMALL, "--max-tokens", "64", "-o", str(out), env=env)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    text = out.read_text()
    assert text == '{"previous": true}\n' or all(json.loads(line) for line in text.splitlines())


@pytest.mark.slow
def test_kill_9_over_the_corpus(env, tmp_path):
    """The issue's acceptance: SIGKILL a run over the shared corpus at 5 moments, re-run each time."""
    kill_and_resume(needs_corpus(), env, tmp_path, [1.0, 3.0, 6.0, 10.0, 15.0])


def test_schema_in_cwd_is_not_run(env, tmp_path):
    work = tmp_path / "work"
    (work / "schemas").mkdir(parents=True)
    marker = tmp_path / "ran"
    (work / "schemas" / "document.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nprint('RAN')\n")
    (work / "d").mkdir()
    shutil.copy(SAMPLES / "invoice-acme.png", work / "d" / "a.png")
    proc = glmv("extract", "d", "--max-tokens", "64", env=env, cwd=work)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 3), stderr  # 64 tokens may cut the random model's answer short
    assert not marker.exists() and "RAN" not in stdout + stderr
    assert "document (built-in)" in stderr


def test_out_dir_with_a_symlink_loop_and_a_fifo(env, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLES / "invoice-acme.png", folder / "a.png")
    os.symlink("loop.png", folder / "loop.png")
    os.mkfifo(folder / "f.pdf")
    out = tmp_path / "out"
    proc = glmv("extract", str(folder), "--schema", SMALL, "--max-tokens", "64", "--out-dir", str(out), env=env)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "Traceback" not in stderr, stderr
    written = {p.name: json.loads(p.read_text()) for p in out.iterdir()}
    assert set(written) == {"a.png.json", "loop.png.json", "f.pdf.json"}
    assert written["loop.png.json"]["error_code"] == written["f.pdf.json"]["error_code"] == "not_a_regular_file"
