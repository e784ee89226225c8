"""glmv serve: real HTTP on 127.0.0.1 with the official openai client against the tiny checkpoint, one
server for the module; the batcher and the rate limiter also without HTTP."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from glmv_cli.engine.base import Backend, Generation, Request
from glmv_cli.serve.auth import KeyRing, RateLimiter, key_id, read_keys
from glmv_cli.serve.batcher import Batcher, StreamCancelled
from tests.conftest import SAMPLES, glmv_serve

# One worker runs this module under pytest-xdist (make test: --dist loadgroup): one server for all of
# it, and the log test sees the statuses the other tests caused.
pytestmark = pytest.mark.xdist_group("glmv-serve")

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

KEY, BATCH_KEY, RATE_KEY, EXTRACT_KEY = "sk-test-main", "sk-test-batch", "sk-test-rate", "sk-test-extract"
LOG_KEY = "sk-test-log"  # the log test's own key, so its 429 leaves the rate-limit test's budget alone
CACHE_KEY = "sk-test-cache"  # the cache test's own key: its log lines, not an earlier test's late ones
TOOL_KEY = "sk-test-tools"  # the tool tests' own key, so the main key stays under the rate limit
RATE_LIMIT = 20  # per minute per key; the main key's tests stay under it


@dataclass
class Server:
    url: str
    log: Path

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def log_until(self, done: Callable[[list[dict]], bool], timeout: float = 10) -> list[dict]:
        """The log once `done` holds: a request's line is written after its response has gone out."""
        deadline = time.monotonic() + timeout
        while not done(lines := self.log_lines()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return lines


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory) -> Iterator[Server]:
    keys = (KEY, BATCH_KEY, RATE_KEY, EXTRACT_KEY, LOG_KEY, CACHE_KEY, TOOL_KEY)
    args = [arg for key in keys for arg in ("--api-key", key)]
    args += ["--rate-limit", str(RATE_LIMIT)]
    # A long batch window, so requests sent together on a busy 2-core machine reliably share a batch.
    args += ["--max-request-mb", "1", "--batch-wait-ms", "300", "--max-batch", "4", "--allow-http"]
    with glmv_serve(tiny_model, tmp_path_factory.mktemp("serve"), *args, timeout=90) as (url, log):
        yield Server(url, log)


def _client(server: Server, key: str = KEY):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def _png(size=(64, 48), color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _user(text: str, *urls: str) -> list[dict]:
    parts = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts}]


def _get(server: Server, path: str, key: str | None = KEY) -> tuple[int, Any, dict]:
    """Status, headers (case-insensitive) and JSON body of a GET."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(server.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


# -- over HTTP ----------------------------------------------------------------------------------------
def test_models_lists_the_served_name(server, tiny_model):
    models = _client(server).models.list()
    assert [m.id for m in models.data] == [tiny_model.name]


def test_completion_with_an_image_and_logprobs(server, tiny_model):
    reply = _client(server).chat.completions.create(
        model=tiny_model.name,
        messages=[{"role": "system", "content": "Be brief."}, *_user("What colour is this?", _png())],
        max_tokens=6,
        logprobs=True,
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    tokens = choice.logprobs.content
    assert tokens and all(t.logprob <= 0 and isinstance(t.bytes, list) and t.top_logprobs == [] for t in tokens)
    assert len(tokens) <= reply.usage.completion_tokens


def test_streaming_sends_pieces_then_usage(server, tiny_model):
    stream = _client(server).chat.completions.create(
        model=tiny_model.name,
        messages=_user("Describe the picture.", _png((40, 90), (10, 200, 10))),
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


class Invoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vendor: str = Field(max_length=12)
    total: float = Field(ge=0, le=1000)
    paid: bool


def test_json_schema_answer_parses_and_validates(server, tiny_model):
    schema = Invoice.model_json_schema()
    reply = _client(server).chat.completions.create(
        model=tiny_model.name,
        messages=_user("Extract the invoice.", _png()),
        max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema}},
    )
    Invoice.model_validate_json(reply.choices[0].message.content)
    obj = _client(server).chat.completions.create(
        model=tiny_model.name,
        messages=_user("Any JSON object."),
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


# A tool whose arguments are a boolean and an enum: even random weights finish a call to it.
MARK = {
    "type": "function",
    "function": {
        "name": "mark",
        "description": "Mark the document",
        "parameters": {
            "type": "object",
            "properties": {"paid": {"type": "boolean"}, "kind": {"enum": ["invoice", "receipt"]}},
            "required": ["paid", "kind"],
        },
    },
}
NAMED = {"type": "function", "function": {"name": "mark"}}


def test_a_forced_tool_call_comes_back_as_tool_calls(server, tiny_model):
    reply = _client(server, TOOL_KEY).chat.completions.create(
        model=tiny_model.name, messages=_user("Mark it.", _png()), tools=[MARK], tool_choice=NAMED, max_tokens=60
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "mark" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    assert isinstance(args["paid"], bool) and args["kind"] in ("invoice", "receipt")


def test_a_streamed_tool_call_arrives_as_deltas(server, tiny_model):
    stream = _client(server, TOOL_KEY).chat.completions.create(
        model=tiny_model.name, messages=_user("Mark it."), tools=[MARK], tool_choice="required", max_tokens=60,
        stream=True,
    )  # fmt: skip
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["mark"] and deltas[0].index == 0
    assert set(json.loads(deltas[0].function.arguments)) == {"paid", "kind"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_chat_with_a_tool_result_is_answered(server, tiny_model):
    call = {"id": "call_1", "type": "function", "function": {"name": "mark", "arguments": '{"paid": true}'}}
    messages = [
        *_user("Mark it, then say done.", _png()),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "marked"},
    ]
    reply = _client(server, TOOL_KEY).chat.completions.create(
        model=tiny_model.name, messages=messages, tools=[MARK], tool_choice="none", max_tokens=4
    )
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert not reply.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [MARK], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [MARK], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_400(server, tiny_model, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        _client(server, TOOL_KEY).chat.completions.create(
            model=tiny_model.name, messages=_user("Mark it."), max_tokens=4, **extra
        )
    assert caught.value.body["param"] == param


def test_follow_up_questions_about_one_image_reuse_its_prefill(server, tiny_model):
    image = _png((56, 56), (20, 90, 160))
    before = _get(server, "/metrics", TOOL_KEY)[2]["prefix_cache"]
    client = _client(server, TOOL_KEY)
    for question in ("What colour is it?", "How big is it?"):
        client.chat.completions.create(model=tiny_model.name, messages=_user(question, image), max_tokens=2)
    after = _get(server, "/metrics", TOOL_KEY)[2]["prefix_cache"]
    assert after["hits"] >= before["hits"] + 1 and after["saved_tokens"] > before["saved_tokens"]


def test_identical_greedy_request_is_cached(server, tiny_model):
    def ask():
        return _client(server, CACHE_KEY).chat.completions.create(
            model=tiny_model.name, messages=_user("Cache me.", _png((30, 30))), max_tokens=5, temperature=0
        )

    def answered(lines: list[dict]) -> list[dict]:
        mine = [line for line in lines if line.get("key") == key_id(CACHE_KEY)]
        return [line for line in mine if line["path"] == "/v1/chat/completions" and line["status"] == 200]

    first, second = ask(), ask()
    assert first.choices[0].message.content == second.choices[0].message.content
    asked = answered(server.log_until(lambda lines: len(answered(lines)) >= 2))
    assert sorted(line["cached"] for line in asked) == [False, True], asked
    hit = next(line for line in asked if line["cached"])
    assert hit["completion_tokens"] == second.usage.completion_tokens


def test_concurrent_requests_share_a_batch(server, tiny_model):
    client = _client(server, BATCH_KEY)

    def ask(n: int):
        return client.chat.completions.create(
            model=tiny_model.name, messages=_user(f"Question number {n}?"), max_tokens=4, temperature=0
        )

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(4)))
    assert all(r.choices[0].message.content is not None for r in replies)
    status, _, metrics = _get(server, "/metrics", BATCH_KEY)
    # Continuous batching: "batches" counts answers by the most rows decoding beside them.
    assert status == 200 and metrics["continuous"] and metrics["peak_rows"] > 1, metrics
    assert max(int(size) for size in metrics["batches"]) > 1, metrics

    def answered(lines: list[dict]) -> list[dict]:
        return [line for line in lines if line.get("key") == key_id(BATCH_KEY) and line.get("batch")]

    batched = answered(server.log_until(lambda lines: len(answered(lines)) >= 4))
    assert max(line["batch"] for line in batched) > 1


def test_glmv_extract_remote_backend_against_glmv_serve(server, tmp_path):
    """glmv's own OpenAI client (extract --backend openai) gets schema-valid records from this server."""
    env = {**os.environ, "GLMV_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "glmv_cli", "extract", str(SAMPLES / "receipt-cafe.jpg"), "--no-repair"]
    cmd += ["--schema", "merchant, total float", "--max-tokens", "60"]
    cmd += ["--backend", "openai", "--base-url", f"{server.url}/v1", "--api-key", EXTRACT_KEY]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode in (0, 3), done.stderr  # 3: random weights may fail validation; the record says why
    record = json.loads(done.stdout)
    assert record["status"] in ("ok", "review") or record["error_code"] == "invalid_output", record


def test_missing_or_wrong_key_is_401(server, tiny_model):
    status, _, body = _get(server, "/v1/models", key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key" and body["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(server, "sk-wrong").chat.completions.create(model=tiny_model.name, messages=_user("hi"))
    assert caught.value.status_code == 401
    assert _get(server, "/health", key=None)[0] == 200  # readiness needs no key


def test_rate_limit_is_429_with_retry_after(server):
    for _ in range(RATE_LIMIT + 1):
        status, headers, body = _get(server, "/v1/models", RATE_KEY)
        if status == 429:
            break
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) >= 1


def test_private_image_urls_are_refused(server, tiny_model):
    client = _client(server)
    for url in (f"{server.url}/health", "https://10.0.0.1/invoice.png"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=tiny_model.name, messages=_user("What is this?", url))
        assert "not a public address" in caught.value.message
        assert caught.value.body["code"] == "url_refused"


def test_hostile_images_are_400(server, tiny_model):
    client = _client(server)
    garbage = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    for url, code in ((garbage, "image_corrupt"), (_bomb_png(), "image_too_large"), ("data:,x", "invalid_image_url")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=tiny_model.name, messages=_user("What is this?", url))
        assert caught.value.body["code"] == code


def test_oversized_body_is_413(server, tiny_model):
    big = "data:image/png;base64," + base64.b64encode(os.urandom(1_200_000)).decode()
    with pytest.raises(openai.APIStatusError) as caught:
        _client(server).chat.completions.create(model=tiny_model.name, messages=_user("Too big?", big))
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large"


def test_log_lines_never_hold_keys_or_images(server, tiny_model):
    # Its own requests of every status, so the test holds whichever tests ran before it, on this worker.
    _client(server, LOG_KEY).models.list()  # 200
    assert _get(server, "/v1/models", key=None)[0] == 401
    big = "data:image/png;base64," + base64.b64encode(os.urandom(1_200_000)).decode()
    with pytest.raises(openai.APIStatusError):  # 413
        _client(server, LOG_KEY).chat.completions.create(model=tiny_model.name, messages=_user("big", big))
    with pytest.raises(openai.BadRequestError):  # 400: an image that is not one
        _client(server, LOG_KEY).chat.completions.create(
            model=tiny_model.name, messages=_user("x", "data:image/png;base64,bm90IGFuIGltYWdl")
        )
    statuses = [_get(server, "/v1/models", LOG_KEY)[0] for _ in range(RATE_LIMIT + 1)]
    assert 429 in statuses
    server.log_until(lambda lines: {line["status"] for line in lines} >= {200, 400, 401, 413, 429})
    text = server.log.read_text()
    assert KEY not in text and BATCH_KEY not in text and LOG_KEY not in text and "base64" not in text
    lines = server.log_lines()
    assert {"time", "key", "path", "status", "latency_ms", "prompt_tokens", "completion_tokens", "cached"} <= set(
        lines[-1]
    )
    assert {line["status"] for line in lines} >= {200, 400, 401, 413, 429}


def _bomb_png() -> str:
    """A valid 1x1 PNG whose header claims 60000 x 60000 px: must be refused before decoding."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", 60000, 60000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return "data:image/png;base64," + base64.b64encode(bytes(data)).decode()


# -- without HTTP -------------------------------------------------------------------------------------
class _FakeBackend(Backend):
    """Records each model call; fails if two ever overlap."""

    model_id = "fake"

    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.active = 0
        self.release = threading.Event()

    def _enter(self, kind: str, n: int) -> None:
        self.active += 1
        assert self.active == 1, "two model calls at once"
        self.calls.append((kind, n))

    def generate(self, requests):
        self._enter("generate", len(requests))
        self.active -= 1
        return [Generation(text=r.prompt.upper(), output_tokens=1) for r in requests]

    def stream(self, request, on_text):
        self._enter("stream", 1)
        try:
            self.release.wait(5)
            for piece in ("a", "b"):
                on_text(piece)
            return Generation(text="ab")
        finally:
            self.active -= 1

    def identity(self):
        return {"backend": "fake"}


def test_batcher_gathers_waiting_requests_and_streams_alone():
    backend = _FakeBackend()
    batcher = Batcher(backend, max_batch=4, wait_s=0.05).start()
    try:
        pieces: list[str] = []
        streamed, _ = batcher.submit_stream(Request(prompt="s"), pieces.append)
        while not backend.calls:  # the worker is now busy streaming
            time.sleep(0.005)
        futures = [batcher.submit(Request(prompt=f"q{i}")) for i in range(5)]
        backend.release.set()
        answers = [f.result(5).text for f in futures]
        assert streamed.result(5).text == "ab" and pieces == ["a", "b"]
    finally:
        batcher.close()
    assert answers == ["Q0", "Q1", "Q2", "Q3", "Q4"]
    assert backend.calls == [("stream", 1), ("generate", 4), ("generate", 1)]
    assert batcher.batch_sizes == {4: 1, 1: 1} and batcher.streams == 1


def test_batcher_stops_a_stream_whose_client_left():
    backend = _FakeBackend()
    backend.release.set()
    batcher = Batcher(backend, max_batch=2, wait_s=0.0)
    future, cancel = batcher.submit_stream(Request(prompt="s"), lambda piece: None)
    cancel.set()
    batcher.start()
    try:
        with pytest.raises(StreamCancelled):
            future.result(5)
    finally:
        batcher.close()


def _cpu_ticks(thread: threading.Thread) -> int:
    fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_batcher_continuous_a_request_joins_the_running_batch(tiny_model):
    """With the real tiny model: a short request sent while a long one decodes joins its batch and
    finishes first; a streaming request waits for the running rows; the idle worker blocks."""
    from glmv_cli.engine.base import GenerationSettings
    from glmv_cli.engine.factory import create_backend

    backend = create_backend(str(tiny_model), device="cpu")
    backend.generate([Request(prompt="warm up", settings=GenerationSettings(max_new_tokens=2))])
    # The decode loop pulls the next request once per step. Hold its fourth pull (the long answer a
    # couple of steps in) until the short request is queued: it joins at that step on any machine,
    # with hundreds of the long answer's steps still to go.
    decoding, queued = threading.Event(), threading.Event()
    generate_stream = backend.generate_stream

    def held(requests, *, max_rows=None):
        def pulls():
            source = iter(requests)
            for pull in itertools.count():
                if pull == 3 and not queued.is_set():
                    decoding.set()
                    queued.wait(60)
                try:
                    item = next(source)
                except StopIteration:
                    return
                yield item

        return generate_stream(pulls(), max_rows=max_rows)

    backend.generate_stream = held
    batcher = Batcher(backend, max_batch=4, wait_s=0.0).start()
    assert batcher.continuous
    try:
        long = batcher.submit(Request(prompt="a long answer", settings=GenerationSettings(max_new_tokens=400)))
        assert decoding.wait(60), "the long request never reached the decode loop"
        short = batcher.submit(Request(prompt="short", tag="mine", settings=GenerationSettings(max_new_tokens=2)))
        queued.set()
        first = short.result(60)
        assert not long.done(), "the short request waited for the long one"
        last = long.result(60)
        assert first.tag == "mine" and first.output_tokens == 2 and first.batch_size == 2
        assert last.output_tokens == 400 and last.batch_size == 2 and batcher.peak_rows == 2
        assert batcher.batch_sizes == {2: 2}

        pieces: list[str] = []
        again = batcher.submit(Request(prompt="again", settings=GenerationSettings(max_new_tokens=200)))
        streamed, _ = batcher.submit_stream(
            Request(prompt="s", settings=GenerationSettings(max_new_tokens=3)), pieces.append
        )
        assert streamed.result(60).finish_reason != "error" and again.done() and pieces  # stream after the row
        assert batcher.streams == 1

        if Path("/proc/self/task").is_dir():
            before = _cpu_ticks(batcher._thread)
            time.sleep(0.5)
            assert _cpu_ticks(batcher._thread) - before <= 2, "the idle worker spins"
    finally:
        queued.set()
        batcher.close()
    assert not batcher._thread.is_alive()


class _BrokenStreamBackend(_FakeBackend):
    """generate_stream fails after taking two requests; generate answers (and fails the row "bad")."""

    def generate_stream(self, requests, *, max_rows=None):
        source = iter(requests)
        taken = [r for r in (next(source) for _ in range(2)) if r is not None]
        assert taken
        raise RuntimeError("the stream broke")
        yield  # a generator

    def generate(self, requests):
        gens = super().generate(requests)
        return [
            Generation(finish_reason="error", error="bad row") if r.prompt == "bad" else g
            for r, g in zip(requests, gens, strict=True)
        ]


def test_batcher_stream_failure_falls_back_to_generate():
    backend = _BrokenStreamBackend()
    batcher = Batcher(backend, max_batch=4, wait_s=0.2)
    futures = [batcher.submit(Request(prompt=p)) for p in ("ok", "bad", "later")]
    batcher.start()
    try:
        answers = [f.result(5) for f in futures]
    finally:
        batcher.close()
    assert [a.text for a in answers] == ["OK", "", "LATER"] and answers[1].finish_reason == "error"
    assert not batcher.continuous and backend.calls == [("generate", 2), ("generate", 1)]


def test_rate_limiter_token_bucket():
    now = [100.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.acquire("k")
    assert wait == pytest.approx(20.0) and RateLimiter.retry_after(wait) == "20"
    assert limiter.acquire("other") == 0.0  # buckets are per key
    now[0] += 20.0
    assert limiter.acquire("k") == 0.0 and limiter.acquire("k") > 0
    assert RateLimiter(0).acquire("k") == 0.0  # 0: no limit


def test_keys_are_checked_and_read(tmp_path):
    ring = KeyRing(["alpha", "beta"])
    assert ring.check("Bearer beta") == key_id("beta") and ring.check("bearer alpha") == key_id("alpha")
    assert ring.check("Bearer gamma") is None and ring.check(None) is None and ring.check("Basic alpha") is None
    assert KeyRing([]).open and not ring.open
    assert "alpha" not in key_id("alpha")
    keys = tmp_path / "keys"
    keys.write_text("# team keys\none\n\ntwo\n")
    assert read_keys(["zero"], keys, "three, four five") == ["zero", "one", "two", "three", "four", "five"]


def test_rate_limiter_drops_buckets_once_full_and_idle():
    """An open server keys buckets by client address: refilled ones go, so the table stays bounded."""
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one token a second
    for i in range(3000):
        limiter.acquire(f"10.0.{i // 256}.{i % 256}")
        now[0] += 0.01  # 30 s for all 3,000
    assert len(limiter) < 3000  # sweeps ran as the table grew
    limiter.acquire("busy")
    assert limiter.acquire("busy") == 0.0  # a bucket in use keeps its state...
    now[0] += 120  # ...and two idle minutes refill every bucket
    for i in range(limiter.SWEEP_MIN):
        limiter.acquire(f"new-{i}")
    assert len(limiter) <= limiter.SWEEP_MIN + 1  # the old addresses were dropped
