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
from glmv_cli.errors import InputError, UsageError


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
    from glmv_cli.api import Glmv
    from glmv_cli.inputs import DEFAULT_MAX_FILE_SIZE
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
    sources: list[str | bytes] = []
    for name in files:
        if name == "-":
            data = sys.stdin.buffer.read(DEFAULT_MAX_FILE_SIZE + 1)
            if len(data) > DEFAULT_MAX_FILE_SIZE:
                raise InputError("stdin holds more than 256 MB", code="file_too_large")
            sources.append(data)
        elif is_url(name):
            sources.append(fetch_url(name, allow_http=allow_http)[0])
        else:
            sources.append(name)
    fetch_s = time.perf_counter() - started

    glmv = Glmv(
        model,
        backend=backend_name,
        device=device,
        dtype=dtype,
        quant=quant,
        revision=revision,
        base_url=base_url,
        api_key=api_key,
        remote_model=remote_model,
        request_timeout=request_timeout,
        cache=False,
    )

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        answer = glmv.ask(
            sources, question, on_text=None if as_json else write, page=page, dpi=dpi, password=password,
            text_hint=text_hint, max_tokens=max_tokens, temperature=temperature, think=think, names=files,
        )  # fmt: skip
    finally:
        glmv.close()
    if not as_json:
        sys.stdout.write("\n")
    timings = {**answer.timings, "inputs_s": round(answer.timings["inputs_s"] + fetch_s, 4)}
    if as_json:
        import json

        payload = {
            "answer": answer.text,
            "files": files,
            "model": answer.model,  # with --backend openai: the served model's name
            "finish_reason": answer.finish_reason,
            "timings": timings,
        }
        if think:
            payload["thinking"] = answer.thinking
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
    if stats:
        sys.stderr.write(
            f"model load {timings['model_load_s']:.2f}s | time to first token {timings['ttft_s'] or 0:.3f}s | "
            f"{timings['output_tokens']} tokens at {timings['tokens_per_s'] or 0:.1f} tokens/s\n"
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
