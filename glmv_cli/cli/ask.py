"""`glmv ask FILE... QUESTION`: a streamed answer about images or PDF pages."""

import sys
import time
from typing import Annotated

import typer

from glmv_cli import DEFAULT_MODEL
from glmv_cli.cli.common import (
    TEXT_HINT_MODES,
    ApiKeyOpt,
    BackendOpt,
    BaseUrlOpt,
    DeviceOpt,
    DpiOpt,
    DtypeOpt,
    ModelOpt,
    PasswordOpt,
    QuantOpt,
    RemoteModelOpt,
    RequestTimeoutOpt,
    RevisionOpt,
    TextHintOpt,
    ThinkOpt,
    handle_errors,
)
from glmv_cli.errors import EngineError, InputError, UsageError


@handle_errors
def ask(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="FILE... QUESTION",
            help="One or more images or PDFs ('-' for stdin, or an https URL with --allow-url), then the question.",
        ),
    ],
    page: Annotated[int, typer.Option(min=1, help="PDF page to look at.")] = 1,
    dpi: DpiOpt = 150,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens to generate.")] = 1024,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy (deterministic).")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the answer and timings.")] = False,
    stats: Annotated[bool, typer.Option(help="Print load time, time to first token and tokens/s on stderr.")] = False,
    think: ThinkOpt = False,
    text_hint: TextHintOpt = "auto",
    password: PasswordOpt = None,
    allow_url: Annotated[
        bool,
        typer.Option(help="Fetch FILE arguments that are URLs (https, public addresses only, at most 50 MB in 30 s)."),
    ] = False,
    allow_http: Annotated[bool, typer.Option(help="With --allow-url, also fetch plain http URLs.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = "auto",
    revision: RevisionOpt = None,
    backend_name: BackendOpt = "local",
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    remote_model: RemoteModelOpt = None,
    request_timeout: RequestTimeoutOpt = 600,
) -> None:
    """Ask a question about one or more images or PDF pages; the answer streams to stdout."""
    from glmv_cli.engine.base import GenerationSettings, Request
    from glmv_cli.engine.factory import create_backend
    from glmv_cli.extraction.prompt import pick_text_hint, question_prompt
    from glmv_cli.inputs import DEFAULT_MAX_FILE_SIZE, fit_for_vision, load_document
    from glmv_cli.inputs.urls import fetch_url, is_url

    if len(args) < 2:
        raise UsageError("give at least one FILE and a QUESTION", "glmv ask invoice.png 'What is the total?'")
    *files, question = args
    if text_hint not in TEXT_HINT_MODES:
        raise UsageError(f"unknown --text-hint {text_hint!r}", "choose auto, on or off")
    if files.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    _check_url_flags(files, allow_url, allow_http)
    started = time.perf_counter()
    images, texts = [], []
    for name in files:
        if name == "-":
            source: str | bytes = sys.stdin.buffer.read(DEFAULT_MAX_FILE_SIZE + 1)
            if len(source) > DEFAULT_MAX_FILE_SIZE:
                raise InputError("stdin holds more than 256 MB", code="file_too_large")
        elif is_url(name):
            source, _ = fetch_url(name, allow_http=allow_http)
        else:
            source = name
        doc = load_document(source, name=name, pages=[page], dpi=dpi, password=password, max_pages=1)
        images.extend(p.image for p in doc.pages)
        texts.extend(p.text for p in doc.pages)
    load_inputs_s = time.perf_counter() - started

    backend = create_backend(
        model,
        backend=backend_name,
        device=device,
        dtype=dtype,
        quant=quant,
        revision=revision,
        base_urls=base_url,
        api_key=api_key,
        remote_model=remote_model,
        request_timeout=request_timeout,
    )
    # Slivers and extreme aspect ratios padded, huge pages shrunk: the processor would refuse them.
    cap = backend.max_image_pixels()
    images = [fit_for_vision(image, max_pixels=cap) for image in images]
    request = Request(
        images=images,
        prompt=question_prompt(question, pick_text_hint(texts, text_hint)),
        settings=GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, think=think),
    )
    if as_json:
        gen = backend.generate([request])[0]
    else:

        def write(piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        gen = backend.stream(request, write)
        sys.stdout.write("\n")
    if gen.error:
        raise EngineError(f"generation failed: {gen.error}")
    timings = {
        "inputs_s": round(load_inputs_s, 4),
        "model_load_s": round(backend.load_s, 3),
        "preprocess_s": round(gen.preprocess_s, 4),
        "ttft_s": _round(gen.ttft_s),
        "generate_s": round(gen.generate_s, 4),
        "prompt_tokens": gen.prompt_tokens,
        "output_tokens": gen.output_tokens,
        "tokens_per_s": _round(gen.tokens_per_s),
    }
    if as_json:
        import json

        payload = {
            "answer": gen.text,
            "files": files,
            "model": backend.model_id,  # with --backend openai: the served model's name
            "finish_reason": gen.finish_reason,
            "timings": timings,
        }
        if think:
            payload["thinking"] = gen.thinking
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
    if stats:
        sys.stderr.write(
            f"model load {timings['model_load_s']:.2f}s | time to first token {gen.ttft_s or 0:.3f}s | "
            f"{gen.output_tokens} tokens at {gen.tokens_per_s or 0:.1f} tokens/s\n"
        )


def _check_url_flags(files: list[str], allow_url: bool, allow_http: bool) -> None:
    """Refuse URLs up front, before any download or model load, unless the flags allow them."""
    from glmv_cli.inputs.urls import is_url

    urls = [name for name in files if is_url(name)]
    if urls and not allow_url:
        raise UsageError(f"{urls[0]} is a URL: glmv fetches URLs only with --allow-url")
    plain = [url for url in urls if url.lower().startswith("http://")]
    if plain and not allow_http:
        raise UsageError(f"{plain[0]} is plain http: add --allow-http to fetch it")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
