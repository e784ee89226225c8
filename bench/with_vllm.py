"""Peer 4: vLLM's CPU build serving the tiny checkpoint, the engine a user with volume would pick.

    python -m bench.with_vllm            # 32 requests in flight, then glmv's batch size (8) in flight

Runs when `.venv-vllm` exists (`make vllm`, see ../shared/VLLM-CPU.md); otherwise the row says it
was skipped. Starts `vllm serve` on 127.0.0.1 at a free port in its own process group, waits for
/health, sends one untimed warm-up request, then the bench documents as base64 PNG data URLs to
/v1/chat/completions: glmv's system text and prompt, glmv's strict constraint schema as
`response_format` json_schema (structured-outputs backend xgrammar, compact JSON),
`enable_thinking` false, greedy, `max_tokens` = glmv's budget. Output tokens come from `usage`.
Peak RSS is the server's: the sum over its process tree, sampled every 0.5 s (shared pages count
once per process; the proportional figure, PSS, is taken at the end of each round). The server is
stopped (its whole process group) before this step ends.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    CHECKPOINT,
    HEADLINE_ROUNDS,
    MAX_NEW_TOKENS,
    ROUNDS,
    SCHEMA,
    WORK,
    bench_images,
    emit,
    round_figures,
)
from bench.vllm_server import HEALTH_TIMEOUT_S, STRUCTURED_BACKEND, Server, available, free_port

SERVED_NAME = "glmv-tiny"
BACKEND = STRUCTURED_BACKEND
IN_FLIGHT = (32, 8)  # 32 as a server is driven (and glmv's row cap); 8, a lighter load, for context
LOG = WORK / "vllm-server.log"


class TreeRss:
    """Samples the summed RSS of a process and its descendants every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.5):
        import psutil

        self._root = psutil.Process(pid)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _procs(self) -> list[Any]:
        import psutil

        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return []

    def _sum(self, field: str) -> float:
        import psutil

        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                info = p.memory_full_info() if field == "pss" else p.memory_info()
                total += getattr(info, field)
        return total / 2**20

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak_mb = max(self.peak_mb, self._sum("rss"))

    def pss_mb(self) -> float:
        return self._sum("pss")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def request_body(
    system: str, prompt: str, image_png: bytes, json_schema: dict[str, Any], logprobs: bool = False
) -> bytes:
    """glmv's messages (system text, then the image and the prompt) as an OpenAI chat request; with
    `logprobs`, the per-token log-probabilities glmv's remote backend asks for (its confidence)."""
    url = "data:image/png;base64," + base64.b64encode(image_png).decode()
    body = {
        "model": SERVED_NAME,
        "messages": [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}],
            },
        ],
        "max_tokens": MAX_NEW_TOKENS,
        "temperature": 0.0,
        "seed": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": SCHEMA, "schema": json_schema, "strict": True},
        },
        "chat_template_kwargs": {"enable_thinking": False},
    }
    if logprobs:
        body["logprobs"] = True
    return json.dumps(body).encode()


def post(base: str, body: bytes) -> dict[str, Any]:
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def run_round(base: str, paths: list[Path], in_flight: int, make_body: Any, model: Any) -> dict[str, Any]:
    """All documents through the server with `in_flight` requests outstanding; read, encode and validate timed."""
    from glmv_cli.engine.remote import start_threads
    from glmv_cli.extraction.parse import validate

    def one(path: Path) -> tuple[int, str | None, str | None]:
        try:
            reply = post(base, make_body(path.read_bytes()))
        except (OSError, urllib.error.URLError, ValueError) as exc:
            return 0, f"request failed: {exc}"[:120], None
        choice = reply["choices"][0]
        tokens = int((reply.get("usage") or {}).get("completion_tokens") or 0)
        error = validate(choice["message"].get("content") or "", model)[1]
        return tokens, error and f"{error[:100]} ({tokens} tokens, {choice.get('finish_reason')})", None

    # Timed from before its threads start, as glmv's runs are (its pool starts inside its timed run): starting
    # 32 threads while the server spins a core took 5-300 ms in glmv's runs, which the peer did not pay.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        start_threads(pool, in_flight)  # as glmv's remote backend does: every request goes out at once
        answers = list(pool.map(one, paths))
    wall = time.perf_counter() - t0
    errors = sorted({e for _, e, _ in answers if e})
    valid = sum(e is None for _, e, _ in answers)
    return round_figures(
        len(paths), valid, sum(t for t, _, _ in answers), wall, errors=errors[:3], in_flight=min(in_flight, len(paths))
    )


def main() -> None:
    name = f"vllm c{IN_FLIGHT[0]}"
    if not available():
        emit({"name": name, "skipped": "skipped: run `make vllm`"})
        return
    from glmv_cli.extraction.constraint import constraint_schema
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    schema = resolve_schema(SCHEMA)
    json_schema, prompt = constraint_schema(schema.json_schema()), build_prompt(schema)

    def make_body(png: bytes) -> bytes:
        return request_body(SYSTEM, prompt, png, json_schema)

    paths = bench_images()
    result: dict[str, Any] = {"name": name, "backend": f"vllm {BACKEND}"}
    also: dict[str, Any] = {}
    started = time.perf_counter()
    server = Server(CHECKPOINT, free_port(), LOG, SERVED_NAME)
    rss = TreeRss(server.proc.pid)
    try:
        server.wait_healthy(HEALTH_TIMEOUT_S)
        result["load_s"] = round(time.perf_counter() - started, 3)
        t0 = time.perf_counter()
        post(server.base, make_body(paths[0].read_bytes()))  # first request: grammar compile, warm-up
        result["compile_s"] = round(time.perf_counter() - t0, 3)
        pss = []
        for in_flight in IN_FLIGHT:
            if in_flight != IN_FLIGHT[0] and in_flight >= len(paths) and IN_FLIGHT[0] >= len(paths):
                also[f"vllm c{in_flight}"] = {"skipped": f"same as {name}: {len(paths)} documents in all"}
                continue
            count = HEADLINE_ROUNDS if in_flight == IN_FLIGHT[0] else ROUNDS  # c32: the headline row
            # Round n on set n + 1, as glmv's: pages the server has not seen, so its prefix and image caches
            # do not skip their prefill (it re-read the same 18 pages: 7.5 docs/s fresh, 8.9 again; medians of 7).
            # c8's rounds take the sets after c32's.
            first = 1 if in_flight == IN_FLIGHT[0] else 1 + HEADLINE_ROUNDS
            sets = [bench_images(first + n) for n in range(count)]
            rounds = [run_round(server.base, s, in_flight, make_body, schema.model) for s in sets]
            pss.append(rss.pss_mb())
            if in_flight == IN_FLIGHT[0]:
                result["rounds"] = rounds
            else:
                also[f"vllm c{in_flight}"] = {"name": f"vllm c{in_flight}", "rounds": rounds}
        result["server_pss_mb"] = round(max(pss), 1)
    except Exception as exc:  # the row reports why the server could not run instead of numbers
        result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    finally:
        server.stop()
        rss.stop()
    result["server_peak_rss_mb"] = round(rss.peak_mb, 1)
    for row in also.values():
        if "rounds" in row:
            row.update(load_s=result.get("load_s"), compile_s=result.get("compile_s"))
            row["server_peak_rss_mb"] = result["server_peak_rss_mb"]
    result["also"] = also
    emit(result)


if __name__ == "__main__":
    sys.exit(main())
