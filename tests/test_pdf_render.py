"""PdfRenderer: PDFs render in worker processes; a crash or hang fails that document only."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from conftest import SAMPLES, needs_corpus

from glmv_cli.errors import InputError
from glmv_cli.inputs import load_document
from glmv_cli.inputs.pages import select_pages
from glmv_cli.inputs.pdf import render_in_process
from glmv_cli.inputs.render import PdfRenderer, default_renderer

REPORT = (SAMPLES / "report-3pages.pdf").read_bytes()
EMPTY_PAGE_TREE = (
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\n"
    b"endobj\nxref\n0 3\n0000000000 65535 f \n0000000009 00000 n \n0000000058 00000 n \n"
    b"trailer\n<< /Size 3 /Root 1 0 R >>\nstartxref\n110\n%%EOF\n"
)
OPTIONS = {"pages": None, "dpi": 100, "max_pages": 8, "max_pixels": 40_000_000, "password": None, "text_layer": True}


# Hooks run in the worker before each page; top-level so they pickle by reference.
def crash(number: int) -> None:
    os.abort()


def hang(number: int) -> None:
    time.sleep(3600)


def fail(number: int) -> None:
    raise ValueError("a bug in the renderer")


def meet(folder: str, number: int) -> None:
    """Wait until another worker process reaches this point too: proof that two render at once."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 20
    while len(os.listdir(folder)) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError("no other document rendered at the same time")
        time.sleep(0.01)


def meet_then_crash(folder: str, number: int) -> None:
    meet(folder, number)
    os.abort()


def record_modules(path: str, number: int) -> None:
    Path(path).write_text("\n".join(sys.modules))


@pytest.fixture(scope="module")
def renderer():
    with PdfRenderer(workers=2, timeout_s=30) as pool:
        pool.render(REPORT, pages=[1])  # workers start on first use; tests compare pids
        yield pool


def raised(call) -> InputError:
    with pytest.raises(InputError) as info:
        call()
    return info.value


def test_pixels_and_text_match_in_process(renderer):
    pages, total = renderer.render(REPORT, **OPTIONS)
    expected, expected_total = render_in_process(REPORT, **OPTIONS)
    assert total == expected_total == 3
    assert [(p.number, p.image.mode, p.image.size, p.text) for p in pages] == [
        (p.number, p.image.mode, p.image.size, p.text) for p in expected
    ]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(pages, expected, strict=True))
    classic = pdfium.PdfDocument(REPORT)[0].render(scale=100 / 72).to_pil().convert("RGB")  # BGR, swapped
    assert expected[0].image.tobytes() == classic.tobytes()
    assert [p.number for p in renderer.render(REPORT, pages=[2, 3])[0]] == [2, 3]


def test_crash_fails_that_document_only(renderer):
    before = renderer.pids()
    error = raised(lambda: renderer.render(REPORT, pages=[2], hook=crash))
    assert (error.code, error.message) == ("render_crashed", "PDF renderer crashed on page 2")
    assert "SIGABRT" in error.hint
    assert len(renderer.render(REPORT)[0]) == 3  # the same renderer goes on
    after = renderer.pids()
    assert len(after) == 2 and len(set(before) & set(after)) == 1  # the dead worker was replaced


def test_hang_times_out_and_the_pool_recovers(renderer, monkeypatch):
    monkeypatch.setattr(renderer, "timeout_s", 1.0)
    started = time.perf_counter()
    error = raised(lambda: renderer.render(REPORT, hook=hang))
    assert (error.code, error.message) == ("render_timeout", "rendering page 1 took over 1 s")
    assert time.perf_counter() - started < 15  # one second, plus a busy machine's slack
    assert len(renderer.render(REPORT)[0]) == 3


def test_other_errors_keep_their_codes(renderer):
    before = renderer.pids()
    error = raised(lambda: renderer.render(REPORT, hook=fail))
    assert error.code == "render_failed"
    assert error.message == "rendering failed on page 1: ValueError: a bug in the renderer"
    assert raised(lambda: renderer.render(b"%PDF-1.4\nnot a pdf body\n")).code == "pdf_corrupt"
    assert raised(lambda: renderer.render(EMPTY_PAGE_TREE)).code == "pdf_no_pages"
    with pytest.raises(InputError) as direct:
        select_pages([7], 3, 8)
    error = raised(lambda: renderer.render(REPORT, pages=[7]))
    assert (type(error), error.code, error.message) == (InputError, direct.value.code, direct.value.message)
    assert renderer.pids() == before  # a worker that answered stays in the pool


def test_encrypted_pdf(renderer):
    data = (needs_corpus() / "nasty" / "encrypted_pdfium_pw-test_user.pdf").read_bytes()
    error = raised(lambda: renderer.render(data))
    assert (error.code, error.message) == ("pdf_encrypted", "PDF is encrypted; pass --password")
    assert raised(lambda: renderer.render(data, password="not-it")).message == "wrong password"
    assert renderer.render(data, password="test_user", dpi=50)[0]


def test_two_documents_render_in_parallel_and_one_crash_spares_the_other(renderer, tmp_path):
    folder = str(tmp_path)
    hooks = {"ok": functools.partial(meet, folder), "crash": functools.partial(meet_then_crash, folder)}
    outcomes = {}

    def render(name: str) -> None:
        try:
            outcomes[name] = len(renderer.render(REPORT, pages=[1], hook=hooks[name])[0])
        except InputError as exc:
            outcomes[name] = exc.code

    threads = [threading.Thread(target=render, args=(name,)) for name in hooks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {"ok": 1, "crash": "render_crashed"}  # and both met in their hooks


def test_workers_never_import_torch(renderer, tmp_path):
    path = tmp_path / "modules.txt"
    renderer.render(REPORT, pages=[1], hook=functools.partial(record_modules, str(path)))
    modules = set(path.read_text().split())
    assert "pypdfium2" in modules
    assert not {m for m in modules if m.split(".")[0] in {"torch", "transformers", "typer", "rich"}}


def test_close_leaves_no_worker_behind():
    with PdfRenderer(workers=1) as pool:
        assert pool.pids() == []  # started on first use
        pool.render(REPORT, pages=[1])
        pids = pool.pids()
    assert len(pids) == 1
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert raised(lambda: pool.render(REPORT)).code == "render_failed"


def test_default_renderer_is_shared():
    assert default_renderer() is default_renderer()


def test_load_document_takes_a_renderer(renderer):
    doc = load_document(REPORT, render_pdf=renderer.render, dpi=50, max_pages=2)
    assert (doc.kind, doc.total_pages, [p.number for p in doc.pages]) == ("pdf", 3, [1, 2])


def test_a_script_renders_and_leaves_no_worker_at_exit(tmp_path):
    # No `if __name__ == "__main__"` guard: workers must not re-run it, as multiprocessing's spawn would.
    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        "from glmv_cli.inputs import load_document\n"
        "from glmv_cli.inputs.render import default_renderer\n"
        f"print(len(load_document({str(SAMPLES / 'report-3pages.pdf')!r}).pages))\n"
        "print(*default_renderer().pids(), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout == "3\n"  # and nothing from the workers
    pids = [int(pid) for pid in done.stderr.splitlines()[-1].split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
