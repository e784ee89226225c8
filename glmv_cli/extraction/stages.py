"""The stages of one document's trip, without the scheduling: what `Extractor` (pipeline.py) runs in its loader
threads and batches, and what the Ray pipeline (glmv_cli/ray.py) runs as Ray Data map stages.

    prepare: read -> cache -> decode/render -> preprocess -> jobs (one model request per document, or per page)
    process: answers -> validate -> repair -> confidence, evidence -> review status -> records
    store:   records -> the cache

Every stage is a place where one document can fail alone: an exception becomes its `failed` record
with a stable `error_code`, never the batch's.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmv_cli.cache import ResultCache, cache_key
from glmv_cli.engine.base import Backend, Generation, GenerationSettings, Request
from glmv_cli.errors import GlmvError, InputError, ModelLoadError, UsageError
from glmv_cli.extraction import grounding
from glmv_cli.extraction.confidence import (
    CLOSED_EARLY,
    below_reasons,
    confidence_like,
    is_threshold_reason,
    leaf_confidence,
)
from glmv_cli.extraction.constraint import constraint_schema
from glmv_cli.extraction.evidence import PageWords, locate
from glmv_cli.extraction.loading import LoadTask
from glmv_cli.extraction.parse import validate
from glmv_cli.extraction.prompt import PROMPT_VERSION, SYSTEM, build_prompt, pick_text_hint, repair_prompt
from glmv_cli.extraction.schemas import ResolvedSchema
from glmv_cli.inputs import DEFAULT_MAX_FILE_SIZE, Document, fit_for_vision, load_document, own_bytes, read_file
from glmv_cli.records import Record, Timings
from glmv_cli.review.store import CorrectionStore, apply_decisions

VISUAL_TOKEN_PIXELS = 28 * 28  # one visual token per 28x28 px after the processor's resize
FATAL = (ModelLoadError, UsageError)  # the model cannot run at all: no document could succeed


@dataclass
class ExtractOptions:
    """Everything about a run that is not the backend or the schema."""

    pages: list[int] | None = None
    max_pages: int = 8
    dpi: int = 150
    password: str | None = None
    text_hint: str = "auto"  # auto | on | off
    per_page: bool = False
    # log-probabilities on: every extracted value gets a confidence (extraction/confidence.py)
    settings: GenerationSettings = field(default_factory=lambda: GenerationSettings(max_new_tokens=2048, logprobs=True))
    review_below: float | None = None  # a value with lower confidence makes its document `review`
    batch_size: int | None = None
    repair: bool = True
    use_cache: bool = True
    refresh: bool = False
    workers: int = 2
    max_pixels: int = 40_000_000
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    roots: list[Path] | None = None  # files must resolve inside these (None: no confinement)
    max_image_tokens: int | None = None  # per page; None: the model processor's own maximum
    read_timeout: float = 60.0  # seconds to read one file
    prefetch_bytes: int = 1024**3  # page images and prepared model inputs waiting for the model
    render_timeout: float = 60.0  # seconds per page to decode or render
    # text: each value's box in a PDF's own text layer; model: also a grounding pass for the values it misses
    # that are under review_below; all: for every value it misses; off: none
    evidence: str = "text"


@dataclass
class Job:
    """One request to make: a whole document, or one page with --per-page."""

    index: int
    sub: int
    name: str
    sha256: str
    pages: list[int]
    request: Request
    load_s: float
    pixels: int
    page_count: int | None = None
    note: str | None = None  # a warning for the record (e.g. pages over --max-pages)
    pages_cut: int = 0
    tokens: int = 0  # estimated KV-cache tokens: prompt, visual tokens of every page, answer budget
    nbytes: int = 0  # page images plus prepared model inputs, held until the job has run
    words: list[tuple[int, list[Any]]] | None = None  # (page, its text layer's words) for evidence


@dataclass
class Prepared:
    """What a loader thread hands over for one input path."""

    index: int
    name: str
    sha256: str | None = None
    key: str | None = None
    records: list[Record] | None = None  # final already: cached, or failed to load
    jobs: list[Job] = field(default_factory=list)
    fatal: GlmvError | None = None  # the run cannot go on (the model cannot load)

    @property
    def nbytes(self) -> int:
        return sum(j.nbytes for j in self.jobs)


class Stages:
    """One schema, one backend, one set of options: a document's stages, each callable on its own."""

    def __init__(
        self,
        backend: Backend,
        schema: ResolvedSchema,
        options: ExtractOptions | None = None,
        cache: ResultCache | None = None,
        corrections: CorrectionStore | None = None,
    ):
        self.backend = backend
        self.schema = schema
        self.options = options or ExtractOptions()
        self.cache = cache if self.options.use_cache else None
        # a person's decisions in `glmv review` flow back, with the cache, unless --refresh
        self.corrections = corrections if self.cache is not None and not self.options.refresh else None
        self.json_schema = constraint_schema(schema.json_schema())
        self.renderer: Any = None  # a PdfRenderer (worker processes) while a run has one; else pdfium in-process
        self.model_calls = 0
        self._cache_lock = threading.Lock()

    # -- prepare ---------------------------------------------------------------------------------

    def key(self, sha256: str) -> str:
        """The cache key of a file's records: everything that could change the answer."""
        o = self.options
        return cache_key(
            {
                "file": sha256,
                "pages": o.pages,
                "max_pages": o.max_pages,
                "dpi": o.dpi,
                "per_page": o.per_page,
                "text_hint": o.text_hint,
                "max_image_tokens": o.max_image_tokens,
                "schema": self.schema.fingerprint(),
                "prompt": PROMPT_VERSION,
                "backend": self.backend.identity(),
                "settings": o.settings.model_dump(),
                "repair": o.repair,
                "evidence": o.evidence if o.evidence != "model" else [o.evidence, o.review_below],
            }
        )

    def prepare(self, task: LoadTask, data: bytes | None = None, started: float | None = None) -> Prepared:
        """read (unless the bytes are given, read since `started`) -> cache -> decode/render -> preprocess -> jobs.

        Never raises: a failure is the document's failed record; a fatal error (the model cannot load)
        is handed back in `fatal` for the caller to stop on.
        """
        name = task.path
        try:
            if data is None:
                return self.load(task)
            return self.load_bytes(task, data, time.perf_counter() if started is None else started)
        except FATAL as exc:
            return Prepared(task.index, name, fatal=exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one stage must not stop the batch
            code = {"read": "read_failed", "cache": "cache_failed", "decode": "load_failed"}
            return Prepared(
                task.index,
                name,
                records=[self.failed(name, f"{task.stage} failed: {_one_line(exc)}", code.get(task.stage))],
            )

    def load(self, task: LoadTask) -> Prepared:
        o, name = self.options, task.path
        started = time.perf_counter()
        task.enter("read")
        try:
            data = read_file(Path(name), max_bytes=o.max_file_size, roots=o.roots)
        except InputError as exc:
            return Prepared(task.index, name, records=[self.failed(name, exc.one_line(), exc.code)])
        return self.load_bytes(task, data, started)

    def load_bytes(self, task: LoadTask, data: bytes, started: float) -> Prepared:
        """Cache lookup, decode and preprocess of a file's bytes (the Ray pipeline reads them itself)."""
        o, name = self.options, task.path
        sha = hashlib.sha256(data).hexdigest()
        key = self.key(sha)
        if self.cache is not None and not o.refresh:
            task.enter("cache")
            with self._cache_lock:
                hit = self.cache.get(key)
            if hit is not None:
                records = [
                    self.reviewed(Record.model_validate({**r, "file": name, "cached": True})) for r in hit["records"]
                ]
                return Prepared(task.index, name, sha, key, records=records)
        task.enter("decode")
        try:
            doc = load_document(
                data,
                name=name,
                pages=o.pages,
                dpi=o.dpi,
                max_pages=o.max_pages,
                password=o.password,
                max_pixels=o.max_pixels,
                text_layer=o.text_hint != "off" or o.evidence != "off",
                render_pdf=self.renderer.render if self.renderer else None,
                lazy_images=self.backend.accepts_encoded_images,  # sent as the file is: no need to decode
            )
        except InputError as exc:
            return Prepared(task.index, name, sha, key, records=[self.failed(name, exc.one_line(), exc.code, sha)])
        task.enter("preprocess")
        try:
            jobs = self._jobs(task.index, doc, time.perf_counter() - started)
        except FATAL:
            raise
        except Exception as exc:  # noqa: BLE001 - the processor rejected these pages
            error = f"preprocessing failed: {_one_line(exc)}"
            return Prepared(task.index, name, sha, key, records=[self.failed(name, error, "preprocess_failed", sha)])
        return Prepared(task.index, name, sha, key, jobs=jobs)

    def _jobs(self, index: int, doc: Document, load_s: float) -> list[Job]:
        groups = [[p] for p in doc.pages] if self.options.per_page else [doc.pages]
        note = doc.page_limit_note(self.options.max_pages)
        cut = max(0, doc.selected - len(doc.pages)) if note else 0
        cap = self._image_pixel_cap()
        jobs = []
        for sub, pages in enumerate(groups):
            hint = self._text_hint(pages)
            prompt = build_prompt(self.schema, pages=len(pages), text_hint=hint)
            # Pages the processor would refuse (slivers, extreme aspect) are padded, huge ones shrunk.
            images = [fit_for_vision(p.image, max_pixels=cap) for p in pages]
            request = Request(
                images=images,
                encoded=own_bytes(pages, images) if self.backend.accepts_encoded_images else None,
                prompt=prompt,
                system=SYSTEM,
                json_schema=self.json_schema,
                settings=self.options.settings,
                tag=doc.path,
            )
            request = self.backend.prepare(request)  # preprocessing here, in the loader thread
            pixels = sum(i.width * i.height for i in images)
            numbers = [p.number for p in pages]
            job = Job(index, sub, doc.path, doc.sha256, numbers, request, load_s, pixels, doc.total_pages, note, cut)
            job.tokens = self.backend.estimate_tokens(request)
            job.nbytes = 3 * pixels + self.backend.held_bytes(request)
            if self.options.evidence != "off":
                job.words = [(p.number, p.words) for p in pages if p.words] or None
            jobs.append(job)
        return jobs

    def _image_pixel_cap(self) -> int | None:
        tokens = self.options.max_image_tokens
        own = self.backend.max_image_pixels()
        mine = tokens * VISUAL_TOKEN_PIXELS if tokens else None
        return min(c for c in (own, mine) if c) if (own or mine) else None

    def _text_hint(self, pages: list[Any]) -> str | None:
        return pick_text_hint([p.text for p in pages], self.options.text_hint)

    # -- process ---------------------------------------------------------------------------------
    def process(self, batch: list[Job], gens: list[Generation] | None = None) -> list[Record]:
        """Validate (and repair) a batch's answers: generated here, or handed over by the stream."""
        gens = self.generate_isolated([j.request for j in batch]) if gens is None else gens
        results: list[Record | None] = [None] * len(batch)
        retry: dict[int, str] = {}  # batch position -> validation error shown to the model
        for i, (job, gen) in enumerate(zip(batch, gens, strict=True)):
            data, error = self._validated(gen)
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
            for i, gen2 in zip(retry, self.generate_isolated(repairs), strict=True):
                data, error = self._validated(gen2)
                results[i] = self._record(batch[i], [gens[i], gen2], data, error)
        records = [r for r in results if r is not None]
        if self.options.evidence in ("model", "all"):
            records = self._ground(batch, records)
        return records

    def finish(self, job: Job, gen: Generation) -> Record:
        """One job's record from an answer generated elsewhere (Ray's model stage): validation,
        repair (through this backend), confidence, evidence, review status."""
        return self.process([job], [gen])[0]

    def _ground(self, batch: list[Job], records: list[Record]) -> list[Record]:
        """The grounding pass (--evidence model|all): a box from the model for each value the text layer did
        not place (model: only values under --review-below), one request per value and page, in one batch."""
        below = self.options.review_below
        if self.options.evidence == "all":
            below = None
        elif below is None:
            below = grounding.DEFAULT_BELOW
        asks: list[tuple[int, grounding.Path, int]] = []  # (record position, value path, page number)
        requests: list[Request] = []
        for pos, (job, record) in enumerate(zip(batch, records, strict=True)):
            if record.data is None or record.status not in ("ok", "review"):
                continue
            for path, name, value in grounding.targets(record.data, record.evidence, record.confidence, below):
                for number, image in zip(job.pages, job.request.images, strict=False):
                    asks.append((pos, path, number))
                    requests.append(grounding.request(image, name, value))
        if not requests:
            return records
        try:
            gens = self.generate_isolated(requests)
        except FATAL:
            raise
        except Exception:  # noqa: BLE001 - evidence is a help: the records stand without it
            return records
        evidence = {pos: records[pos].evidence or grounding.empty_like(records[pos].data) for pos, _, _ in asks}
        placed: set[tuple[int, grounding.Path]] = set()
        for (pos, path, number), gen in zip(asks, gens, strict=True):
            box = grounding.parse_box(gen.text) if gen.finish_reason != "error" else None
            if box is not None and (pos, path) not in placed:  # pages in order: the first page with a box wins
                placed.add((pos, path))
                grounding.put(evidence[pos], path, {"page": number, "box": box, "source": "model"})
        return [r.model_copy(update={"evidence": evidence[i]}) if i in evidence else r for i, r in enumerate(records)]

    def generate_isolated(self, requests: list[Request]) -> list[Generation]:
        """Generate a batch; if the call itself fails, each request alone, so one row fails alone."""
        try:
            return self._generate(requests)
        except FATAL:
            raise
        except Exception as exc:  # noqa: BLE001 - the backend isolates rows; this is the backstop
            if len(requests) == 1:
                return [Generation(finish_reason="error", error=_one_line(exc), tag=requests[0].tag)]
        return [self.generate_isolated([r])[0] for r in requests]

    def _generate(self, requests: list[Request]) -> list[Generation]:
        self.model_calls += 1
        return self.backend.generate(requests)

    def _validated(self, gen: Generation) -> tuple[dict[str, Any] | None, str | None]:
        try:
            return self._check(gen)
        except Exception as exc:  # noqa: BLE001 - e.g. a user validator raising a non-validation error
            return None, f"validation raised {_one_line(exc)}"

    def _check(self, gen: Generation) -> tuple[dict[str, Any] | None, str | None]:
        if gen.error:
            return None, gen.error
        data, error = validate(gen.text, self.schema.model)
        if error and gen.finish_reason == "length":
            error = f"answer cut off at the token limit ({gen.output_tokens} tokens); {error}"
        return data, error

    def _record(self, job: Job, gens: list[Generation], data: dict[str, Any] | None, error: str | None) -> Record:
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
        reasons, confidence = [], None
        if error is None:
            if last.closed_early:
                reasons.append(CLOSED_EARLY.format(budget=self.options.settings.max_new_tokens))
            confidence = self._confidence(last, data)
        code = None
        if error is not None:
            code = (last.error_code or "generation_failed") if last.finish_reason == "error" else "invalid_output"
        record = Record(
            file=job.name,
            pages=job.pages,
            page_count=job.page_count,
            pages_cut=job.pages_cut,
            status="ok" if error is None else "failed",
            data=data,
            confidence=confidence,
            error=error,
            error_code=code,
            warning=job.note,
            review_reasons=reasons or None,
            raw=None if error is None else last.text,
            sha256=job.sha256,
            model=self.backend.model_id,
            schema_name=self.schema.name,
            timings=timings,
            evidence=self._evidence(job, data) if error is None else None,
        )
        return self.reviewed(record)

    @staticmethod
    def _evidence(job: Job, data: dict[str, Any] | None) -> Any:
        """Each value's box in the page's own text layer (None without one, or if locating fails)."""
        if data is None or not job.words:
            return None
        try:
            return locate(data, [PageWords(number, words) for number, words in job.words])
        except Exception:  # noqa: BLE001 - evidence is a help: a failure to find it costs the record nothing
            return None

    @staticmethod
    def _confidence(gen: Generation, data: dict[str, Any] | None) -> Any:
        """Each value's confidence from the answer's raw token log-probabilities (None without them)."""
        if data is None or gen.token_logprobs is None:
            return None
        pieces = gen.token_bytes or [t.encode() for t in gen.tokens or []]
        try:
            by_path = leaf_confidence(pieces, gen.token_logprobs)
        except ValueError:  # not the JSON that was validated (e.g. free text around it): no confidence
            return None
        return confidence_like(data, by_path)

    def reviewed(self, record: Record) -> Record:
        """Status review when a reason stands: the answer closed early, or a value under --review-below.

        Threshold reasons are recomputed each time, so a cached record follows this run's threshold.
        """
        if record.status not in ("ok", "review"):
            return record
        kept = [r for r in record.review_reasons or [] if not is_threshold_reason(r)]
        reasons = kept + below_reasons(record.confidence, self.options.review_below)
        return record.model_copy(update={"status": "review" if reasons else "ok", "review_reasons": reasons or None})

    def corrected(self, record: Record) -> Record:
        """The record with a person's decisions in `glmv review` applied (when the run takes them)."""
        if self.corrections is None or self.options.per_page or record.status == "duplicate":
            return record
        decisions = self.corrections.decisions(record.sha256, record.schema_name)
        if not decisions:
            return record
        applied = apply_decisions({"data": record.data}, decisions)
        return record.model_copy(
            update={
                "data": applied["data"],
                "reviewed": True,
                "review_log": applied["review_log"],
                "status": "ok",
                "review_reasons": None,
                "error": None,
                "error_code": None,
            }
        )

    def failed(self, name: str, error: str, code: str | None, sha256: str | None = None) -> Record:
        """A failed record for a document, as this run writes them."""
        return Record(
            file=name,
            status="failed",
            error=error,
            error_code=code or "internal_error",
            sha256=sha256,
            model=self.backend.model_id,
            schema_name=self.schema.name,
        )

    def duplicate(self, name: str, sha256: str, of: str) -> Record:
        """The record of a file whose bytes an earlier input of this run already had."""
        return Record(
            file=name,
            status="duplicate",
            duplicate_of=of,
            sha256=sha256,
            model=self.backend.model_id,
            schema_name=self.schema.name,
        )

    # -- store -----------------------------------------------------------------------------------
    def store(self, key: str | None, records: list[Record]) -> list[Record]:
        """Cache a document's records once all have data, ok or review (failures are retried next run);
        returns them, failed with cache_failed if caching failed."""
        answered = all(r.status in ("ok", "review") and not r.cached for r in records)
        if self.cache is None or key is None or not answered:
            return records
        payload = {"records": [r.model_dump(mode="json", by_alias=False, exclude={"file", "cached"}) for r in records]}
        try:
            with self._cache_lock:
                self.cache.put(key, payload, file=records[0].file)
        except Exception as exc:  # noqa: BLE001 - the answer is kept; only its caching failed
            error = f"result could not be cached: {_one_line(exc)}"
            return [
                r.model_copy(update={"status": "failed", "error": error, "error_code": "cache_failed"}) for r in records
            ]
        return records


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
