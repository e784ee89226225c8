"""Documents -> records: the scheduling around a document's stages (stages.py).

Loading runs in watched worker threads feeding a bounded queue (a document stuck in one stage is given up),
so the model rarely waits and memory stays flat (a byte gate); jobs are batched by length, or fed
continuously to a backend that streams; records come out in input order, one per document (or per page),
whatever happens to any single one; each finished document is cached at once, so an interrupted run keeps
its work.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glmv_cli.cache import ResultCache
from glmv_cli.engine.base import Backend, Request
from glmv_cli.extraction.loading import TIMEOUT_CODES, ByteGate, LoaderPool, LoadTask
from glmv_cli.extraction.schemas import ResolvedSchema
from glmv_cli.extraction.stages import FATAL, ExtractOptions, Job, Prepared, Stages
from glmv_cli.inputs.render import PdfRenderer
from glmv_cli.records import Record
from glmv_cli.review.store import CorrectionStore

__all__ = ["ExtractOptions", "Extractor", "Stages"]


@dataclass
class _DocState:
    expected: int
    key: str | None
    records: dict[int, Record] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.records) == self.expected

    def ordered(self) -> list[Record]:
        return [self.records[i] for i in sorted(self.records)]


class Extractor:
    """Runs one schema over many documents with one backend: a document's stages (`self.stages`), scheduled."""

    def __init__(
        self,
        backend: Backend,
        schema: ResolvedSchema,
        options: ExtractOptions | None = None,
        cache: ResultCache | None = None,
        corrections: CorrectionStore | None = None,
    ):
        self.stages = Stages(backend, schema, options, cache, corrections)
        self.backend, self.schema, self.options = backend, schema, self.stages.options
        self.cache = self.stages.cache
        self.json_schema = self.stages.json_schema
        self._stop = threading.Event()
        self._gate = ByteGate(self.options.prefetch_bytes)  # made anew by each run()
        self._stream_failed = False  # the backend's generate_stream raised: batches from then on

    @property
    def model_calls(self) -> int:
        """Model calls so far (a batch, a stream, a repair batch and a grounding batch count one each)."""
        return self.stages.model_calls

    @model_calls.setter
    def model_calls(self, value: int) -> None:
        self.stages.model_calls = value

    # -- stopping --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the batch in flight, hand out what is complete, and end the run (first Ctrl-C)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _time_limits(self) -> dict[str, float]:
        o = self.options
        # A backstop: the PDF renderer's own limit (opening, then per page) fires first; this one
        # also covers image decoding and preprocessing, which have no limit of their own.
        render = o.render_timeout * (o.max_pages + 2) + 5
        return {"read": o.read_timeout, "cache": 60.0, "decode": render, "preprocess": render}

    # -- loading (worker threads) -----------------------------------------------------------------
    def _prepare(self, task: LoadTask) -> Prepared:
        """One path's stages up to the model; never raises. Its bytes are held from here."""
        prepared = self.stages.prepare(task)
        self._gate.loaded(task.index, prepared.nbytes)
        return prepared

    # -- the run ---------------------------------------------------------------------------------
    def run(self, paths: Sequence[str | Path]) -> Iterator[Record]:
        """Yield one record per document (per page with per_page), in input order.

        After stop(), the batch in flight finishes, every complete document is yielded (still in
        input order, with gaps where documents were left unfinished), and the run ends. A document
        someone reviewed (`glmv review`) comes with their decisions applied.
        """
        records = self._run(paths)
        try:
            for record in records:
                yield self.stages.corrected(record)
        finally:
            records.close()

    def _run(self, paths: Sequence[str | Path]) -> Iterator[Record]:
        size = self.options.batch_size  # the backend's default is asked for only once a model is needed
        # Memory is bounded by bytes (the gate) plus the few documents being read ahead of it.
        pending: queue.Queue[LoadTask | None] = queue.Queue(maxsize=self.options.workers + 2)
        self._gate = ByteGate(self.options.prefetch_bytes)
        # PDFs render in worker processes: a PDFium crash or hang costs one document, not the run.
        self.stages.renderer = renderer = PdfRenderer(self.options.workers, timeout_s=self.options.render_timeout)
        loader = LoaderPool(self._prepare, self.options.workers, discard=lambda prep: self._gate.release(prep.nbytes))
        finished = threading.Event()

        def produce() -> None:
            try:
                for index, path in enumerate(paths):
                    self._gate.wait_for_room(finished)
                    if finished.is_set() or self.stopped:
                        return
                    self._gate.submitted(index)
                    pending.put(loader.submit(index, str(path)))
            finally:
                pending.put(None)

        producer = threading.Thread(target=produce, name="glmv-discover", daemon=True)
        producer.start()
        states: dict[int, _DocState] = {}
        seen: dict[str, str] = {}
        window: list[Job] = []
        next_out = 0
        done = False

        # A server batches requests as they come: each document goes out as soon as it is read (waiting for
        # a batch of them cost glmv's remote rounds 0.06-0.3 s). The local engine gathers a batch first:
        # starting it on the first 1 or 4 documents read gave 10.1 docs/s against 10.5 (best of 4, 32
        # bench pages, 2 cores), the loader threads then taking the cores from the model.
        as_ready = getattr(self.backend, "takes_requests_as_ready", False)

        def want() -> int:
            return 0 if as_ready else size or 8

        def ready_jobs() -> Iterator[Job | None]:
            """Jobs for a streaming backend, one per free slot; None while none is ready (loading goes on)."""
            nonlocal done
            while (window or not done) and not self.stopped:
                if not done and not (as_ready and window):
                    done = self._fill(pending, loader, window, states, seen, want(), wait=False)
                yield window.pop(0) if window and not self.stopped else None

        try:
            while (not done or window) and not self.stopped:
                if not done:
                    done = self._fill(pending, loader, window, states, seen, want())
                if window and not self.stopped:
                    size = size or self.backend.default_batch_size()
                    for batch, records in self._generate_stage(window, size, ready_jobs()):
                        self._gate.release(sum(j.nbytes for j in batch))  # their pixels are garbage now
                        for job, record in zip(batch, records, strict=True):
                            state = states[job.index]
                            state.records[job.sub] = record
                            if state.complete:  # cache now, so an interrupted run keeps this work
                                self._store(state)
                        while next_out in states and states[next_out].complete:
                            yield from states.pop(next_out).ordered()
                            next_out += 1
                while next_out in states and states[next_out].complete:
                    yield from states.pop(next_out).ordered()
                    next_out += 1
            # Stopped: documents finished behind a gap (batches run shortest first) are written too.
            for index in sorted(i for i, state in states.items() if state.complete):
                yield from states.pop(index).ordered()
        finally:
            finished.set()
            while producer.is_alive():  # unblock the producer so its thread can end
                try:
                    pending.get_nowait()
                except queue.Empty:
                    time.sleep(0.01)
            loader.close()
            renderer.close()
            self.stages.renderer = None
            if self.cache is not None:
                self.cache.finish_run()

    def _fill(
        self,
        pending: queue.Queue,
        loader: LoaderPool,
        window: list[Job],
        states: dict[int, _DocState],
        seen: dict[str, str],
        want: int,
        wait: bool = True,
    ) -> bool:
        """Move ready documents into the window; True once the input is exhausted."""
        while not self.stopped:
            try:
                # Block while there is nothing to run (unless rows are decoding); else take only what is ready soon.
                task = pending.get(timeout=None if wait and not window else 0.05)
            except queue.Empty:
                return False
            if task is None:
                return True
            prep = self._await(task, loader)
            if prep.fatal is not None:
                raise prep.fatal
            if prep.sha256 is not None and prep.sha256 in seen:
                self._gate.release(prep.nbytes)
                states[prep.index] = _DocState(
                    1, None, {0: self.stages.duplicate(prep.name, prep.sha256, seen[prep.sha256])}
                )
            elif prep.records is not None:
                if prep.sha256 is not None:
                    seen[prep.sha256] = prep.name
                states[prep.index] = _DocState(len(prep.records), None, dict(enumerate(prep.records)))
            else:
                seen[prep.sha256] = prep.name
                states[prep.index] = _DocState(len(prep.jobs), prep.key)
                window.extend(prep.jobs)
            if len(window) >= 2 * want or (not window and prep.index in states):
                return False  # enough to batch; or a finished record that can go out now
        return False

    def _await(self, task: LoadTask, loader: LoaderPool) -> Prepared:
        """The task's result, or a failed record once a stage overruns its time limit."""
        limits = self._time_limits()
        while not task.done.wait(0.05):
            late = task.overdue(limits)
            if late and loader.abandon(task):
                self._gate.gone(task.index)  # its bytes, if it ever loads, are released at once
                stage, spent = late
                error = f"{stage} did not finish within {spent:.0f} s; gave up on this document"
                return Prepared(
                    task.index, task.path, records=[self.stages.failed(task.path, error, TIMEOUT_CODES[stage])]
                )
        return task.result

    @staticmethod
    def _pick_batch(window: list[Job], size: int, budget: int | None) -> list[Job]:
        """Up to `size` jobs of similar length, smallest first, within the token budget.

        Rows are left-padded to the longest, so a batch costs rows x its longest row; one job
        always goes, even over the budget alone.
        """
        window.sort(key=lambda j: (j.tokens, j.pixels))
        taken = 1
        while taken < min(size, len(window)) and (budget is None or (taken + 1) * window[taken].tokens <= budget):
            taken += 1
        batch = window[:taken]
        del window[:taken]
        return batch

    def _generate_stage(
        self, window: list[Job], size: int, ready: Iterator[Job | None]
    ) -> Iterator[tuple[list[Job], list[Record]]]:
        """Jobs through the model: fed continuously to a backend that streams (each out when done), else a batch."""
        stream = None if self._stream_failed else getattr(self.backend, "generate_stream", None)
        if stream is None:
            batch = self._pick_batch(window, size, self.backend.token_budget())
            yield batch, self.stages.process(batch)
            return
        self.stages.model_calls += 1
        in_flight: dict[int, Job] = {}

        def requests() -> Iterator[Request | None]:
            for job in ready:
                if job is not None:
                    in_flight[id(job)] = job
                yield None if job is None else job.request.model_copy(update={"tag": id(job)})

        try:
            for gen in stream(requests(), max_rows=size):
                job = in_flight.pop(gen.tag)
                yield [job], self.stages.process([job], [gen.model_copy(update={"tag": job.request.tag})])
        except FATAL:
            raise
        except Exception:  # noqa: BLE001 - the stream itself broke (rows isolate their own failures)
            self._stream_failed = True  # the batch path takes over, from the jobs that were in flight
            window[:0] = in_flight.values()

    def _store(self, state: _DocState) -> None:
        """Cache a finished document's records (failed with cache_failed where caching failed)."""
        for sub, record in zip(sorted(state.records), self.stages.store(state.key, state.ordered()), strict=True):
            state.records[sub] = record
