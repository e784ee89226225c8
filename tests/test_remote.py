"""The OpenAI-compatible backend against real HTTP on 127.0.0.1: a minimal chat-completions server
runs in a thread of the test (no mocks of the backend), and `glmv` runs in subprocesses."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from glmv_cli.engine.base import GenerationSettings, Request
from glmv_cli.engine.remote import RemoteBackend, split_base_urls
from glmv_cli.errors import ModelLoadError
from tests.conftest import ROOT, SAMPLES, QuietHTTPServer, free_port, glmv_serve

ANSWER = '{"vendor":"ACME","total":12.5}'
HEAVY = ("torch", "transformers")


class FakeOpenAI:
    """An OpenAI-shaped server: /v1/models and /v1/chat/completions (plain and SSE).

    `script` holds what the next chat requests get, in order: an HTTP status (a 429 says Retry-After:
    `retry_after` seconds, 1 unless set), ("sleep", seconds), ("reply", overrides of the completion)
    or a callable(body) -> one of those (None: the default answer, once the callable returns).
    Once it is empty every request gets the default answer.
    """

    def __init__(self, *, model: str = "glmv-test", answer: str = ANSWER, logprobs: bool = True):
        self.model, self.answer, self.logprobs = model, answer, logprobs
        self.script: list[Any] = []
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.peak = 0
        self.retry_after = 1
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    return self._json(404, {"error": {"message": "not found"}})
                card = {"id": fake.model, "object": "model", "owned_by": "vllm", "root": "/models/tiny"}
                self._json(200, {"object": "list", "data": [{**card, "max_model_len": 16384}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    fake.headers.append(dict(self.headers))
                    step = fake.script.pop(0) if fake.script else None
                    fake.in_flight += 1
                    fake.peak = max(fake.peak, fake.in_flight)
                try:
                    self._answer(body, step(body) if callable(step) else step)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _answer(self, body: dict[str, Any], step: Any) -> None:
                extra: dict[str, Any] = {}
                if isinstance(step, int):
                    headers = {"Retry-After": str(fake.retry_after)} if step == 429 else {}
                    return self._json(step, {"error": {"message": f"status {step} from the test"}}, headers)
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                elif isinstance(step, tuple) and step[0] == "reply":
                    extra = step[1]
                if body.get("stream"):
                    return self._stream(extra)
                self._json(200, fake.completion(**extra))

            def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, extra: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                text = extra.get("content", fake.answer)
                for i in range(0, len(text), 4):
                    piece = text[i : i + 4]
                    lp = {"content": [{"token": piece, "logprob": -0.25}]} if fake.logprobs else None
                    chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "logprobs": lp}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                end = {"choices": [{"index": 0, "delta": {}, "finish_reason": extra.get("finish_reason", "stop")}]}
                usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": -(-len(text) // 4)}}
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
                self.close_connection = True

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def completion(self, content: str | None = None, finish_reason: str = "stop") -> dict[str, Any]:
        text = self.answer if content is None else content
        pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
        logprobs = {"content": [{"token": p, "logprob": -0.5, "bytes": list(p.encode())} for p in pieces]}
        return {
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs if self.logprobs else None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": len(pieces)},
        }

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    fake = FakeOpenAI()
    yield fake
    fake.close()


def closed_port_url() -> str:
    """A base URL nobody listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def request(**settings: Any) -> Request:
    schema = {"title": "inline model", "type": "object", "properties": {"vendor": {"type": "string"}}}
    return Request(
        images=[Image.new("RGB", (40, 30), (200, 10, 10))],
        prompt="Extract the fields.",
        system="You read documents.",
        json_schema=schema,
        settings=GenerationSettings(**{"max_new_tokens": 64, **settings}),
        tag="doc-1",
    )


def backend(*urls: str, **options: Any) -> RemoteBackend:
    return RemoteBackend(list(urls), **{"backoff_s": 0.01, "request_timeout": 5.0, **options})


# -- the request and the answer ------------------------------------------------------------------


def test_request_body_carries_images_schema_thinking_off_and_logprobs(server):
    remote = backend(server.url, api_key="K")
    req = remote.prepare(request(seed=3, top_p=0.9))
    assert remote.held_bytes(req) > 0
    gen = remote.generate([req])[0]
    body, headers = server.bodies[0], server.headers[0]
    assert headers["Authorization"] == "Bearer K"
    assert body["model"] == "glmv-test" and body["max_tokens"] == 64 and body["temperature"] == 0.0
    assert body["seed"] == 3 and body["top_p"] == 0.9 and body["logprobs"] is True
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"][0] == {"role": "system", "content": "You read documents."}
    image_part, text_part = body["messages"][1]["content"]
    assert text_part == {"type": "text", "text": "Extract the fields."}
    prefix, _, data = image_part["image_url"]["url"].partition(",")
    assert prefix == "data:image/png;base64"
    decoded = Image.open(io.BytesIO(base64.b64decode(data)))
    assert decoded.size == (40, 30) and decoded.getpixel((0, 0)) == (200, 10, 10)  # lossless
    rf = body["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["strict"] is True
    assert rf["json_schema"]["name"] == "inline_model" and rf["json_schema"]["schema"]["type"] == "object"
    assert gen.text == ANSWER and gen.finish_reason == "stop" and gen.error is None and gen.tag == "doc-1"
    assert "".join(gen.tokens) == ANSWER and gen.token_logprobs == [-0.5] * len(gen.tokens)
    assert b"".join(gen.token_bytes) == ANSWER.encode()
    assert gen.prompt_tokens == 11 and gen.output_tokens == len(gen.tokens)


def test_thinking_on_is_asked_for(server):
    backend(server.url).generate([request(think=True)])
    assert server.bodies[0]["chat_template_kwargs"] == {"enable_thinking": True}


def test_length_is_closed_early_and_missing_logprobs_stay_none(server):
    server.logprobs = False
    server.script = [("reply", {"content": '{"vendor":"AC', "finish_reason": "length"})]
    gen = backend(server.url).generate([request()])[0]
    assert gen.finish_reason == "length" and gen.closed_early and gen.error is None
    assert gen.token_logprobs is None and gen.tokens is None


def test_a_batch_is_sent_concurrently(server):
    four = threading.Barrier(4)

    def together(body: dict[str, Any]) -> None:
        """Hold each request until four are in flight at once (sent one at a time, they never are)."""
        with contextlib.suppress(threading.BrokenBarrierError):
            four.wait(3)  # under the client's 5 s request timeout; a broken barrier fails the peak check

    server.script = [together] * 8
    remote = backend(server.url, concurrency=8)
    assert remote.default_batch_size() == 8
    gens = remote.generate([request() for _ in range(8)])
    assert server.peak >= 4 and all(g.text == ANSWER and g.batch_size == 8 for g in gens)
    # The pool's threads were all started before the first request went out (a thread started while a
    # local server keeps the cores busy took up to a second to run, and requests then trickled out).
    assert len(backend(server.url, concurrency=5)._executor()._threads) == 5


def test_the_stream_keeps_requests_in_flight_and_hands_each_answer_out_when_done(server):
    others_out = threading.Event()

    def hold_the_first(body: dict[str, Any]) -> None:
        """The first request is answered only once the other five are handed out (or after 4 s)."""
        if "Hold this one." in json.dumps(body):
            others_out.wait(4)  # under the client's 5 s request timeout

    server.script = [hold_the_first] * 6
    remote = backend(server.url, concurrency=4)
    feed = [request() for _ in range(6)]
    for i, req in enumerate(feed):
        req.tag = i
    feed[0].prompt = "Hold this one."
    seen = []
    try:
        for gen in remote.generate_stream(iter([feed[0], None, *feed[1:]]), max_rows=3):
            seen.append(gen.tag)
            assert gen.text == ANSWER
            if len(seen) == 5:
                others_out.set()
    finally:
        others_out.set()
    # The others went out while the first was held: none of them waited for it.
    assert sorted(seen) == list(range(6)) and seen[-1] == 0 and server.peak <= 3


# -- retries, fail-over, time-outs -----------------------------------------------------------------


def test_429_honours_retry_after_then_5xx_is_retried(server):
    server.script = [429, 503]
    started = time.perf_counter()
    gen = backend(server.url).generate([request()])[0]
    assert gen.text == ANSWER and len(server.bodies) == 3
    assert time.perf_counter() - started >= 1.0  # Retry-After: 1


def test_a_busy_server_sends_the_request_to_another_at_once(server):
    busy = FakeOpenAI()
    try:
        busy.script, busy.retry_after = [429], 30  # Retry-After: 30, but the other server is free
        remote = backend(busy.url, server.url)
        remote._endpoints._turn = -1  # the busy one is asked first
        started = time.perf_counter()
        gen = remote.generate([request()])[0]
        assert gen.text == ANSWER and len(busy.bodies) == len(server.bodies) == 1
        assert time.perf_counter() - started < 10  # not the 30 s Retry-After
    finally:
        busy.close()


def test_a_request_that_keeps_failing_becomes_an_error_generation(server):
    server.script = [500] * 3
    gen = backend(server.url, retries=2).generate([request()])[0]
    assert gen.finish_reason == "error" and "HTTP 500" in gen.error and "3 tries" in gen.error
    assert len(server.bodies) == 3 and "\n" not in gen.error


def test_a_client_error_is_not_retried(server):
    server.script = [400]
    gen = backend(server.url).generate([request()])[0]
    assert gen.finish_reason == "error" and "HTTP 400: status 400 from the test" in gen.error
    assert len(server.bodies) == 1


def test_a_dead_base_url_is_failed_over_and_marked_down(server):
    dead = closed_port_url()
    remote = backend(dead, server.url, concurrency=4)
    gens = remote.generate([request() for _ in range(6)])
    assert all(g.text == ANSWER for g in gens), [g.error for g in gens]
    assert len(server.bodies) == 6
    assert [e.down_until > time.monotonic() for e in remote._endpoints.all] == [True, False]


def test_every_base_url_dead_is_an_error_generation_not_an_exception(server):
    remote = backend(closed_port_url(), closed_port_url(), retries=1)
    remote._identity = {"backend": "openai", "model": "m"}  # skip the lookup: the requests themselves fail
    gen = remote.generate([request()])[0]
    assert gen.finish_reason == "error" and "ConnectError" in gen.error


def test_per_request_timeout_then_the_other_server_answers(server):
    slow = FakeOpenAI()
    try:
        slow.script = [("sleep", 3)]
        started = time.perf_counter()
        alone = backend(slow.url, request_timeout=0.5, retries=0).generate([request()])[0]
        assert alone.finish_reason == "error" and "no answer within 0.5 s" in alone.error
        assert time.perf_counter() - started < 2.5
        slow.script = [("sleep", 3)]
        remote = backend(slow.url, server.url, request_timeout=0.5, retries=0)
        remote._endpoints._turn = -1  # the slow one is asked first
        gen = remote.generate([request()])[0]
        assert gen.text == ANSWER and len(server.bodies) == 1
    finally:
        slow.close()


# -- identity, streaming, URLs -------------------------------------------------------------------


def test_identity_is_the_served_model_not_the_url(server):
    other = FakeOpenAI()
    try:
        one, two = backend(server.url), backend(other.url)
        ident = one.identity()
        assert ident == {
            "backend": "openai",
            "model": "glmv-test",
            "root": "/models/tiny",
            "max_model_len": 16384,
            "owned_by": "vllm",
        }
        assert two.identity() == ident and one.model_id == "glmv-test"
    finally:
        other.close()
    with pytest.raises(ModelLoadError, match="does not serve 'other'"):
        backend(server.url, model="other").identity()
    with pytest.raises(ModelLoadError, match="no --base-url server answered") as info:
        backend(closed_port_url()).identity()
    assert info.value.code == "remote_unavailable"


def test_stream_shows_text_as_it_comes_and_keeps_logprobs(server):
    pieces: list[str] = []
    gen = backend(server.url).stream(request(), pieces.append)
    assert server.bodies[0]["stream"] is True and len(pieces) > 2 and "".join(pieces) == ANSWER
    assert gen.text == ANSWER and gen.ttft_s is not None and gen.output_tokens == len(gen.tokens)
    assert gen.token_logprobs == [-0.25] * len(gen.tokens) and gen.token_bytes is None  # no bytes sent


def test_a_failed_lookup_is_the_same_error_after_close():
    """The job stops on the lookup's error and closes the backend; a loader thread that asks then gets that
    error again (a fatal one it hands back), not httpx's closed-client RuntimeError."""
    remote = backend(closed_port_url())
    with pytest.raises(ModelLoadError, match="no --base-url server answered") as first:
        remote.identity()
    remote.close()
    with pytest.raises(ModelLoadError) as again:
        _ = remote.model_id
    assert again.value is first.value


def test_base_urls_split_on_commas_and_get_v1():
    urls = split_base_urls(["http://a:1/v1/, http://b:2", "https://c/api/v1"])
    assert urls == ["http://a:1/v1", "http://b:2/v1", "https://c/api/v1"]


# -- glmv itself, in subprocesses ----------------------------------------------------------------

# Records every torch / transformers module the process imported, at exit, in the file GLMV_TEST_MODULES names.
HOOK = """
import atexit, os, sys
def _dump():
    with open(os.environ["GLMV_TEST_MODULES"], "w") as f:
        f.write("\\n".join(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
atexit.register(_dump)
"""

# Makes torch and transformers impossible to import, as in an install without the `local` extra.
NO_TORCH = """
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Missing())
"""


def glmv(
    tmp_path: Path, *args: str, prelude: str = HOOK, timeout: float = 60, **env_vars: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run glmv with a prelude (sitecustomize); returns the run and the heavy modules it imported."""
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(prelude)
    modules = tmp_path / "modules.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]),
        "GLMV_TEST_MODULES": str(modules),
    }
    env.pop("GLMV_BASE_URL", None)
    env.update(env_vars)
    cmd = [sys.executable, "-m", "glmv_cli", *args]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)
    return run, [m for m in (modules.read_text().split("\n") if modules.exists() else []) if m]


SAMPLE_FILES = [str(SAMPLES / n) for n in ("invoice-acme.png", "receipt-cafe.jpg", "screenshot-login.png")]


def test_extract_over_the_openai_backend_writes_every_record_and_never_imports_torch(server, tmp_path):
    args = ["extract", *SAMPLE_FILES, "--schema", "vendor, total float", "--backend", "openai", "--no-cache"]
    run, heavy = glmv(tmp_path, *args, "--base-url", server.url, "--api-key", "K", "--concurrency", "2")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(r["file"]).name for r in records] == [Path(f).name for f in SAMPLE_FILES]
    assert all(r["status"] == "ok" and r["data"] == {"vendor": "ACME", "total": 12.5} for r in records)
    # the server's log-probabilities (-0.5 per token) became per-value confidence
    assert all(r.get("confidence") == {"vendor": 0.6065, "total": 0.6065} for r in records), records[0]
    assert {r["model"] for r in records} == {"glmv-test"}
    assert len(server.bodies) == 3 and heavy == []
    # upright RGB PNG and JPEG files go to the server as they are, not decoded and encoded again
    sent = sorted(
        base64.b64decode(b["messages"][1]["content"][0]["image_url"]["url"].split(",", 1)[1]) for b in server.bodies
    )
    assert sent == sorted(Path(f).read_bytes() for f in SAMPLE_FILES)


def test_extract_sends_each_document_as_soon_as_it_is_read(server, monkeypatch):
    """A server batches as requests arrive: the first document goes out before the next is read (it waited
    for a batch of them: 32 bench pages went out 0.08 s after the start instead of 0.02 s, on a server idle)."""
    import glmv_cli.extraction.stages as stages
    from glmv_cli import Glmv

    first_sent, read = threading.Event(), stages.read_file
    server.script = [lambda body: first_sent.set()]
    waited: list[bool] = []

    def read_after_the_first_is_out(path: Path, **kwargs: Any) -> bytes:
        if path.name != Path(SAMPLE_FILES[0]).name:
            waited.append(first_sent.wait(10))  # the old way: False after 10 s, the documents still correct
        return read(path, **kwargs)

    monkeypatch.setattr(stages, "read_file", read_after_the_first_is_out)
    g = Glmv(backend="openai", base_url=server.url, concurrency=4, cache=False)
    records = list(g.extract(SAMPLE_FILES, schema="vendor, total float"))
    assert [r.status for r in records] == ["ok"] * 3
    assert waited == [True, True]


def test_extract_exit_codes_when_the_server_fails(server, tmp_path):
    args = ["extract", *SAMPLE_FILES[:2], "--schema", "vendor, total float", "--backend", "openai", "--no-cache"]
    server.script = [400, 400]  # refused documents: failed records, exit 3
    run, _ = glmv(tmp_path, *args, "--base-url", server.url)
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert run.returncode == 3 and [r["status"] for r in records] == ["failed", "failed"]
    assert all("HTTP 400" in r["error"] and r["error_code"] == "remote_failed" for r in records)
    run, _ = glmv(tmp_path, *args, "--base-url", closed_port_url())  # nothing answers: fatal, one line
    assert run.returncode == 1 and run.stdout == ""
    assert "Traceback" not in run.stderr  # loader threads still asking after the stop get the same error
    assert run.stderr.strip().splitlines()[-1].startswith("glmv: error: no --base-url server answered /models")


def test_ask_over_the_openai_backend_streams(server, tmp_path):
    urls = f"{closed_port_url()},{server.url}"  # comma-separated in the environment; the dead one failed over
    question = "What is the vendor?"
    run, heavy = glmv(tmp_path, "ask", SAMPLE_FILES[0], question, GLMV_BACKEND="openai", GLMV_BASE_URL=urls)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ANSWER and server.bodies[0]["stream"] is True and heavy == []
    assert "response_format" not in server.bodies[0]


def test_the_local_backend_without_torch_says_what_to_install(tmp_path):
    run, _ = glmv(tmp_path, "extract", SAMPLE_FILES[0], "--no-cache", prelude=HOOK + NO_TORCH)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines()[-1] == (
        "glmv: error: the local backend needs torch and transformers: pip install 'glmv[local]'"
    )


# -- against glmv serve on the tiny checkpoint: the same records as the local backend ------------


@pytest.fixture
def served(tiny_model, tmp_path):
    """`glmv serve` on the tiny checkpoint at a free port, with API key K: its /v1 base URL."""
    pytest.importorskip("fastapi")
    pytest.importorskip("glmv_cli.serve.app")
    with glmv_serve(tiny_model, tmp_path, "--api-key", "K", "--no-cache") as (url, _):
        yield f"{url}/v1"


@pytest.mark.slow
def test_extract_through_glmv_serve_equals_the_local_backend(served, tiny_model, tmp_path):
    from tests.conftest import needs_corpus

    invoices = needs_corpus() / "invoices"
    # the Azure samples: 4 PDFs and 3 PNGs, in one local batch; random weights, so a small budget
    args = ["extract", str(invoices), "--schema", "invoice", "--glob", "az_*", "--exclude", "*.json"]
    args += ["--max-pages", "1", "--max-tokens", "128", "--no-cache"]
    local, _ = glmv(tmp_path, *args, "--model", str(tiny_model), timeout=300)
    remote, heavy = glmv(tmp_path, *args, "--backend", "openai", "--base-url", served, "--api-key", "K", timeout=300)
    assert local.returncode in (0, 3) and remote.returncode == local.returncode, remote.stderr[-2000:]

    def essence(out: str) -> list[tuple]:
        records = [json.loads(line) for line in out.splitlines()]
        # ok and review both answered: a local answer closed early at the budget is review, and glmv
        # serve reports it as finish_reason "stop" (not "length"), so over HTTP it reads as ok
        status = {"ok": "answered", "review": "answered"}
        return [
            (Path(r["file"]).name, status.get(r["status"], r["status"]), r["error_code"], r["data"]) for r in records
        ]

    assert len(essence(local.stdout)) == len(list(invoices.glob("az_*[!n]")))  # every file but the .json ones
    assert essence(remote.stdout) == essence(local.stdout)
    assert heavy == []
