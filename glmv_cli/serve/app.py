"""create_app: the OpenAI-compatible FastAPI app over one Backend (tests pass any Backend)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from glmv_cli.cache import ResultCache
from glmv_cli.engine.base import Backend, Generation
from glmv_cli.engine.tools import ToolCall, parse_tool_calls
from glmv_cli.serve.auth import KeyRing, RateLimiter
from glmv_cli.serve.batcher import Batcher
from glmv_cli.serve.errors import ApiError
from glmv_cli.serve.messages import InputPolicy, offered_tools, to_engine_request
from glmv_cli.serve.openai_types import ChatCompletionRequest, error_body, token_logprobs, usage
from glmv_cli.serve.results import AnswerCache


@dataclass
class ServeConfig:
    """Everything about the server that is not the model."""

    served_model_name: str
    api_keys: list[str] = field(default_factory=list)
    rate_limit: int = 0  # requests per minute per key (per client address when open); 0 = none
    max_request_bytes: int = 20 * 1024 * 1024
    batch_wait_s: float = 0.010
    max_batch: int | None = None  # None: the backend's default_batch_size()
    cache: ResultCache | None = None  # None: no result cache
    inputs: InputPolicy = field(default_factory=InputPolicy)
    log: TextIO | None = None  # one JSON line per request; None: stderr
    mcp: bool = True  # the MCP tools over streamable HTTP at /mcp (needs the `mcp` package)
    allow_dirs: list[Path] = field(default_factory=list)  # folders the MCP tools may read paths from


def create_app(backend: Backend, config: ServeConfig) -> FastAPI:
    """The app; its lifespan starts the model's worker thread and stops it (finishing queued work)."""
    batcher = Batcher(backend, max_batch=config.max_batch or backend.default_batch_size(), wait_s=config.batch_wait_s)
    keys = KeyRing(config.api_keys)
    limiter = RateLimiter(config.rate_limit)
    answers = AnswerCache(config.cache, backend.identity()) if config.cache is not None else None
    started = int(time.time())
    names = {config.served_model_name, backend.model_id}
    counts = {"requests": 0}

    mcp = _mcp_server(backend, batcher, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            async with mcp.session_manager.run() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            await run_in_threadpool(batcher.close)
            if answers is not None:
                answers.close()

    app = FastAPI(title="glmv serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request"
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", kind), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> JSONResponse:
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        return JSONResponse(error_body(message, "server_error", "internal_error"), status_code=500)

    def authorize(request: Request) -> None:
        """401 without a valid key (when keys are set), 429 over the rate limit; notes the key id for the log."""
        if keys.open:
            ident, client = None, f"addr:{request.client.host if request.client else '?'}"
        else:
            ident = keys.check(request.headers.get("authorization"))
            if ident is None:
                raise ApiError(
                    401,
                    "Incorrect or missing API key: send Authorization: Bearer KEY",
                    "invalid_request_error",
                    "invalid_api_key",
                )
            client = ident
        request.state.log["key"] = ident
        wait = limiter.acquire(client)
        if wait:
            raise ApiError(
                429,
                f"Rate limit reached: {limiter.per_minute} requests per minute; retry in {wait:.1f}s",
                "requests",
                "rate_limit_exceeded",
                headers={"Retry-After": RateLimiter.retry_after(wait)},
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.served_model_name}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        card = {
            "id": config.served_model_name,
            "object": "model",
            "created": started,
            "owned_by": "glmv",
            "root": backend.model_id,  # what it was loaded from (glmv's remote backend keys its cache on it)
        }
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            "requests": counts["requests"],
            "batches": {str(size): n for size, n in sorted(batcher.batch_sizes.items())},
            "streams": batcher.streams,
            "max_batch": batcher.max_batch,
            "peak_rows": batcher.peak_rows,
            "continuous": batcher.continuous,
            "cache": answers.stats() if answers is not None else None,
            "prefix_cache": _prefix_stats(backend),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        authorize(request)
        counts["requests"] += 1
        try:
            chat = ChatCompletionRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise ApiError(400, _validation_message(exc), "invalid_request_error", "invalid_request") from None
        if chat.model and chat.model not in names:
            message = f"The model `{chat.model}` does not exist; this server has `{config.served_model_name}`"
            raise ApiError(404, message, "invalid_request_error", "model_not_found", param="model")
        converted = await run_in_threadpool(to_engine_request, chat, backend, config.inputs)
        log = request.state.log
        key = None
        if answers is not None and answers.cacheable(converted.cache_parts):
            key = answers.key(converted.cache_parts)
            hit = answers.get(key)
            if hit is not None:
                log.update(cached=True, prompt_tokens=hit.prompt_tokens, completion_tokens=hit.output_tokens)
                if chat.stream:
                    return _sse(_replay(hit, chat, config.served_model_name))
                return _completion(hit, chat, config.served_model_name)
        engine_request = await run_in_threadpool(_prepared, backend, converted.request)
        if chat.stream:
            return _sse(_stream(batcher, engine_request, chat, config.served_model_name, answers, key, log))
        gen = await asyncio.wrap_future(batcher.submit(engine_request))
        _raise_if_failed(gen)
        log.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.output_tokens, batch=gen.batch_size)
        if answers is not None and key is not None:
            answers.put(key, gen)
        return _completion(gen, chat, config.served_model_name)

    if mcp is not None:
        from starlette.routing import Route

        endpoint = next(r.endpoint for r in mcp.streamable_http_app().routes if getattr(r, "path", "") == "/mcp")
        app.router.routes.append(Route("/mcp", endpoint=_Guarded(endpoint, authorize)))

    app.add_middleware(_BodyLimit, max_bytes=config.max_request_bytes)
    app.add_middleware(_RequestLog, stream=config.log)  # added last: outermost, so it logs 413s too
    return app


def _prefix_stats(backend: Backend) -> dict[str, int] | None:
    """The local engine's kept prompt prefixes (follow-up questions about a page): entries, bytes, hits."""
    try:
        prefixes = backend.prefixes  # type: ignore[attr-defined]
    except AttributeError:
        return None
    return prefixes.stats()


def _mcp_server(backend: Backend, batcher: Batcher, config: ServeConfig) -> Any:
    """glmv's MCP tools over this server's model and batches, or None (turned off, or no `mcp` package)."""
    if not config.mcp:
        return None
    try:
        from glmv_cli.mcp_tools import create_mcp
    except ImportError:
        return None
    from glmv_cli.api import Glmv
    from glmv_cli.serve.batcher import BatchedBackend

    glmv = Glmv(backend=BatchedBackend(batcher, backend), cache=config.cache is not None)
    return create_mcp(glmv, config.allow_dirs, http=True)


class _Guarded:
    """An ASGI app behind the server's keys and rate limit (the /mcp endpoint)."""

    def __init__(self, app: Any, authorize: Any):
        self.app, self.authorize = app, authorize

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        scope.setdefault("state", {}).setdefault("log", {})
        try:
            self.authorize(request)
        except ApiError as exc:
            response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


# -- responses ------------------------------------------------------------------------------------
def _completion(gen: Generation, chat: ChatCompletionRequest, model: str) -> dict[str, Any]:
    content, calls = _answer(gen, chat)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [call.openai() for call in calls]
    if gen.thinking:
        message["reasoning_content"] = gen.thinking
    choice = {"index": 0, "message": message, "logprobs": _logprobs(gen, chat), "finish_reason": _finish(gen, calls)}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(gen.prompt_tokens, gen.output_tokens),
    }


def _answer(gen: Generation, chat: ChatCompletionRequest) -> tuple[str | None, list[ToolCall]]:
    """The answer's text and its tool calls (GLM's <tool_call> blocks, read back when tools were offered)."""
    offered = offered_tools(chat)
    if offered is None:
        return gen.text, []
    return parse_tool_calls(gen.text, offered)


def _finish(gen: Generation, calls: list[ToolCall] | None = None) -> str:
    """OpenAI's finish_reason; an answer the token budget closed early is `length`, as vLLM says of a cut one.

    The JSON is complete but may be short of what the document holds, and a glmv client marks it
    `review` either way, so a remote run's records match the local backend's. A finished answer
    that calls tools ends with `tool_calls`.
    """
    if gen.closed_early:
        return "length"
    return "tool_calls" if calls and gen.finish_reason == "stop" else gen.finish_reason


def _logprobs(gen: Generation, chat: ChatCompletionRequest) -> dict[str, Any] | None:
    if not chat.logprobs or gen.token_logprobs is None or gen.tokens is None:
        return None
    return token_logprobs(gen.tokens, gen.token_logprobs, getattr(gen, "token_bytes", None))


class _Chunks:
    """chat.completion.chunk objects of one streamed answer, as SSE lines."""

    def __init__(self, model: str):
        self.base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return _event({**self.base, "choices": [choice]})

    def usage(self, gen: Generation) -> str:
        return _event({**self.base, "choices": [], "usage": usage(gen.prompt_tokens, gen.output_tokens)})


async def _stream(
    batcher: Batcher,
    request: Any,
    chat: ChatCompletionRequest,
    model: str,
    answers: AnswerCache | None,
    key: str | None,
    log: dict[str, Any],
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    future, cancel = batcher.submit_stream(request, lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece))
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
    chunks = _Chunks(model)
    sent = False
    held = offered_tools(chat) is not None  # with tools, the answer is read whole: text, or calls
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
        while (piece := await pieces.get()) is not None:
            if piece and not held:
                sent = True
                yield chunks.delta({"content": piece})
        try:
            gen = future.result()
            _raise_if_failed(gen)
        except ApiError as exc:
            yield _event(exc.body())
            yield "data: [DONE]\n\n"
            return
        except Exception as exc:  # noqa: BLE001 - the status line is gone; the error travels as an event
            yield _event(error_body(f"generation failed: {exc}", "server_error", "generation_failed"))
            yield "data: [DONE]\n\n"
            return
        log.update(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.output_tokens, batch=1)
        if answers is not None and key is not None:
            answers.put(key, gen)
        # Thinking then constrained JSON runs in two steps that do not stream: send the answer whole.
        async for line in _tail(chunks, gen, chat, "" if sent else gen.text):
            yield line
    finally:
        cancel.set()  # the client went away (or we are done): stop generating for it


async def _replay(gen: Generation, chat: ChatCompletionRequest, model: str) -> AsyncIterator[str]:
    chunks = _Chunks(model)
    yield chunks.delta({"role": "assistant", "content": ""})
    async for line in _tail(chunks, gen, chat, gen.text):
        yield line


async def _tail(chunks: _Chunks, gen: Generation, chat: ChatCompletionRequest, text: str) -> AsyncIterator[str]:
    calls: list[ToolCall] = []
    if text:
        content, calls = _answer(gen.model_copy(update={"text": text}), chat)
        if content:
            yield chunks.delta({"content": content})
    for index, call in enumerate(calls):  # each call whole, in one delta, as OpenAI's streams may send them
        yield chunks.delta({"tool_calls": [call.openai(index)]})
    final: dict[str, Any] = {"reasoning_content": gen.thinking} if gen.thinking else {}
    # Per-token logprobs arrive with the last chunk: the engine reports them when the answer is done.
    yield chunks.delta(final, _finish(gen, calls), _logprobs(gen, chat))
    if chat.stream_options and chat.stream_options.include_usage:
        yield chunks.usage(gen)
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _prepared(backend: Backend, request: Any) -> Any:
    """The processor's work (resize, patchify, tokenise) here, off the model's thread; a refusal is a 400."""
    try:
        return backend.prepare(request)
    except Exception as exc:  # noqa: BLE001 - the processor raises many types for inputs it refuses
        message = f"the model's processor refused the input: {' '.join(str(exc).split())}"
        raise ApiError(400, message, "invalid_request_error", "preprocess_failed") from None


def _raise_if_failed(gen: Generation) -> None:
    if gen.error or gen.finish_reason == "error":
        raise ApiError(500, f"generation failed: {gen.error}", "server_error", "generation_failed")


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid request: {where}: {first.get('msg', 'invalid')}{more}"


# -- ASGI wrappers ----------------------------------------------------------------------------------
class _BodyLimit:
    """413 for a body over max_bytes: by Content-Length before reading, else while buffering it."""

    def __init__(self, app: Any, max_bytes: int = 20 * 1024 * 1024):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # later: wait for the disconnect, as Starlette expects
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        mb = self.max_bytes / 1024 / 1024
        response = JSONResponse(
            error_body(f"request body over {mb:g} MB (--max-request-mb)", "invalid_request_error", "request_too_large"),
            status_code=413,
            headers={"Connection": "close"},
        )
        await response({"type": "http"}, _never, send)


async def _never() -> dict:
    await asyncio.Event().wait()
    return {}


class _RequestLog:
    """One JSON line per request on the log stream: who (key id), what, status, latency, tokens, cached."""

    def __init__(self, app: Any, stream: TextIO | None = None):
        self.app = app
        self.stream = stream

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        log: dict[str, Any] = {"key": None}
        scope.setdefault("state", {})["log"] = log
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            line = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "key": log.pop("key"),
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "prompt_tokens": log.pop("prompt_tokens", None),
                "completion_tokens": log.pop("completion_tokens", None),
                "cached": log.pop("cached", False),
                **log,
            }
            stream = self.stream or sys.stderr
            stream.write(json.dumps(line, separators=(",", ":")) + "\n")
            stream.flush()
