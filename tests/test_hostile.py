"""Hostile folders end to end: odd files, extreme pages, crashes and interrupts never cost the run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import pypdfium2 as pdfium
import pytest
from PIL import Image

from glmv_cli.cache import ResultCache
from glmv_cli.inputs import discover
from glmv_cli.records import Status
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


STATUSES = get_args(Status)


class Stderr:
    """A running glmv's stderr, read line by line on a thread: tests wait for what it prints, not for a time."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._ended = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def wait_for(self, what: str, seen: Callable[[list[str]], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not seen(self.lines):
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    why = "glmv exited first" if self._ended else f"not within {timeout:.0f} s"
                    pytest.fail(f"waiting for {what}: {why}; its stderr:\n{''.join(self.lines)}")
                self._cond.wait(left)

    def documents(self, n: int) -> None:
        """Until n documents are written (their -v lines): the run loop and its Ctrl-C handler are live."""
        self.wait_for(f"{n} document(s)", lambda lines: sum(line.split(" ", 1)[0] in STATUSES for line in lines) >= n)

    def line(self, start: str) -> None:
        self.wait_for(repr(start), lambda lines: any(line.startswith(start) for line in lines))

    def text(self, timeout: float = 120) -> str:
        """All of stderr, once glmv has exited."""
        self.proc.wait(timeout)
        self._reader.join(timeout)
        return "".join(self.lines)


@contextlib.contextmanager
def running(*args: str, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen, Stderr]]:
    """`glmv ARGS` (which writes its output with -o) and its stderr; killed on the way out if still running."""
    cmd = [sys.executable, "-m", "glmv_cli", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, Stderr(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> Path:
    """Six distinct images (the sample invoice and receipt, a pixel changed in each, so none is a duplicate)
    whose answers from the tiny model run to the token budget: the work in flight lasts --max-tokens steps."""
    folder = tmp_path_factory.mktemp("variants")
    for i in range(6):
        name = ("invoice-acme.png", "receipt-cafe.jpg")[i % 2]
        image = Image.open(SAMPLES / name).convert("RGB")
        image.putpixel((0, 0), (i, 0, 0))
        image.save(folder / f"{i:02d}-{Path(name).stem}.png")
    return folder


def kill_and_resume(folder: Path, env: dict[str, str], tmp_path: Path, kill_after: list[int]) -> None:
    """SIGKILL a run once n documents are written, for each n (0: once it has started, the model still
    loading), then re-run: the output is whole, each document exactly once."""
    out = tmp_path / "out.jsonl"
    args = ["extract", str(folder), "--schema", SMALL, "--max-tokens", "64", "--batch-size", "2", "-o", str(out)]
    cache = ResultCache(Path(env["GLMV_CACHE_DIR"]))
    expected = sorted(str(p) for p in discover([folder]))
    for n in kill_after:
        with running(*args, "-v", env=env) as (proc, printed):
            if n:
                printed.documents(n)
            else:
                printed.line("schema: ")  # printed before the model loads
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if out.exists():  # the previous complete output, never a torn one
            assert sorted(r["file"] for r in read_jsonl(out)) == expected
        finished = cache.info()["entries"] if cache.path.exists() else 0
        stats = tmp_path / "stats.json"
        rerun = glmv(*args, "-q", "--stats-json", str(stats), env=env)
        _, stderr = rerun.communicate(timeout=300)
        assert rerun.returncode in (0, 3), stderr
        assert sorted(r["file"] for r in read_jsonl(out)) == expected  # each exactly once
        assert json.loads(stats.read_text())["docs_cached"] == finished  # finished work is not recomputed
        cache.clear()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp files left behind"


def test_kill_9_then_rerun(env, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(SAMPLES, folder, ignore=shutil.ignore_patterns("*.py", "*.json"))
    kill_and_resume(folder, env, tmp_path, [0, 1])  # while loading, while answering (5 moments: slow test)


def test_first_ctrl_c_writes_what_finished(variants, env, tmp_path):
    out = tmp_path / "out.jsonl"
    args = ["extract", str(variants), "--schema", SMALL, "--max-tokens", "256", "--batch-size", "1", "-o", str(out)]
    with running(*args, "-v", env=env) as (proc, stderr):
        stderr.documents(1)  # five documents still to go, one at a time
        proc.send_signal(signal.SIGINT)
        text = stderr.text()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert "documents written; run again to finish" in text  # the first Ctrl-C's way out, not a crash's
    records = read_jsonl(out)  # what finished is written, as a complete file
    assert records and len({r["file"] for r in records}) == len(records)
    assert "documents ok" in text  # statistics still printed


def test_second_ctrl_c_stops_at_once(variants, env, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"previous": true}\n')
    # One document at a time, each 512 tokens long: the one in flight at the first Ctrl-C is still
    # decoding at the second, which follows as soon as glmv has said it is stopping.
    args = ["extract", str(variants), "--schema", SMALL, "--max-tokens", "512", "--batch-size", "1", "-o", str(out)]
    with running(*args, "-v", env=env) as (proc, stderr):
        stderr.documents(1)
        proc.send_signal(signal.SIGINT)
        stderr.line("stopping after the documents in flight")
        proc.send_signal(signal.SIGINT)
        text = stderr.text()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert "glmv: error: interrupted" in text  # stopped at once, not after the document in flight
    assert out.read_text() == '{"previous": true}\n'  # the file output is left as it was


@pytest.mark.slow
def test_kill_9_over_the_corpus(env, tmp_path):
    """The issue's acceptance: SIGKILL a run over the shared corpus at 5 moments, re-run each time."""
    corpus = needs_corpus()
    n = len(discover([corpus]))
    kill_and_resume(corpus, env, tmp_path, [0, 1, n // 4, n // 2, 3 * n // 4])


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
