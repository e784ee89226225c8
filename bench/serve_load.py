"""The load step: `glmv serve` under concurrent clients, and glmv's remote backend against vLLM direct.

    python -m bench.serve_load            # both parts (the second only when .venv-vllm exists)
    python -m bench.serve_load serve      # part 1 only
    python -m bench.serve_load remote     # part 2 only

1. `glmv serve` on the tiny checkpoint (127.0.0.1, a free port, `--no-cache` so every request
   computes), once with its default `--max-batch` and once with `--max-batch 1`. After one untimed
   warm-up request, CLIENTS threads (one shared httpx client) send REQUESTS requests: each a
   distinct small PNG (300x200 px) as a data URL, glmv's system text and prompt, glmv's strict
   `invoice` constraint schema as `response_format` json_schema, greedy, `max_tokens`
   SERVE_MAX_TOKENS. Figures: requests/s over the wall time, p50/p95 latency per request, errors
   (non-200 or no answer; must be 0), the server's model calls by batch size (/metrics), and the
   batching gain (batched requests/s over max-batch-1 requests/s).
2. When `.venv-vllm` exists: one `vllm serve` (bench/vllm_server.py) for both halves, then per
   round, in alternating order, `glmv extract --backend openai --base-url <vllm>/v1` over the bench
   documents (`--concurrency` = IN_FLIGHT, `--no-cache`, `--no-repair` so one request per
   document, `--max-tokens` = the bench's budget) and the same requests sent straight to vLLM with
   the same number in flight (bench/with_vllm.py's bodies and round, log-probabilities asked for as
   glmv asks for them). glmv's docs/s is over the run
   as its `--stats-json` times it (`wall_s`), and also over the whole command (start-up included).

Every server runs in its own process group and is stopped (the whole group) in a `finally`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import (
    CHECKPOINT,
    GLMV,
    MAX_NEW_TOKENS,
    SCHEMA,
    WORK,
    bench_images,
    cli_env,
    emit,
    noise_images,
)
from bench.vllm_server import ServerProcess, available, free_port
from glmv_cli.outputs.stats import percentile

REQUESTS = 32
REMOTE_ROUNDS = 5  # the glmv/vLLM ratio swung from 0.38 to 1.37 between single rounds: a median of 5 paired rounds
CLIENTS = 8
SERVE_MAX_TOKENS = 128  # under the bench's 512: both halves stay around a minute on 2 cores
IMAGE_PX = (300, 200)
HEALTH_TIMEOUT_S = 120
IN_FLIGHT = 32  # part 2: glmv --concurrency and the direct client's threads (with_vllm's c32 row)
SERVED_NAME = "glmv-tiny"
JSON = {"Content-Type": "application/json"}


class GlmvServer(ServerProcess):
    """`glmv serve` on the tiny checkpoint (cache off) in its own process group."""

    name = "glmv serve"
    grace = 20.0

    def __init__(self, port: int, log: Path, extra: list[str]):
        cmd = [GLMV, "serve", "-m", str(CHECKPOINT), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--no-cache", "--served-model-name", SERVED_NAME, *extra]
        env = {**os.environ, **cli_env(HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")}
        super().__init__(cmd, port, log, {k: v for k, v in env.items() if v != ""})


def _bodies() -> tuple[list[bytes], Any]:
    """REQUESTS request bodies (distinct small PNGs, glmv's prompt and strict schema) and the Pydantic model."""
    from bench.with_vllm import request_body
    from glmv_cli.extraction.constraint import constraint_schema
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    schema = resolve_schema(SCHEMA)
    json_schema, prompt = constraint_schema(schema.json_schema()), build_prompt(schema)
    images = noise_images(WORK / "serve-load-images", REQUESTS, IMAGE_PX, seed=9)
    bodies = []
    for path in images:
        body = json.loads(request_body(SYSTEM, prompt, path.read_bytes(), json_schema))
        body["max_tokens"] = SERVE_MAX_TOKENS
        bodies.append(json.dumps(body).encode())
    return bodies, schema.model


def _load(client: Any, base: str, bodies: list[bytes], model: Any) -> dict[str, Any]:
    """All bodies through the server with CLIENTS requests outstanding: rate, latency, errors, validity."""
    from glmv_cli.extraction.parse import validate

    def one(body: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            r = client.post(f"{base}/v1/chat/completions", content=body, headers=JSON)
            latency = time.perf_counter() - started
            if r.status_code != 200:
                return {"latency": latency, "error": f"HTTP {r.status_code}: {r.text[:120]}"}
            reply = r.json()
            choice = reply["choices"][0]
        except Exception as exc:  # noqa: BLE001 - every failure is one error of the load
            return {"latency": time.perf_counter() - started, "error": f"{type(exc).__name__}: {exc}"[:160]}
        content = choice["message"].get("content") or ""
        return {
            "latency": latency,
            "error": None,
            "valid": validate(content, model)[1] is None and choice.get("finish_reason") == "stop",
            "length": choice.get("finish_reason") == "length",
            "tokens": int((reply.get("usage") or {}).get("completion_tokens") or 0),
        }

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        answers = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    ok = [a for a in answers if a["error"] is None]
    latencies = [a["latency"] for a in answers]
    return {
        "requests": len(answers),
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(answers) / wall, 3),
        "p50_latency_s": round(percentile(latencies, 50) or 0, 3),
        "p95_latency_s": round(percentile(latencies, 95) or 0, 3),
        "errors": len(answers) - len(ok),
        "error_samples": sorted({a["error"] for a in answers if a["error"]})[:3],
        "valid": sum(a["valid"] for a in ok),
        "finish_length": sum(a["length"] for a in ok),
        "output_tokens": sum(a["tokens"] for a in ok),
    }


def serve_part() -> dict[str, Any]:
    """Part 1: the same load on `glmv serve` batched (default --max-batch) and with --max-batch 1."""
    import httpx

    bodies, model = _bodies()
    out: dict[str, Any] = {
        "requests": REQUESTS,
        "clients": CLIENTS,
        "max_tokens": SERVE_MAX_TOKENS,
        "image_px": list(IMAGE_PX),
        "runs": {},
    }
    limits = httpx.Limits(max_connections=CLIENTS + 2, max_keepalive_connections=CLIENTS + 2)
    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0), limits=limits) as client:
        for label, extra in (("batched", []), ("max-batch 1", ["--max-batch", "1"])):
            run: dict[str, Any] = {"flags": " ".join(["--no-cache", *extra])}
            started = time.perf_counter()
            server = GlmvServer(free_port(), WORK / f"serve-load-{label.replace(' ', '')}.log", extra)
            try:
                server.wait_healthy(HEALTH_TIMEOUT_S)
                run["load_s"] = round(time.perf_counter() - started, 3)
                t0 = time.perf_counter()
                warm = client.post(f"{server.base}/v1/chat/completions", content=bodies[0], headers=JSON)
                warm.raise_for_status()
                run["warmup_s"] = round(time.perf_counter() - t0, 3)
                run.update(_load(client, server.base, bodies, model))
                metrics = client.get(f"{server.base}/metrics", timeout=10).json()
                run["max_batch"] = metrics.get("max_batch")
                run["model_calls_by_batch"] = metrics.get("batches")
            except Exception as exc:  # the run reports why instead of figures
                run["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            finally:
                server.stop()
            out["runs"][label] = run
    batched, single = out["runs"]["batched"], out["runs"]["max-batch 1"]
    if batched.get("requests_per_s") and single.get("requests_per_s"):
        out["batching_gain"] = round(batched["requests_per_s"] / single["requests_per_s"], 2)
    out["errors"] = sum(r.get("errors", 0) for r in out["runs"].values())
    return out


def _glmv_extract(base: str, paths: list[Path]) -> dict[str, Any]:
    """One `glmv extract --backend openai` over the documents: wall (start-up included) and its own stats."""
    out, stats, err = WORK / "serve-load-extract.jsonl", WORK / "serve-load-stats.json", WORK / "serve-load-extract.err"
    stats.unlink(missing_ok=True)
    cmd = [GLMV, "extract", *map(str, paths), "--schema", SCHEMA, "--backend", "openai", "--base-url", f"{base}/v1"]
    cmd += ["--concurrency", str(IN_FLIGHT), "--no-cache", "--no-repair", "--max-tokens", str(MAX_NEW_TOKENS)]
    cmd += ["-q", "-o", str(out), "--stats-json", str(stats)]
    env = {**os.environ, **cli_env(PYTHONWARNINGS="ignore")}
    env = {k: v for k, v in env.items() if v != ""}
    started = time.perf_counter()
    with open(err, "w") as stderr:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr, timeout=600, check=False)
    wall = time.perf_counter() - started
    summary = json.loads(stats.read_text()) if stats.exists() else {}
    inner = summary.get("wall_s")
    result = {
        "rc": proc.returncode,
        "docs": len(paths),
        "command_wall_s": round(wall, 3),
        "wall_s": inner,
        "docs_per_s": round(len(paths) / inner, 3) if inner else None,
        "docs_per_s_with_startup": round(len(paths) / wall, 3),
        **{k: summary.get(k) for k in ("docs_ok", "docs_review", "docs_failed", "output_tokens")},
    }
    if not summary:
        tail = " | ".join(err.read_text(errors="replace").strip().splitlines()[-3:])
        result["error"] = f"exit {proc.returncode}: {tail or 'no stats'}"
    return result


def remote_part() -> dict[str, Any]:
    """Part 2: glmv's remote backend against the same requests straight to one vLLM server."""
    if not available():
        return {"skipped": "skipped: run `make vllm`"}
    from bench.vllm_server import HEALTH_TIMEOUT_S as VLLM_HEALTH_S
    from bench.vllm_server import Server
    from bench.with_vllm import post, request_body, run_round
    from glmv_cli.extraction.constraint import constraint_schema
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    schema = resolve_schema(SCHEMA)
    json_schema, prompt = constraint_schema(schema.json_schema()), build_prompt(schema)

    def make_body(png: bytes) -> bytes:
        return request_body(SYSTEM, prompt, png, json_schema, logprobs=True)  # as glmv asks, for confidence

    paths = bench_images()
    out: dict[str, Any] = {"docs": len(paths), "in_flight": IN_FLIGHT, "max_tokens": MAX_NEW_TOKENS, "rounds": []}
    started = time.perf_counter()
    server = Server(CHECKPOINT, free_port(), WORK / "vllm-server-load.log", SERVED_NAME)
    try:
        server.wait_healthy(VLLM_HEALTH_S)
        out["load_s"] = round(time.perf_counter() - started, 3)
        t0 = time.perf_counter()
        post(server.base, make_body(paths[0].read_bytes()))  # grammar compile, warm-up
        out["compile_s"] = round(time.perf_counter() - t0, 3)
        # One unmeasured round at full load first: the server's first batch of IN_FLIGHT rows pays one-off
        # costs (the committed run's first round, glmv's half, was its lowest ratio: 0.79 against 0.89-0.91).
        out["warmup_round"] = run_round(server.base, paths, IN_FLIGHT, make_body, schema.model)["wall_s"]
        for n in range(REMOTE_ROUNDS):
            figures: dict[str, Any] = {}
            for half in ("glmv", "direct") if n % 2 == 0 else ("direct", "glmv"):  # alternate: drift hits both
                if half == "glmv":
                    figures["glmv"] = _glmv_extract(server.base, paths)
                else:
                    figures["direct"] = run_round(server.base, paths, IN_FLIGHT, make_body, schema.model)
            out["rounds"].append(figures)
    except Exception as exc:  # the row reports why the server could not run instead of numbers
        out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    finally:
        server.stop()
    direct = [r["direct"]["docs_per_s"] for r in out["rounds"] if "direct" in r]
    glmv = [r["glmv"]["docs_per_s"] for r in out["rounds"] if r.get("glmv", {}).get("docs_per_s")]
    glmv_cmd = [r["glmv"]["docs_per_s_with_startup"] for r in out["rounds"] if "glmv" in r]
    if direct and glmv:
        out.update(direct_docs_per_s=max(direct), glmv_docs_per_s=max(glmv), ratio=round(max(glmv) / max(direct), 3))
        out.update(glmv_docs_per_s_with_startup=max(glmv_cmd), ratio_with_startup=round(max(glmv_cmd) / max(direct), 3))
    # Each round pairs the two halves back to back: the median of the paired ratios, and their spread.
    paired = sorted(
        r["glmv"]["docs_per_s"] / r["direct"]["docs_per_s"]
        for r in out["rounds"]
        if r.get("glmv", {}).get("docs_per_s") and r.get("direct", {}).get("docs_per_s")
    )
    if paired:
        out.update(
            paired_ratios=[round(x, 3) for x in paired],
            ratio_median=round(statistics.median(paired), 3),
            ratio_min=round(paired[0], 3),
            ratio_max=round(paired[-1], 3),
        )
    return out


def main(argv: list[str]) -> None:
    parts = argv or ["serve", "remote"]
    result: dict[str, Any] = {"name": "serve_load"}
    if "serve" in parts:
        result["serve"] = serve_part()
    if "remote" in parts:
        result["remote"] = remote_part()
    emit(result)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
