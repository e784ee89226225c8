"""An OpenAI-compatible chat-completions server (vLLM, SGLang, `glmv serve`) as a glmv backend.

Torch-free: httpx only. Requests of a batch go out concurrently; several base URLs share the
load (least in flight first), a failing one is marked down for a while and its requests go to the
next; connection errors, timeouts, 429 and 5xx are retried with exponential backoff and jitter.
A request that finally fails is a Generation with finish_reason "error", never an exception.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import io
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import httpx

from glmv_cli.engine.base import Backend, Generation, Request
from glmv_cli.engine.text import AnswerFilter, split_thinking
from glmv_cli.errors import ModelLoadError, UsageError

DEFAULT_CONCURRENCY = 32  # requests in flight: enough to keep a vLLM server's continuous batching full
DEFAULT_TIMEOUT_S = 600.0
RETRIES = 4  # retries after the first try, on connection errors, timeouts, 429 and 5xx
BACKOFF_S = 0.5  # first retry waits about this long, doubling each time (with jitter)
MAX_BACKOFF_S = 30.0
DOWN_S = 30.0  # a base URL that failed is skipped this long (unless every one is down)
MAX_RETRY_AFTER_S = 120.0
_END = object()


class _Retryable(Exception):
    """A failure worth another try: `endpoint` says the server itself is in trouble (fail over)."""

    def __init__(self, message: str, *, endpoint: bool, retry_after: float | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.retry_after = retry_after


class _Refused(Exception):
    """The server answered with an error that another try would not change (4xx other than 429)."""


def split_base_urls(values: Sequence[str] | str | None) -> list[str]:
    """Base URLs from repeated options or a comma-separated value; `/v1` added when no path is given."""
    if isinstance(values, str):
        values = [values]
    urls = []
    for value in values or []:
        for part in value.replace(" ", ",").split(","):
            url = part.strip().rstrip("/")
            if not url:
                continue
            if not re.match(r"^https?://", url):
                raise UsageError(f"--base-url {url!r} is not an http(s) URL", "e.g. http://127.0.0.1:8000/v1")
            if httpx.URL(url).path in ("", "/"):
                url += "/v1"
            if url not in urls:
                urls.append(url)
    return urls


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0


class _Endpoints:
    """Picks the base URL for the next try: up ones first, least in flight, ties in rotation."""

    def __init__(self, urls: list[str], down_s: float):
        self.all = [_Endpoint(u) for u in urls]
        self.down_s = down_s
        self._turn = 0
        self._lock = threading.Lock()

    def acquire(self, avoid: set[str]) -> _Endpoint:
        with self._lock:
            now = time.monotonic()
            self._turn += 1
            order = self.all[self._turn % len(self.all) :] + self.all[: self._turn % len(self.all)]
            up = [e for e in order if e.down_until <= now]
            fresh = [e for e in up if e.url not in avoid] or up
            # Every one down: probe the one that comes back first rather than give up.
            pick = min(fresh, key=lambda e: e.in_flight) if fresh else min(order, key=lambda e: e.down_until)
            pick.in_flight += 1
            return pick

    def release(self, endpoint: _Endpoint, *, ok: bool | None, down_for: float | None = None) -> None:
        """ok True: healthy again; False: mark down (longer each time in a row); None: no news."""
        with self._lock:
            endpoint.in_flight -= 1
            if ok:
                endpoint.failures, endpoint.down_until = 0, 0.0
            elif ok is False:
                endpoint.failures += 1
                span = down_for if down_for is not None else self.down_s * min(8, 2 ** (endpoint.failures - 1))
                endpoint.down_until = max(endpoint.down_until, time.monotonic() + span)

    def another_up(self, than: str) -> bool:
        now = time.monotonic()
        return any(e.url != than and e.down_until <= now for e in self.all)


class RemoteBackend(Backend):
    """Answers requests through /v1/chat/completions on one or more OpenAI-compatible servers."""

    accepts_encoded_images = True
    takes_requests_as_ready = True

    def __init__(
        self,
        base_urls: Sequence[str] | str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        concurrency: int | None = None,
        request_timeout: float | None = None,
        retries: int = RETRIES,
        backoff_s: float = BACKOFF_S,
        down_s: float = DOWN_S,
    ):
        urls = split_base_urls(base_urls)
        if not urls:
            raise UsageError("--backend openai needs --base-url", "or set GLMV_BASE_URL (comma-separated)")
        self.base_urls = urls
        self.concurrency = concurrency or DEFAULT_CONCURRENCY
        self.timeout = request_timeout or DEFAULT_TIMEOUT_S
        self.retries, self.backoff_s = retries, backoff_s
        self._endpoints = _Endpoints(urls, down_s)
        self._model = model
        self._identity: dict[str, Any] | None = None
        self._identity_error: ModelLoadError | None = None
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        per_host = self.concurrency + 1
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(max_connections=per_host * len(urls), max_keepalive_connections=per_host * len(urls)),
        )
        self._pool: ThreadPoolExecutor | None = None

    # -- identity --------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self.identity()["model"]

    def identity(self) -> dict[str, Any]:
        """The served model as /v1/models describes it; base URLs left out, so replicas share a cache.

        A failed lookup is asked again by the next caller, except once the backend is closed (the job
        stopped on that error): loader threads still asking then get the same error, not a closed client."""
        with self._lock:
            if self._identity is None and self._identity_error is not None and self._client.is_closed:
                raise self._identity_error
            if self._identity is None:
                try:
                    self._identity = self._lookup_model()
                except ModelLoadError as exc:
                    self._identity_error = exc
                    raise
            return self._identity

    def _lookup_model(self) -> dict[str, Any]:
        problems = []
        for url in self.base_urls:
            try:
                response = self._client.get(f"{url}/models", timeout=min(self.timeout, 30.0))
                response.raise_for_status()
                models = response.json().get("data") or []
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                problems.append(f"{url}: {_describe(exc)}")
                continue
            if not models:
                problems.append(f"{url}: serves no model")
                continue
            name = self._model or models[0].get("id")
            found = next((m for m in models if m.get("id") == name), None)
            if found is None:
                served = ", ".join(str(m.get("id")) for m in models)
                raise ModelLoadError(
                    f"{url} does not serve {name!r}",
                    f"it serves: {served}; pick one with --remote-model",
                    code="remote_unavailable",
                )
            keys = ("root", "max_model_len", "owned_by")
            return {"backend": "openai", "model": name, **{k: found.get(k) for k in keys}}
        raise ModelLoadError(
            "no --base-url server answered /models: " + "; ".join(problems),
            "is the server running? check --base-url (it ends in /v1)",
            code="remote_unavailable",
        )

    # -- sizing ----------------------------------------------------------------------------------
    def default_batch_size(self) -> int:
        return self.concurrency

    def held_bytes(self, request: Request) -> int:
        return sum(len(u) for u in request.prepared["images"]) if _is_ours(request.prepared) else 0

    def prepare(self, request: Request) -> Request:
        """The page images as data URLs: a file's own PNG or JPEG bytes where the image is exactly their
        decoding, a lossless PNG of the pixels otherwise (either way the server sees the pixels glmv would)."""
        started = time.perf_counter()
        encoded = request.encoded or [None] * len(request.images)
        urls = [_data_url(image, raw) for image, raw in zip(request.images, encoded, strict=True)]
        prepared = {"backend": "openai", "images": urls, "preprocess_s": time.perf_counter() - started}
        return request.model_copy(update={"prepared": prepared})

    # -- generation ------------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        if not requests:
            return []
        started = time.perf_counter()
        gens = list(self._executor().map(self._answer, requests))
        for gen in gens:
            gen.batch_size = len(requests)
        if len(requests) > 1:  # like a local batch: the time the whole batch took
            elapsed = time.perf_counter() - started
            for gen in gens:
                gen.generate_s = elapsed
        return gens

    def generate_stream(
        self, requests: Iterable[Request | None], *, max_rows: int | None = None
    ) -> Iterator[Generation]:
        """Keep up to max_rows (default: the concurrency) requests in flight; yield each answer when it is done.

        `None` from `requests` means none is ready yet. Nothing waits for a batch's slowest answer.
        """
        limit = max_rows or self.concurrency
        source = iter(requests)
        running: set[Future[Generation]] = set()
        exhausted = False
        try:
            while not exhausted or running:
                while not exhausted and len(running) < limit:
                    request = next(source, _END)
                    if request is _END:
                        exhausted = True
                    elif request is None:
                        break
                    else:
                        running.add(self._executor().submit(self._answer, request))
                if not running:
                    if not exhausted:
                        time.sleep(0.005)  # nothing ready and nothing in flight
                    continue
                # With every slot taken nothing new can go out before an answer comes back: sleep until one does
                # (polling every 20 ms through a 4 s run of 32 requests took 220 wake-ups over all 32 futures).
                full = exhausted or len(running) >= limit
                done, running = wait(running, timeout=None if full else 0.02, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in running:
                future.cancel()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="glmv-remote")
                start_threads(self._pool, self.concurrency)
            return self._pool

    def _answer(self, request: Request) -> Generation:
        try:
            body, preprocess_s = self.request_body(request)
            started = time.perf_counter()
            reply = self._send(body, lambda response: response.json())
            elapsed = time.perf_counter() - started
            return self.generation(request, reply, preprocess_s, elapsed)
        except Exception as exc:  # noqa: BLE001 - one request's failure is its Generation, never the batch's
            return Generation(finish_reason="error", error=_describe(exc), error_code="remote_failed", tag=request.tag)

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        """Stream one answer over server-sent events; a retry happens only before any text is shown."""
        self.identity()  # no server or no such model: the caller's error, not this answer's
        try:
            body, preprocess_s = self.request_body(request)
            body.update(stream=True, stream_options={"include_usage": True})
            started = time.perf_counter()
            state = _StreamState(request, on_text, started)
            self._send(body, state.consume, stream=True, may_retry=lambda: state.first is None)
            return state.generation(preprocess_s)
        except Exception as exc:  # noqa: BLE001
            return Generation(finish_reason="error", error=_describe(exc), error_code="remote_failed", tag=request.tag)

    def request_body(self, request: Request) -> tuple[dict[str, Any], float]:
        """The /v1/chat/completions body for a request, and its preprocessing seconds (Ray's HTTP stage sends it)."""
        if not _is_ours(request.prepared) or len(request.prepared["images"]) != len(request.images):
            request = self.prepare(request)
        images, preprocess_s = request.prepared["images"], request.prepared["preprocess_s"]
        s = request.settings
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in images]
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = [{"role": "system", "content": request.system}] if request.system else []
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "logprobs": True,  # kept per token; they feed per-field confidence
            "chat_template_kwargs": {"enable_thinking": s.think},
        }
        if s.top_p is not None:
            body["top_p"] = s.top_p
        if s.seed is not None:
            body["seed"] = s.seed
        if request.json_schema is not None:
            name = _schema_name(request.json_schema)
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": request.json_schema, "strict": True},
            }
        if request.assistant_prefix:  # vLLM's way to continue a started answer
            messages.append({"role": "assistant", "content": request.assistant_prefix})
            body.update(add_generation_prompt=False, continue_final_message=True)
        return body, preprocess_s

    def _send(
        self,
        body: dict[str, Any],
        read: Callable[[httpx.Response], Any],
        stream: bool = False,
        may_retry: Callable[[], bool] = lambda: True,
    ) -> Any:
        """POST to /chat/completions with fail-over and retries; returns read(response)."""
        tried: set[str] = set()
        failovers = 0
        attempt = 0
        while True:
            endpoint = self._endpoints.acquire(tried)
            ok: bool | None = None
            down_for = None
            try:
                result = self._post(endpoint.url, body, read, stream)
                ok = True
                return result
            except _Retryable as exc:
                failure = exc
                if exc.endpoint:
                    ok = False
                elif exc.retry_after is not None and self._endpoints.another_up(endpoint.url):
                    ok, down_for = False, exc.retry_after  # busy: send the others elsewhere meanwhile
            finally:
                self._endpoints.release(endpoint, ok=ok, down_for=down_for)
            tried.add(endpoint.url)
            if not may_retry():
                raise RuntimeError(f"{failure} (the answer was cut off)")
            elsewhere = failure.endpoint or down_for is not None  # broken, or busy (429) while others are not
            if elsewhere and failovers < len(self.base_urls) - 1 and self._endpoints.another_up(endpoint.url):
                failovers += 1  # straight to the next server, no wait and no retry spent
                continue
            if attempt >= self.retries:
                raise RuntimeError(f"{failure} (after {attempt + 1 + failovers} tries)")
            wait = failure.retry_after
            if wait is None:
                wait = min(MAX_BACKOFF_S, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            time.sleep(wait)

    def _post(self, url: str, body: dict[str, Any], read: Callable[[httpx.Response], Any], stream: bool) -> Any:
        target = f"{url}/chat/completions"
        try:
            with self._client.stream("POST", target, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response, url)
                if not stream:
                    response.read()
                return read(response)
        except httpx.TimeoutException as exc:
            message = f"{url}: no answer within {self.timeout:g} s ({type(exc).__name__})"
            raise _Retryable(message, endpoint=True) from exc
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            raise _Retryable(f"{url}: {_describe(exc)}", endpoint=True) from exc

    def generation(self, request: Request, reply: dict[str, Any], preprocess_s: float, elapsed: float) -> Generation:
        """The Generation for a server's reply to a request."""
        choice = (reply.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        thinking, text = split_thinking(content)
        usage = reply.get("usage") or {}
        tokens, logprobs, token_bytes = _logprobs(choice.get("logprobs"))
        finish = choice.get("finish_reason")
        return Generation(
            text=text.strip(),
            thinking=reasoning or thinking,
            finish_reason="length" if finish == "length" else ("error" if finish == "abort" else "stop"),
            error="the server aborted the request" if finish == "abort" else None,
            closed_early=finish == "length",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or len(tokens or ())),
            preprocess_s=preprocess_s,
            decode_s=elapsed,  # the server does not split prefill from decode in a plain reply
            generate_s=elapsed,
            token_logprobs=logprobs,
            tokens=tokens,
            token_bytes=token_bytes,
            tag=request.tag,
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


class _StreamState:
    """Reads server-sent chat-completion chunks, shows answer text as it comes, keeps the rest."""

    def __init__(self, request: Request, on_text: Callable[[str], None], started: float):
        self.request, self.on_text, self.started = request, on_text, started
        self.filter = AnswerFilter(thinking=False)
        self.raw: list[str] = []
        self.reasoning: list[str] = []
        self.tokens: list[str] = []
        self.logprobs: list[float] = []
        self.has_logprobs = False
        self.token_bytes: list[bytes] | None = []
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.first: float | None = None
        self.ended = started

    def consume(self, response: httpx.Response) -> None:
        for data in _sse_data(response.iter_lines()):
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            self.usage = chunk.get("usage") or self.usage
            for choice in chunk.get("choices") or []:
                self._choice(choice)
        self.ended = time.perf_counter()
        self._show(self.filter.flush())

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            self.reasoning.append(reasoning)
        piece = delta.get("content")
        if piece:
            if self.first is None:
                self.first = time.perf_counter()
            self.raw.append(piece)
            self._show(self.filter.feed(piece))
        tokens, logprobs, token_bytes = _logprobs(choice.get("logprobs"))
        if tokens is not None:
            self.has_logprobs = True
            self.tokens.extend(tokens)
            self.logprobs.extend(logprobs or [])
            if token_bytes is None or self.token_bytes is None:
                self.token_bytes = None
            else:
                self.token_bytes.extend(token_bytes)
        self.finish = choice.get("finish_reason") or self.finish

    def _show(self, text: str) -> None:
        if text:
            self.on_text(text)

    def generation(self, preprocess_s: float) -> Generation:
        thinking, text = split_thinking("".join(self.raw))
        finish = self.finish
        return Generation(
            text=text.strip(),
            thinking="".join(self.reasoning) or thinking,
            finish_reason="length" if finish == "length" else ("error" if finish == "abort" else "stop"),
            error="the server aborted the request" if finish == "abort" else None,
            closed_early=finish == "length",
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
            output_tokens=int(self.usage.get("completion_tokens") or len(self.tokens)),
            preprocess_s=preprocess_s,
            ttft_s=None if self.first is None else self.first - self.started + preprocess_s,
            decode_s=0.0 if self.first is None else self.ended - self.first,
            generate_s=self.ended - self.started + preprocess_s,
            token_logprobs=self.logprobs if self.has_logprobs else None,
            tokens=self.tokens if self.has_logprobs else None,
            token_bytes=self.token_bytes if self.has_logprobs else None,
            tag=self.request.tag,
        )


def start_threads(pool: ThreadPoolExecutor, count: int) -> None:
    """Start all of a pool's threads now, before any request is out.

    A pool starts a thread at a submit, and Thread.start() waits until the new thread runs. Once the
    server is busy on the same cores (a local vLLM), that wait took up to a second per thread: 32
    requests then went out over 4 s instead of at once, and the server batched them badly.
    """
    ready = threading.Barrier(count + 1)
    for _ in range(count):
        pool.submit(ready.wait, 30)  # each blocks its thread, so the next submit starts another
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(30)


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The data fields of server-sent events (one JSON chunk each)."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def _raise_for(response: httpx.Response, url: str) -> None:
    status = response.status_code
    detail = _error_detail(response)
    message = f"{url}: HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429:
        raise _Retryable(message, endpoint=False, retry_after=_retry_after(response.headers.get("retry-after")))
    if status >= 500 or status == 408:
        raise _Retryable(message, endpoint=True, retry_after=_retry_after(response.headers.get("retry-after")))
    raise _Refused(message)


def _error_detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        text = error.get("message") or error.get("detail") or json.dumps(error) if isinstance(error, dict) else error
    except ValueError:
        text = response.text
    return " ".join(str(text).split())[:300]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def _logprobs(block: dict[str, Any] | None) -> tuple[list[str] | None, list[float] | None, list[bytes] | None]:
    """(tokens, log-probabilities, exact bytes when every token has them) of the chosen tokens; Nones without."""
    content = (block or {}).get("content")
    if not content:
        return None, None, None
    tokens = [str(t.get("token", "")) for t in content]
    logprobs = [float(t.get("logprob", 0.0)) for t in content]
    raw = [t.get("bytes") for t in content]
    return tokens, logprobs, [bytes(b) for b in raw] if all(isinstance(b, list) for b in raw) else None


def _data_url(image: Any, encoded: bytes | None = None) -> str:
    for magic, mime in ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg")):
        if encoded and encoded.startswith(magic):
            return f"data:{mime};base64," + base64.b64encode(encoded).decode("ascii")
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; the bytes cross a network, not a disk
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _schema_name(schema: dict[str, Any]) -> str:
    """OpenAI's json_schema name: letters, digits, _ and -, at most 64."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "answer"))
    return name[:64] or "answer"


def _is_ours(prepared: Any) -> bool:
    return isinstance(prepared, dict) and prepared.get("backend") == "openai"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if text and isinstance(exc, RuntimeError | _Refused | _Retryable) else f"{type(exc).__name__}: {text}"
