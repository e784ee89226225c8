"""Render PDFs in worker processes, so a pdfium crash or hang fails that document only."""

from __future__ import annotations

import atexit
import contextlib
import json
import pickle
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from glmv_cli.errors import InputError
from glmv_cli.inputs.document import Page
from glmv_cli.inputs.pages import select_pages
from glmv_cli.inputs.pdf import PageHook, RgbPage, open_pdf, render_rgb

# A fresh interpreter, never a fork: the parent has threads (loaders, maybe torch's) whose held locks
# a fork would copy. Not multiprocessing's spawn either, which re-runs the parent's __main__ script
# in the child; this imports the inputs layer only (never torch or transformers), with sys.path passed.
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
    "from glmv_cli.inputs.render import serve; serve(int(sys.argv[1]))"
)
START_TIMEOUT_S = 60.0  # a fresh worker imports Pillow and pypdfium2; slow on a busy machine


class PdfRenderer:
    """A pool of worker processes, each rendering one PDF at a time, with a per-page timeout."""

    def __init__(self, workers: int = 2, *, timeout_s: float = 60.0, open_timeout_s: float | None = None):
        if workers < 1 or timeout_s <= 0:
            raise ValueError("workers and timeout_s must be positive")
        self.workers = workers
        self.timeout_s = timeout_s
        self.open_timeout_s = timeout_s if open_timeout_s is None else open_timeout_s
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._started = False
        self.closed = False

    def render(
        self,
        data: bytes,
        *,
        pages: list[int] | None = None,
        dpi: int = 150,
        max_pages: int = 8,
        max_pixels: int = 40_000_000,
        password: str | None = None,
        text_layer: bool = True,
        hook: PageHook | None = None,
    ) -> tuple[list[Page], int]:
        """Render the selected pages of a PDF in a worker; returns them with the page count."""
        # Pickled here, so an unpicklable hook fails before a worker is touched.
        request = pickle.dumps((data, pages, dpi, max_pages, max_pixels, password, text_layer, hook))
        worker = self._checkout()
        try:
            result = self._exchange(worker, request)
        except _Refused as exc:  # the worker answered and is ready for the next document
            self._checkin(worker)
            code, message, hint = exc.args
            raise InputError(message, hint, code=code) from None
        except BaseException:
            self._discard(worker)
            raise
        self._checkin(worker)
        return result

    def pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._cond:
            return sorted(w.process.pid for w in self._all)

    def close(self) -> None:
        """Stop every worker; renders still running fail with render_failed."""
        with self._cond:
            self.closed = True
            idle, busy = self._idle, self._all.difference(self._idle)
            self._idle = []
            self._all.clear()
            self._cond.notify_all()
        for worker in idle:
            worker.stop()
        for worker in busy:  # the thread rendering with it sees EOF and closes the socket
            worker.kill()

    def __enter__(self) -> PdfRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one document ------------------------------------------------------------------------
    def _exchange(self, worker: _Worker, request: bytes) -> tuple[list[Page], int]:
        if not worker.ready:
            with contextlib.suppress(EOFError, OSError):  # a worker that died at start-up
                worker.ready = worker.conn.poll(START_TIMEOUT_S) and worker.conn.recv() == ("ready",)
            if not worker.ready:
                raise self._lost(worker, "failed to start")
        try:
            worker.conn.send_bytes(request)
        except OSError:
            raise self._lost(worker, "crashed while opening the PDF") from None
        total, numbers = self._receive(worker, self.open_timeout_s, None)
        found = []
        for number in numbers:
            size, text, words = self._receive(worker, self.timeout_s, number)
            try:
                pixels = worker.conn.recv_bytes()  # right behind its header: no wait of its own
            except (EOFError, OSError):
                raise self._lost(worker, f"crashed on page {number}") from None
            found.append(RgbPage(number, size, pixels, text, words).to_page())
        return found, total

    def _receive(self, worker: _Worker, timeout: float, number: int | None) -> tuple:
        """The next reply about page `number` (None: opening), within `timeout` seconds."""
        try:
            ready = worker.conn.poll(timeout)
            kind, *reply = worker.conn.recv() if ready else ("timeout",)
        except (EOFError, OSError):
            raise self._lost(
                worker, f"crashed on page {number}" if number else "crashed while opening the PDF"
            ) from None
        if kind == "timeout":  # render() then kills the worker and starts a fresh one
            doing = f"rendering page {number}" if number else "opening the PDF"
            raise InputError(f"{doing} took over {timeout:g} s", code="render_timeout")
        if kind == "error":
            raise _Refused(*reply)
        return tuple(reply)

    def _lost(self, worker: _Worker, what: str) -> InputError:
        """The error for a worker gone silent, with how it ended as the hint."""
        if self.closed:
            return InputError("PDF renderer was shut down", code="render_failed")
        return InputError(f"PDF renderer {what}", worker.death(), code="render_crashed")

    # -- the pool ------------------------------------------------------------------------------
    def _checkout(self) -> _Worker:
        with self._cond:
            if not self._started and not self.closed:
                self._started = True
                for _ in range(self.workers):
                    self._spawn()
            while not self._idle and not self.closed:
                self._cond.wait()
            if self.closed:
                raise InputError("PDF renderer was shut down", code="render_failed")
            return self._idle.pop()

    def _checkin(self, worker: _Worker) -> None:
        with self._cond:
            if worker in self._all:
                self._idle.append(worker)
                self._cond.notify()

    def _discard(self, worker: _Worker) -> None:
        worker.stop()
        with self._cond:
            if worker in self._all:
                self._all.discard(worker)
                self._spawn()

    def _spawn(self) -> None:  # under self._cond
        worker = _Worker()
        self._all.add(worker)
        self._idle.append(worker)
        self._cond.notify()


class _Refused(Exception):
    """The worker sent an InputError's code, message and hint (exceptions cross as plain data)."""


class _Worker:
    """One worker process and the parent's end of the socket to it."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        with theirs:  # closed here once the child has it, so the parent sees EOF when the child dies
            argv = [sys.executable, "-c", _BOOT, str(theirs.fileno()), json.dumps([str(p) for p in sys.path])]
            # stdout carries glmv's data: nothing a worker prints may land there.
            self.process = subprocess.Popen(
                argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
        self.conn = Connection(ours.detach())
        self.ready = False

    def death(self) -> str:
        """How the worker ended, for the hint of a render_crashed error."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return "the worker stopped answering"
        if code < 0:
            name = signal.Signals(-code).name
            return f"the worker was killed by {name}" + (", perhaps for lack of memory" if name == "SIGKILL" else "")
        return f"the worker exited with status {code}"

    def kill(self) -> None:
        self.process.kill()  # busy in pdfium, maybe hung: nothing in it is worth a clean exit
        self.process.wait()

    def stop(self) -> None:
        self.kill()
        self.conn.close()


def serve(fd: int) -> None:
    """A worker process's life: answer one request at a time on socket `fd` until the parent closes it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    conn = Connection(fd)
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            _answer(conn, request)
        except (BrokenPipeError, ConnectionResetError):  # the parent is gone
            return


def _answer(conn: Connection, request: bytes) -> None:
    """Stream one document's replies: "opened", then a "page" each, or an "error" at any point."""
    number = None
    try:
        data, pages, dpi, max_pages, max_pixels, password, text_layer, hook = pickle.loads(request)
        with open_pdf(data, password) as document:
            total = len(document)
            numbers = select_pages(pages, total, max_pages)
            conn.send(("opened", total, numbers))
            for number in numbers:
                if hook is not None:
                    hook(number)
                page = render_rgb(document, number, dpi=dpi, max_pixels=max_pixels, text_layer=text_layer)
                conn.send(("page", page.size, page.text, page.words))
                conn.send_bytes(page.pixels)  # unpickled: pickling would copy 6 MB a page
    except InputError as exc:
        conn.send(("error", exc.code, exc.message, exc.hint))
    except (BrokenPipeError, ConnectionResetError):
        raise
    except Exception as exc:  # noqa: BLE001 - any bug here fails this document only
        where = f" on page {number}" if number else ""
        conn.send(("error", "render_failed", f"rendering failed{where}: {type(exc).__name__}: {exc}", None))


_default: PdfRenderer | None = None
_default_lock = threading.Lock()


def default_renderer() -> PdfRenderer:
    """The process-wide renderer, created on first use and closed at exit."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = PdfRenderer()
            atexit.register(_default.close)
        return _default
