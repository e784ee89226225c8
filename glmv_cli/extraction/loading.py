"""Loader threads with a watchdog: a document stuck in one stage is given up, never the run.

Python cannot kill a thread, so a task that overruns its stage's time limit is abandoned:
its result will be ignored, and a fresh thread takes the stuck one's place so the pool
keeps its size. The stuck thread ends on its own if its work ever returns.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The code a failed record gets when its document overran the time limit of a stage.
TIMEOUT_CODES = {
    "read": "read_timeout",
    "cache": "cache_failed",
    "decode": "render_timeout",
    "preprocess": "preprocess_failed",
}


@dataclass
class LoadTask:
    """One input path on its way through the loader stages."""

    index: int
    path: str
    stage: str = "queued"
    stage_started: float = 0.0
    result: Any = None
    abandoned: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def enter(self, stage: str) -> None:
        """Mark the start of a stage (the watchdog times each stage on its own)."""
        self.stage, self.stage_started = stage, time.monotonic()

    def overdue(self, limits: dict[str, float]) -> tuple[str, float] | None:
        """(stage, seconds spent) when the current stage has run past its limit."""
        limit = limits.get(self.stage)
        spent = time.monotonic() - self.stage_started
        return (self.stage, spent) if limit is not None and self.stage_started and spent > limit else None


class ByteGate:
    """Bytes of loaded work not yet consumed, and the documents still loading; the producer waits for room.

    A document's bytes are known only once it is loaded, so each one still loading counts as
    large as the largest seen so far in the run: the held bytes stay within the cap plus about
    one document, however many documents are read ahead. Room for the next is there when
    held + loading x largest is under the cap, or when nothing is held or loading at all (one
    document over the cap alone still passes).
    """

    def __init__(self, cap: int):
        self.cap, self.held, self.peak, self.largest = cap, 0, 0, 0
        self._loading: set[int] = set()  # indices of documents submitted and not yet loaded
        self._cond = threading.Condition()

    def submitted(self, index: int) -> None:
        with self._cond:
            self._loading.add(index)

    def loaded(self, index: int, nbytes: int) -> None:
        """A document finished loading and holds `nbytes` until released (0: nothing to run)."""
        with self._cond:
            self._loading.discard(index)
            self.held += nbytes
            self.peak = max(self.peak, self.held)
            self.largest = max(self.largest, nbytes)
            self._cond.notify_all()

    def gone(self, index: int) -> None:
        """A document will not be loaded after all (given up on): it no longer counts as loading."""
        with self._cond:
            self._loading.discard(index)
            self._cond.notify_all()

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.held -= nbytes
            self._cond.notify_all()

    def _room(self) -> bool:
        loading = len(self._loading)
        # Until a document with bytes has loaded, a loading one counts as 1 byte (unknown, yet not free).
        return (self.held == 0 and loading == 0) or self.held + loading * max(self.largest, 1) < self.cap

    def wait_for_room(self, stop: threading.Event) -> None:
        """Block until the next document may start loading."""
        with self._cond:
            while not self._room() and not stop.is_set():
                self._cond.wait(0.1)


class LoaderPool:
    """Daemon threads running `work(task)`; `work` must not raise.

    `discard(result)` is called with the result of an abandoned task, if it ever comes.
    """

    def __init__(self, work: Callable[[LoadTask], Any], workers: int, discard: Callable[[Any], None] | None = None):
        self._work = work
        self._discard = discard
        self._queue: queue.Queue[LoadTask | None] = queue.Queue()
        self._lock = threading.Lock()
        self._threads = 0
        self._closed = False
        for _ in range(max(1, workers)):
            self._spawn()

    def submit(self, index: int, path: str) -> LoadTask:
        task = LoadTask(index, path)
        self._queue.put(task)
        return task

    def abandon(self, task: LoadTask) -> bool:
        """Give up on a running task and replace its thread; False if it finished meanwhile."""
        with self._lock:
            if task.done.is_set():
                return False
            task.abandoned = True
        self._spawn()
        return True

    def close(self) -> None:
        """Let every thread end after its current task (queued tasks are dropped)."""
        self._closed = True
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def _spawn(self) -> None:
        with self._lock:
            self._threads += 1
        threading.Thread(target=self._run, name="glmv-load", daemon=True).start()

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is None or self._closed:
                break
            result = self._work(task)
            with self._lock:
                task.result = result
                task.done.set()
                abandoned = task.abandoned
            if abandoned:  # nobody will take this result; a replacement thread took this one's place
                if self._discard is not None:
                    self._discard(result)
                break
        with self._lock:
            self._threads -= 1
