"""Documents -> records: background loading, cache, batched constrained generation, validation.

Loading (read, hash, cache lookup, decode, render) runs in worker threads feeding a bounded
queue, so the model rarely waits and memory stays flat however large the folder. Records come
out in input order, one per document (or per page), whatever happens to any single document.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmv_cli.cache import ResultCache, cache_key
from glmv_cli.engine.base import Backend, Generation, GenerationSettings, Request
from glmv_cli.errors import GlmvError
from glmv_cli.extraction.constraint import constraint_schema
from glmv_cli.extraction.parse import validate
from glmv_cli.extraction.prompt import PROMPT_VERSION, SYSTEM, build_prompt, repair_prompt
from glmv_cli.extraction.schemas import ResolvedSchema
from glmv_cli.inputs import Document, load_document
from glmv_cli.records import Record, Timings

TEXT_HINT_MIN_CHARS = 20  # `auto`: below this a text layer is noise (scanned page, stray marks)


@dataclass
class ExtractOptions:
    """Everything about a run that is not the backend or the schema."""

    pages: list[int] | None = None
    max_pages: int = 8
    dpi: int = 150
    password: str | None = None
    text_hint: str = "auto"  # auto | on | off
    per_page: bool = False
    settings: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=2048))
    batch_size: int | None = None
    repair: bool = True
    use_cache: bool = True
    refresh: bool = False
    workers: int = 2
    max_pixels: int = 40_000_000


@dataclass
class _Job:
    """One request to make: a whole document, or one page with --per-page."""

    index: int
    sub: int
    name: str
    sha256: str
    pages: list[int]
    request: Request
    load_s: float
    pixels: int


@dataclass
class _Prepared:
    """What a loader thread hands over for one input path."""

    index: int
    name: str
    sha256: str | None = None
    key: str | None = None
    records: list[Record] | None = None  # final already: cached, or failed to load
    jobs: list[_Job] = field(default_factory=list)


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
    """Runs one schema over many documents with one backend."""

    def __init__(
        self,
        backend: Backend,
        schema: ResolvedSchema,
        options: ExtractOptions | None = None,
        cache: ResultCache | None = None,
    ):
        self.backend = backend
        self.schema = schema
        self.options = options or ExtractOptions()
        self.cache = cache if self.options.use_cache else None
        self.json_schema = constraint_schema(schema.json_schema())
        self._cache_lock = threading.Lock()
        self.model_calls = 0

    # -- keys ----------------------------------------------------------------------------------
    def _key(self, sha256: str) -> str:
        o = self.options
        return cache_key(
            {
                "file": sha256,
                "pages": o.pages,
                "max_pages": o.max_pages,
                "dpi": o.dpi,
                "per_page": o.per_page,
                "text_hint": o.text_hint,
                "schema": self.schema.fingerprint(),
                "prompt": PROMPT_VERSION,
                "backend": self.backend.identity(),
                "settings": o.settings.model_dump(),
                "repair": o.repair,
            }
        )

    # -- loading (worker threads) -----------------------------------------------------------------
    def _prepare(self, index: int, path: str | Path) -> _Prepared:
        name = str(path)
        started = time.perf_counter()
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return _Prepared(index, name, records=[self._failed(name, f"cannot read file: {exc.strerror or exc}")])
        sha = hashlib.sha256(data).hexdigest()
        key = self._key(sha)
        if self.cache is not None and not self.options.refresh:
            with self._cache_lock:
                hit = self.cache.get(key)
            if hit is not None:
                records = [Record.model_validate({**r, "file": name, "cached": True}) for r in hit["records"]]
                return _Prepared(index, name, sha, key, records=records)
        o = self.options
        try:
            doc = load_document(
                data,
                name=name,
                pages=o.pages,
                dpi=o.dpi,
                max_pages=o.max_pages,
                password=o.password,
                max_pixels=o.max_pixels,
                text_layer=o.text_hint != "off",
            )
        except GlmvError as exc:
            return _Prepared(index, name, sha, key, records=[self._failed(name, exc.one_line(), sha)])
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the batch
            return _Prepared(index, name, sha, key, records=[self._failed(name, f"cannot load: {exc}", sha)])
        load_s = time.perf_counter() - started
        return _Prepared(index, name, sha, key, jobs=self._jobs(index, doc, load_s))

    def _jobs(self, index: int, doc: Document, load_s: float) -> list[_Job]:
        groups = [[p] for p in doc.pages] if self.options.per_page else [doc.pages]
        jobs = []
        for sub, pages in enumerate(groups):
            hint = self._text_hint(pages)
            prompt = build_prompt(self.schema, pages=len(pages), text_hint=hint)
            request = Request(
                images=[p.image for p in pages],
                prompt=prompt,
                system=SYSTEM,
                json_schema=self.json_schema,
                settings=self.options.settings,
            )
            request = self.backend.prepare(request)  # preprocessing here, in the loader thread
            pixels = sum(p.image.width * p.image.height for p in pages)
            jobs.append(_Job(index, sub, doc.path, doc.sha256, [p.number for p in pages], request, load_s, pixels))
        return jobs

    def _text_hint(self, pages: list[Any]) -> str | None:
        if self.options.text_hint == "off":
            return None
        text = "\n\n".join(p.text for p in pages if p.text)
        if self.options.text_hint == "auto" and len(text.strip()) < TEXT_HINT_MIN_CHARS:
            return None
        return text or None

    # -- the run ---------------------------------------------------------------------------------
    def run(self, paths: Sequence[str | Path]) -> Iterator[Record]:
        """Yield one record per document (per page with per_page), in input order."""
        size = self.options.batch_size  # the backend's default is asked for only once a model is needed
        lookahead = max(4, 2 * (size or 8))
        pending: queue.Queue[Future[_Prepared] | None] = queue.Queue(maxsize=lookahead)
        pool = ThreadPoolExecutor(max_workers=max(1, self.options.workers), thread_name_prefix="glmv-load")
        stop = threading.Event()

        def produce() -> None:
            try:
                for index, path in enumerate(paths):
                    if stop.is_set():
                        return
                    pending.put(pool.submit(self._prepare, index, path))
            finally:
                pending.put(None)

        producer = threading.Thread(target=produce, name="glmv-discover", daemon=True)
        producer.start()
        states: dict[int, _DocState] = {}
        seen: dict[str, str] = {}
        window: list[_Job] = []
        next_out = 0
        done = False
        try:
            while not done or window:
                if not done:
                    done = self._fill(pending, window, states, seen, size or 8)
                if window:
                    size = size or self.backend.default_batch_size()
                    batch = self._pick_batch(window, size)
                    for job, record in zip(batch, self._process(batch), strict=True):
                        state = states[job.index]
                        state.records[job.sub] = record
                        if state.complete:  # cache now, so an interrupted run keeps this work
                            self._store(state.key, state.ordered())
                while next_out in states and states[next_out].complete:
                    yield from states.pop(next_out).ordered()
                    next_out += 1
        finally:
            stop.set()
            while producer.is_alive():  # unblock the producer so its thread can end
                try:
                    pending.get_nowait()
                except queue.Empty:
                    time.sleep(0.01)
            pool.shutdown(wait=False, cancel_futures=True)
            if self.cache is not None:
                self.cache.finish_run()

    def _fill(
        self,
        pending: queue.Queue,
        window: list[_Job],
        states: dict[int, _DocState],
        seen: dict[str, str],
        want: int,
    ) -> bool:
        """Move ready documents into the window; True once the input is exhausted."""
        while True:
            try:
                # Block while there is nothing to run; otherwise take only what is ready soon.
                item = pending.get(timeout=None if not window else 0.05)
            except queue.Empty:
                return False
            if item is None:
                return True
            prep = item.result()
            if prep.sha256 is not None and prep.sha256 in seen:
                dup = Record(
                    file=prep.name,
                    status="duplicate",
                    duplicate_of=seen[prep.sha256],
                    sha256=prep.sha256,
                    model=self.backend.model_id,
                    schema_name=self.schema.name,
                )
                states[prep.index] = _DocState(1, None, {0: dup})
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

    @staticmethod
    def _pick_batch(window: list[_Job], size: int) -> list[_Job]:
        """Take `size` jobs of similar image size (less padding), smallest first."""
        window.sort(key=lambda j: j.pixels)
        batch = window[:size]
        del window[:size]
        return batch

    def _process(self, batch: list[_Job]) -> list[Record]:
        gens = self._generate([j.request for j in batch])
        results: list[Record | None] = [None] * len(batch)
        retry: dict[int, str] = {}  # batch position -> validation error shown to the model
        for i, (job, gen) in enumerate(zip(batch, gens, strict=True)):
            data, error = self._check(gen)
            if error and self.options.repair and gen.finish_reason != "error":
                retry[i] = error
            else:
                results[i] = self._record(job, [gen], data, error)
        if retry:
            repairs = [
                batch[i].request.model_copy(
                    update={"prompt": repair_prompt(batch[i].request.prompt, gens[i].text, error)}
                )
                for i, error in retry.items()
            ]
            for i, gen2 in zip(retry, self._generate(repairs), strict=True):
                data, error = self._check(gen2)
                results[i] = self._record(batch[i], [gens[i], gen2], data, error)
        return [r for r in results if r is not None]

    def _generate(self, requests: list[Request]) -> list[Generation]:
        self.model_calls += 1
        return self.backend.generate(requests)

    def _check(self, gen: Generation) -> tuple[dict[str, Any] | None, str | None]:
        if gen.error:
            return None, gen.error
        data, error = validate(gen.text, self.schema.model)
        if error and gen.finish_reason == "length":
            error = f"answer cut off at the token limit ({gen.output_tokens} tokens); {error}"
        return data, error

    def _record(self, job: _Job, gens: list[Generation], data: dict[str, Any] | None, error: str | None) -> Record:
        first, last = gens[0], gens[-1]
        generate_s = sum(g.generate_s for g in gens)
        output_tokens = sum(g.output_tokens for g in gens)
        decode_s = sum(g.decode_s for g in gens)
        timings = Timings(
            load=round(job.load_s, 4),
            preprocess=round(first.preprocess_s, 4),
            ttft=None if first.ttft_s is None else round(first.ttft_s, 4),
            generate=round(generate_s, 4),
            total=round(job.load_s + generate_s, 4),
            prompt_tokens=first.prompt_tokens,
            output_tokens=output_tokens,
            tokens_per_s=round((output_tokens - len(gens)) / decode_s, 2) if decode_s > 0 else None,
        )
        warning = None
        if error is None and last.closed_early:
            warning = (
                f"the answer reached its token budget ({self.options.settings.max_new_tokens}) and was "
                "closed early: lists or text may be incomplete (raise --max-tokens)"
            )
        return Record(
            file=job.name,
            pages=job.pages,
            status="ok" if error is None else "failed",
            data=data,
            error=error,
            warning=warning,
            raw=None if error is None else last.text,
            sha256=job.sha256,
            model=self.backend.model_id,
            schema_name=self.schema.name,
            timings=timings,
        )

    def _failed(self, name: str, error: str, sha256: str | None = None) -> Record:
        return Record(
            file=name,
            status="failed",
            error=error,
            sha256=sha256,
            model=self.backend.model_id,
            schema_name=self.schema.name,
        )

    def _store(self, key: str | None, records: list[Record]) -> None:
        """Cache a document's records once all are ok (failures are retried next run)."""
        if self.cache is None or key is None or not records or any(r.status != "ok" or r.cached for r in records):
            return
        payload = {"records": [r.model_dump(mode="json", by_alias=False, exclude={"file", "cached"}) for r in records]}
        with self._cache_lock:
            self.cache.put(key, payload, file=records[0].file)
