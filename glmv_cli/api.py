"""glmv as a library: load the model once, then extract, ask and evaluate from Python.

    from glmv_cli import Glmv

    glmv = Glmv()                                    # zai-org/GLM-4.6V-Flash, loaded on first use
    for record in glmv.extract("invoices/", schema="invoice"):
        print(record.status, record.data)
    print(glmv.ask("receipt.jpg", "What is the total?"))

The command line is a thin layer over this: the same options, statuses, error codes, cache and
confidence. Nothing here imports torch until a model is needed.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glmv_cli import DEFAULT_MODEL
from glmv_cli.errors import EngineError, UsageError

if TYPE_CHECKING:
    from glmv_cli.engine.base import Backend, Generation
    from glmv_cli.evaluation.report import Report
    from glmv_cli.extraction.pipeline import ExtractOptions, Extractor
    from glmv_cli.records import Record

TEXT_HINT_MODES = ("auto", "on", "off")
EVIDENCE_MODES = ("text", "model", "all", "off")
Source = str | Path | bytes | Any  # a path, a file's bytes, or a PIL image


@dataclass
class Answer:
    """An answer to a question about documents; str(answer) is its text."""

    text: str
    finish_reason: str
    thinking: str | None = None
    model: str = ""
    timings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


class Extraction:
    """The records of one extract run as they finish (input order); stop() ends it after the work in flight."""

    def __init__(self, extractor: Extractor, paths: Sequence[Path], names: dict[str, str], cleanup: Callable | None):
        self.extractor = extractor
        self._paths, self._names, self._cleanup = paths, names, cleanup

    def __iter__(self) -> Iterator[Record]:
        try:
            for record in self.extractor.run(self._paths):
                name = self._names.get(record.file)
                yield record.model_copy(update={"file": name}) if name else record
        finally:
            if self._cleanup is not None:
                self._cleanup()

    def stop(self) -> None:
        self.extractor.stop()

    @property
    def stopped(self) -> bool:
        return self.extractor.stopped


class Glmv:
    """One model (local, or a server through --backend openai), loaded once and shared by every call.

    Arguments are the command line's model options: `model` (hub id or local folder; default
    $GLMV_MODEL, else GLM-4.6V-Flash), `backend` ("local" or "openai"), `device`, `dtype`, `quant`,
    `revision`, `batch_size`, `base_url` (one or a list), `api_key`, `remote_model`, `concurrency`,
    `request_timeout`; `cache=False` turns the result cache off. `backend` may also be a Backend
    object already made. With `backend="vllm"` glmv starts `vllm serve` (`vllm_command`), sized for
    `max_pages` and `max_tokens`, on first use and stops it on close(); `on_status` gets its start-up lines.
    `prefix_cache_mb` keeps that much of recent prompt prefixes (page images) for follow-up questions and
    for several schemas over the same documents (local backend; off by default).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str | Backend = "local",
        device: str = "auto",
        dtype: str = "auto",
        quant: str = "auto",
        revision: str | None = None,
        batch_size: int | None = None,
        base_url: str | list[str] | None = None,
        api_key: str | None = None,
        remote_model: str | None = None,
        concurrency: int | None = None,
        request_timeout: float = 600,
        cache: bool = True,
        vllm_command: str | None = None,
        gpu_memory_utilization: float | None = None,
        max_pages: int = 8,
        max_tokens: int = 2048,
        on_status: Callable[[str], None] | None = None,
        prefix_cache_mb: int = 0,
    ):
        from glmv_cli.engine.factory import create_backend

        self.batch_size = batch_size
        self.use_cache = cache
        self._cache: Any = None
        if not isinstance(backend, str):  # a Backend already made (glmv serve's, shared with its MCP tools)
            self.backend, self.model = backend, backend.model_id
            return
        self.model = model or os.environ.get("GLMV_MODEL") or DEFAULT_MODEL
        self.backend = create_backend(
            self.model,
            backend=backend,
            device=device,
            dtype=dtype,
            quant=quant,
            revision=revision,
            batch_size=batch_size,
            base_urls=[base_url] if isinstance(base_url, str) else base_url,
            api_key=api_key,
            remote_model=remote_model,
            concurrency=concurrency,
            request_timeout=request_timeout,
            vllm={
                "command": vllm_command,
                "gpu_memory_utilization": gpu_memory_utilization,
                "max_pages": max_pages,
                "max_tokens": max_tokens,
                "on_status": on_status,
            },
            prefix_cache_mb=prefix_cache_mb,
        )

    # -- extract --------------------------------------------------------------------------------
    def extract(self, inputs: Source | Iterable[Source], schema: Any = None, **options: Any) -> Extraction:
        """Records for documents: paths, folders (walked as `glmv extract` walks them), bytes or PIL images.

        `schema` is a built-in or file name, an inline spec ("vendor, total float"), a Pydantic model
        or a JSON Schema dict. `options` are `glmv extract`'s: pages, max_pages, dpi, password,
        text_hint, per_page, max_tokens, think, think_budget, review_below, repair, refresh,
        use_cache, workers, max_image_tokens, ... (see ExtractOptions). Iterate the result for the
        records, in input order, each as soon as it and those before it are done.
        """
        from glmv_cli.extraction.schema_check import check_schema
        from glmv_cli.extraction.schemas import as_schema

        resolved = as_schema(schema)
        check_schema(resolved)
        paths, names, cleanup, roots = _materialise(inputs)
        # As the CLI: a link inside a folder that leads out of the paths given is refused, not read.
        options.setdefault("roots", roots)
        options.setdefault("use_cache", self.use_cache)
        opts = extract_options(batch_size=self.batch_size, **options)
        return Extraction(self.extractor(resolved, opts), paths, names, cleanup)

    def extractor(self, schema: Any, options: ExtractOptions) -> Extractor:
        """The pipeline itself, for callers that drive a run (the CLI: progress, Ctrl-C)."""
        from glmv_cli.extraction.pipeline import Extractor
        from glmv_cli.extraction.schemas import as_schema
        from glmv_cli.review.store import CorrectionStore

        cache = self.cache if options.use_cache else None
        corrections = CorrectionStore(cache.folder) if cache is not None else None
        return Extractor(self.backend, as_schema(schema), options, cache=cache, corrections=corrections)

    @property
    def cache(self) -> Any:
        if self._cache is None and self.use_cache:
            from glmv_cli.cache import ResultCache

            self._cache = ResultCache()
        return self._cache

    # -- ask ------------------------------------------------------------------------------------
    def ask(
        self,
        sources: Source | Sequence[Source],
        question: str,
        *,
        stream: bool = False,
        on_text: Callable[[str], None] | None = None,
        page: int = 1,
        dpi: int = 150,
        password: str | None = None,
        text_hint: str = "auto",
        max_tokens: int = 1024,
        temperature: float = 0.0,
        think: bool = False,
        names: Sequence[str] | None = None,
    ) -> Any:
        """Answer a question about one or more images or PDF pages (the `page` of each PDF).

        Returns an Answer; with `stream=True` an iterator of text pieces instead; `on_text` is
        called with each piece as it comes (the CLI's streaming). `names` name the sources in
        error messages (default: the path, or "input N").
        """
        if stream:
            return self._stream(
                sources, question, page=page, dpi=dpi, password=password, text_hint=text_hint,
                max_tokens=max_tokens, temperature=temperature, think=think, names=names,
            )  # fmt: skip
        from glmv_cli.engine.base import GenerationSettings, Request
        from glmv_cli.extraction.prompt import pick_text_hint, question_prompt
        from glmv_cli.inputs import fit_for_vision, load_document, own_bytes

        if text_hint not in TEXT_HINT_MODES:
            raise UsageError(f"unknown text_hint {text_hint!r}", "choose auto, on or off")
        started = time.perf_counter()
        pages, texts = [], []
        for n, source in enumerate(_listed(sources)):
            name = names[n] if names else str(source) if isinstance(source, (str, Path)) else f"input {n + 1}"
            doc = load_document(_loadable(source), name=name, pages=[page], dpi=dpi, password=password, max_pages=1)
            pages.extend(doc.pages)
            texts.extend(p.text for p in doc.pages)
        load_inputs_s = time.perf_counter() - started
        # Slivers and extreme aspect ratios padded, huge pages shrunk: the processor would refuse them.
        cap = self.backend.max_image_pixels()
        images = [fit_for_vision(p.image, max_pixels=cap) for p in pages]
        request = Request(
            images=images,
            encoded=own_bytes(pages, images) if self.backend.accepts_encoded_images else None,
            prompt=question_prompt(question, pick_text_hint(texts, text_hint)),
            settings=GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, think=think),
        )
        gen = self.backend.stream(request, on_text) if on_text else self.backend.generate([request])[0]
        if gen.error:
            raise EngineError(f"generation failed: {gen.error}")
        return Answer(
            gen.text, gen.finish_reason, gen.thinking, self.backend.model_id, _timings(gen, load_inputs_s, self)
        )

    def _stream(self, sources: Any, question: str, **kwargs: Any) -> Iterator[str]:
        pieces: queue.Queue[Any] = queue.Queue()
        done = object()

        def run() -> None:
            try:
                self.ask(sources, question, on_text=pieces.put, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
                pieces.put(exc)
            pieces.put(done)

        threading.Thread(target=run, name="glmv-ask", daemon=True).start()
        while (piece := pieces.get()) is not done:
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    # -- eval -----------------------------------------------------------------------------------
    @staticmethod
    def eval(predictions: str | Path | Iterable[Any], truth: str | Path, map: str | None = None) -> Report:  # noqa: A002
        """Per-field precision, recall and F1 of records (a JSONL path, or Records / dicts) against truth."""
        from glmv_cli.evaluation import evaluate

        if isinstance(predictions, (str, Path)):
            return evaluate(Path(predictions), Path(truth), map)
        with tempfile.TemporaryDirectory(prefix="glmv-eval-") as tmp:
            path = Path(tmp) / "records.jsonl"
            with path.open("w", encoding="utf-8") as out:
                for record in predictions:
                    out.write(record.model_dump_json() if hasattr(record, "model_dump_json") else _json(record))
                    out.write("\n")
            return evaluate(path, Path(truth), map)

    def close(self) -> None:
        self.backend.close()
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> Glmv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def extract_options(**options: Any) -> ExtractOptions:
    """ExtractOptions from keyword options: its own fields, plus max_tokens, think and think_budget."""
    from glmv_cli.engine.base import GenerationSettings
    from glmv_cli.extraction.pipeline import ExtractOptions

    generation = {k: options.pop(k) for k in ("max_tokens", "think", "think_budget") if k in options}
    known = {f.name for f in fields(ExtractOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown extract option {unknown[0]!r}; known: {', '.join(sorted(known | set(generation)))}")
    if options.get("text_hint", "auto") not in TEXT_HINT_MODES:
        raise UsageError(f"unknown text_hint {options['text_hint']!r}", "choose auto, on or off")
    if options.get("evidence", "text") not in EVIDENCE_MODES:
        raise UsageError(f"unknown evidence {options['evidence']!r}", "choose text, model, all or off")
    if "settings" not in options:
        # log-probabilities always: every value gets a confidence, in the records and for review_below
        options["settings"] = GenerationSettings(
            max_new_tokens=generation.get("max_tokens", 2048),
            think=generation.get("think", False),
            think_budget=generation.get("think_budget"),
            logprobs=True,
        )
    return ExtractOptions(**options)


def _listed(sources: Any) -> list[Any]:
    if isinstance(sources, (str, Path, bytes)) or not isinstance(sources, Iterable):
        return [sources]
    return list(sources)


def _loadable(source: Any) -> str | bytes:
    """What load_document takes: a path or bytes (a PIL image is encoded as PNG)."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if hasattr(source, "save"):
        import io

        buffer = io.BytesIO()
        source.save(buffer, format="PNG")
        return buffer.getvalue()
    raise UsageError(f"an input is a path, bytes or a PIL image, not {type(source).__name__}")


def _materialise(inputs: Any) -> tuple[list[Path], dict[str, str], Callable | None, list[Path]]:
    """Paths for the pipeline: folders walked, in-memory inputs written to a private temporary folder
    (their records are named `<input N>`); and the roots files must resolve inside."""
    from glmv_cli.inputs import discover, roots_of

    paths: list[Path] = []
    names: dict[str, str] = {}
    roots: list[Path] = []
    tmp: tempfile.TemporaryDirectory | None = None
    for n, item in enumerate(_listed(inputs)):
        if isinstance(item, (str, Path)):
            paths.extend(discover([Path(item)]))
            roots += roots_of([item])
            continue
        if tmp is None:
            tmp = tempfile.TemporaryDirectory(prefix="glmv-inputs-")
            roots += roots_of([tmp.name])
        path = Path(tmp.name) / f"input-{n + 1}"
        path.write_bytes(_loadable(item))
        names[str(path)] = f"<input {n + 1}>"
        paths.append(path)
    if not paths:
        raise UsageError("no images or PDFs to extract from")
    return paths, names, tmp.cleanup if tmp is not None else None, roots


def _timings(gen: Generation, load_inputs_s: float, glmv: Glmv) -> dict[str, Any]:
    def r(value: float | None, digits: int = 4) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "inputs_s": r(load_inputs_s),
        "model_load_s": r(glmv.backend.load_s, 3),
        "preprocess_s": r(gen.preprocess_s),
        "ttft_s": r(gen.ttft_s),
        "generate_s": r(gen.generate_s),
        "prompt_tokens": gen.prompt_tokens,
        "output_tokens": gen.output_tokens,
        "tokens_per_s": r(gen.tokens_per_s),
    }


def _json(record: Any) -> str:
    import json

    return json.dumps(record, ensure_ascii=False)
