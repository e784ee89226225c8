"""One worker thread owns the model: it feeds waiting requests to the model and streams one at a time.

With a backend that has `generate_stream` (continuous batching), the worker feeds it from the queue:
a request that arrives while others decode joins them at the next step (up to `max_batch` rows), and
each request is answered as soon as its own row finishes. When the model is idle, the first request
waits up to `wait_s` for company so that they prefill together. A backend without it gets the old
path: requests arriving within `wait_s` of the first one (up to `max_batch`) share one
`backend.generate` call. If the stream itself fails, the requests it held go through `generate`,
and so does everything after.

A streaming request runs alone through `backend.stream`, in queue order, on the same thread: when
one reaches the head of the queue, no new rows join, the running rows finish, then it streams; so
the model is never used by two calls at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from glmv_cli.engine.base import Backend, Generation, Request


class StreamCancelled(Exception):
    """Raised from on_text when the client has gone; the backend turns it into an error Generation."""


@dataclass
class _Job:
    request: Request
    future: Future = field(default_factory=Future)
    on_text: Callable[[str], None] | None = None  # set for streaming jobs
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows: int = 1  # continuous mode: the most rows in flight while this one was


_END = object()  # from _take_ready: end the stream session


class Batcher:
    """Queue in front of one backend; start() the worker, submit() or submit_stream() from any thread.

    `batch_sizes` counts model work by batch size: `generate()` calls in batch mode; in continuous
    mode each answer once, under the most rows that were in flight beside it (itself included).
    `peak_rows` is the most rows ever in flight at once (both modes).
    """

    def __init__(self, backend: Backend, *, max_batch: int, wait_s: float):
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.wait_s = max(0.0, wait_s)
        self.batch_sizes: Counter[int] = Counter()
        self.streams = 0
        self.peak_rows = 0
        self._stream_failed = False
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="glmv-model", daemon=True)

    @property
    def continuous(self) -> bool:
        """Whether generate jobs go through the backend's generate_stream."""
        return not self._stream_failed and callable(getattr(self.backend, "generate_stream", None))

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
            if self.continuous:
                head = self._wait_for_work()
                if head is None:
                    return
                if head.on_text is None:
                    self._run_continuous()
                    continue
                jobs = [head]
                with self._cond:
                    self._queue.popleft()
            else:
                jobs = self._next_jobs()
                if jobs is None:
                    return
            if jobs[0].on_text is not None:
                self._run_stream(jobs[0])
            else:
                self._run_batch(jobs)

    def _wait_for_work(self) -> _Job | None:
        """The job at the head of the queue (left there), once there is one; None when closed and empty."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            return self._queue[0]

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
        self._generate([j for j in jobs if j.future.set_running_or_notify_cancel()])

    def _generate(self, live: list[_Job]) -> None:
        """One generate() call for running jobs; each future gets its answer, or all get the failure."""
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        self.peak_rows = max(self.peak_rows, len(live))
        try:
            generations = self.backend.generate([j.request for j in live])
        except BaseException as exc:  # noqa: BLE001 - every waiting client gets the failure
            for job in live:
                job.future.set_exception(exc)
            return
        for job, gen in zip(live, generations, strict=True):
            gen.batch_size = len(live)
            job.future.set_result(gen)

    # -- continuous batching --------------------------------------------------------------------
    def _run_continuous(self) -> None:
        """One stream session: generate jobs from the queue until it runs dry with nothing in flight
        (then the worker blocks on the queue), a streaming job reaches the head, or the batcher closes."""
        in_flight: dict[int, _Job] = {}
        try:
            for gen in self.backend.generate_stream(self._requests(in_flight), max_rows=self.max_batch):
                self._finish(in_flight.pop(gen.tag), gen)
        except Exception:  # noqa: BLE001 - the stream itself broke (rows isolate their own failures)
            self._stream_failed = True  # the generate path takes over, from the jobs that were in flight
            jobs = list(in_flight.values())
            in_flight.clear()
            for start in range(0, len(jobs), self.max_batch):
                self._generate(jobs[start : start + self.max_batch])
        finally:
            for job in in_flight.values():  # only after a BaseException: nobody is left waiting forever
                job.future.set_exception(RuntimeError("the model worker stopped"))

    def _finish(self, job: _Job, gen: Generation) -> None:
        self.batch_sizes[job.rows] += 1
        job.future.set_result(gen.model_copy(update={"tag": job.request.tag, "batch_size": job.rows}))

    def _requests(self, in_flight: dict[int, _Job]) -> Iterator[Request | None]:
        """What generate_stream pulls: queued requests (tagged), None while none is ready, then the end."""
        deadline: float | None = None  # the gathering window, open while a batch starts from idle
        while True:
            job = self._take_ready(in_flight, deadline)
            if job is _END:
                return
            if job is None:
                deadline = None
                yield None
                continue
            assert isinstance(job, _Job)
            if not job.future.set_running_or_notify_cancel():
                continue
            if not in_flight:
                deadline = time.monotonic() + self.wait_s
            in_flight[id(job)] = job
            rows = len(in_flight)
            self.peak_rows = max(self.peak_rows, rows)
            for other in in_flight.values():
                other.rows = max(other.rows, rows)
            yield job.request.model_copy(update={"tag": id(job)})

    def _take_ready(self, in_flight: dict[int, _Job], deadline: float | None) -> _Job | object | None:
        """The next generate job; None: none to add now (rows decode on); _END: end the session."""
        with self._cond:
            while True:
                if len(in_flight) >= self.max_batch:
                    return None  # full: the queue keeps it, so a streaming job behind keeps its place
                if self._queue:
                    return _END if self._queue[0].on_text is not None else self._queue.popleft()
                if self._closed:
                    return _END
                if not in_flight:
                    self._cond.wait()  # idle: block, don't spin
                    continue
                remaining = 0.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    # -- streaming ------------------------------------------------------------------------------
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


class BatchedBackend(Backend):
    """A Backend whose generations go through a running Batcher: work from inside the server (the MCP
    tools' extract and ask) shares the model's batches with the HTTP requests, on the model's one thread."""

    def __init__(self, batcher: Batcher, backend: Backend):
        self.batcher, self.inner = batcher, backend
        self.model_id = backend.model_id

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        futures = [self.batcher.submit(r) for r in requests]
        return [f.result() for f in futures]

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        future, _ = self.batcher.submit_stream(request, on_text)
        return future.result()

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def prepare(self, request: Request) -> Request:
        return self.inner.prepare(request)

    def default_batch_size(self) -> int:
        return self.batcher.max_batch

    def estimate_tokens(self, request: Request) -> int:
        return self.inner.estimate_tokens(request)

    def held_bytes(self, request: Request) -> int:
        return self.inner.held_bytes(request)

    def max_image_pixels(self) -> int | None:
        return self.inner.max_image_pixels()

    @property
    def load_s(self) -> float:  # type: ignore[override]
        return self.inner.load_s

    def close(self) -> None:
        """The server owns the model and the batcher."""
