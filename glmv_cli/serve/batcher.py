"""One worker thread owns the model: it gathers waiting requests into batches and streams one at a time.

Requests arriving within `wait_s` of the first one (up to `max_batch`) share one `backend.generate`
call; a streaming request runs alone through `backend.stream`, in queue order, on the same thread,
so the model is never used by two calls at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from glmv_cli.engine.base import Backend, Request


class StreamCancelled(Exception):
    """Raised from on_text when the client has gone; the backend turns it into an error Generation."""


@dataclass
class _Job:
    request: Request
    future: Future = field(default_factory=Future)
    on_text: Callable[[str], None] | None = None  # set for streaming jobs
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Queue in front of one backend; start() the worker, submit() or submit_stream() from any thread."""

    def __init__(self, backend: Backend, *, max_batch: int, wait_s: float):
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.wait_s = max(0.0, wait_s)
        self.batch_sizes: Counter[int] = Counter()  # generate() calls by batch size
        self.streams = 0
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="glmv-model", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish the queued jobs, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, request: Request) -> Future:
        """A Future of the request's Generation, answered in some batch."""
        return self._put(_Job(request)).future

    def submit_stream(self, request: Request, on_text: Callable[[str], None]) -> tuple[Future, threading.Event]:
        """A Future of the final Generation; on_text gets each piece. Set the Event to stop early."""
        job = self._put(_Job(request, on_text=on_text))
        return job.future, job.cancelled

    def _put(self, job: _Job) -> _Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._queue.append(job)
            self._cond.notify_all()
        return job

    # -- the worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            jobs = self._next_jobs()
            if jobs is None:
                return
            if jobs[0].on_text is not None:
                self._run_stream(jobs[0])
            else:
                self._run_batch(jobs)

    def _next_jobs(self) -> list[_Job] | None:
        """The next stream job alone, or a batch of generate jobs gathered for up to wait_s."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            if first.on_text is not None:
                return [first]
            batch = [first]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                job = next((j for j in self._queue if j.on_text is None), None)
                if job is not None:
                    self._queue.remove(job)  # streaming jobs keep their place in the queue
                    batch.append(job)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _run_batch(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        try:
            generations = self.backend.generate([j.request for j in live])
        except BaseException as exc:  # noqa: BLE001 - every waiting client gets the failure
            for job in live:
                job.future.set_exception(exc)
            return
        for job, gen in zip(live, generations, strict=True):
            gen.batch_size = len(live)
            job.future.set_result(gen)

    def _run_stream(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        if job.cancelled.is_set():  # the client left while waiting in the queue
            job.future.set_exception(StreamCancelled("the client went away"))
            return
        self.streams += 1
        on_text = job.on_text
        assert on_text is not None

        def emit(piece: str) -> None:
            if job.cancelled.is_set():
                raise StreamCancelled("the client went away")
            on_text(piece)

        try:
            job.future.set_result(self.backend.stream(job.request, emit))
        except BaseException as exc:  # noqa: BLE001
            job.future.set_exception(exc)
