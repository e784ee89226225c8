"""`make bench`: glmv against a plain transformers loop, outlines, a grammar processor and vLLM, on the tiny checkpoint.

Each step runs in its own subprocess (so peak RSS is that approach's own) and prints one JSON
line; this script runs them in turn, prints the table and the targets, and writes
bench/results.json. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/run.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report  # noqa: E402
from bench.busy import BusyMonitor  # noqa: E402

STEPS: list[tuple[str, list[str]]] = [
    ("startup", ["bench.startup"]),
    ("plain", ["bench.plain"]),
    ("outlines", ["bench.with_outlines"]),
    ("outlines strict", ["bench.with_outlines", "strict"]),
    ("glmv b1", ["bench.glmv_lib", "1"]),
    ("glmv bN", ["bench.glmv_lib", "default"]),
    ("grammar processor", ["bench.with_grammar_processor"]),
    ("vllm", ["bench.with_vllm"]),  # runs when .venv-vllm exists (`make vllm`); also gives the "vllm c8" row
    ("grammar_cost", ["bench.grammar_cost"]),
    ("cached", ["bench.cached"]),
    ("rss_scale", ["bench.rss_scale"]),
    ("prefix_reuse", ["bench.prefix_reuse"]),  # a follow-up question about the same page: its time to first token
    ("serve_load", ["bench.serve_load"]),  # glmv serve under 8 clients; glmv --backend openai vs vLLM direct
]
RESULTS = common.ROOT / "bench" / "results.json"
QUIET_WAIT_S = 180  # per step, at most: wait for other processes to leave the CPU before measuring


def machine() -> dict[str, Any]:
    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or None,
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {n: ver(n) for n in ("glmv", "torch", "transformers", "llguidance", "outlines", "outlines_core")},
        "git": _git(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="glmv's benchmark; the defaults are the full run `make bench` does.")
    parser.add_argument("--docs", type=int, default=common.N_DOCS, help="documents per round (default 32)")
    parser.add_argument("--rounds", type=int, default=common.ROUNDS, help="rounds per approach (default 2)")
    parser.add_argument("--steps", help=f"comma-separated subset of: {', '.join(k for k, _ in STEPS)}")
    parser.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S, help="max seconds to wait per step")
    parser.add_argument("--out", type=Path, help="where the figures go (default bench/results.json)")
    args = parser.parse_args(argv)
    keys = [k for k, _ in STEPS]
    args.steps = keys if args.steps is None else [k.strip() for k in args.steps.split(",")]
    unknown = [k for k in args.steps if k not in keys]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {keys}")
    reduced = args.docs != 32 or args.rounds != 2 or args.steps != keys
    if args.out is None and reduced:
        args.out = common.WORK / "results-reduced.json"  # bench/results.json holds full runs only
    args.out = args.out or RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if not (common.CHECKPOINT / "config.json").is_file():
        print(
            f"bench: {common.CHECKPOINT} is missing: check out the repository whole (models/ is committed)",
            file=sys.stderr,
        )
        return 2
    # Every step is a subprocess: it reads the run's size from the environment (see bench/common.py).
    os.environ["GLMV_BENCH_DOCS"], os.environ["GLMV_BENCH_ROUNDS"] = str(args.docs), str(args.rounds)
    common.N_DOCS, common.ROUNDS = args.docs, args.rounds
    common.bench_images()
    monitor = BusyMonitor()
    monitor.start()
    results: dict[str, dict[str, Any]] = {}
    steps = [(key, cmd) for key, cmd in STEPS if key in args.steps]
    for n, (key, cmd) in enumerate(steps, 1):
        print(f"[{n}/{len(steps)}] {key} ...", end="", file=sys.stderr, flush=True)
        waited = monitor.wait_quiet(args.quiet_wait)
        if waited > 3:
            print(f" (waited {waited:.0f} s for other processes to finish)", end="", file=sys.stderr, flush=True)
        monitor.label = key
        run = common.run_measured([common.PYTHON, "-m", *cmd], timeout=900)
        res = run.result()
        res["subprocess_peak_rss_mb"] = round(run.peak_rss_mb, 1)
        res["subprocess_wall_s"] = round(run.wall_s, 2)
        res["waited_for_quiet_s"] = round(waited, 1)
        results[key] = res
        for extra_key, extra in res.pop("also", {}).items():  # a step that measured more than one row
            results[extra_key] = extra
        status = f" ERROR {res['error']}" if res.get("error") and "rounds" not in res else ""
        status = f" {res['skipped']}" if res.get("skipped") else status
        print(f" {run.wall_s:.1f} s{status}", file=sys.stderr, flush=True)
    monitor.stop()
    total = time.perf_counter() - started

    busy = monitor.report()
    checks = report.targets(results)
    print()
    print(report.table(results, common.MAX_NEW_TOKENS, common.N_DOCS, common.ROUNDS))
    print()
    print(report.extras(results))
    print()
    print(report.target_lines(checks))
    noisy = {k: v for k, v in busy["other_cores_mean"].items() if v >= 0.2}
    if noisy:
        print(f"\nWARNING: other processes used CPU during the run (mean cores by step: {noisy});")
        print("         on this 2-core machine the figures of those steps are unreliable. Busiest:")
        for b in busy["busiest_others"]:
            print(f"         {b['cpu_s']:>6.1f} s  {b['cmd']}")
    print(f"\ntotal bench time {total:.0f} s; figures in {_shown(args.out)}")

    payload = {
        "machine": machine(),
        "settings": {
            "docs": common.N_DOCS,
            "longest_side_px": common.LONGEST_SIDE,
            "max_new_tokens": common.MAX_NEW_TOKENS,
            "rounds": common.ROUNDS,
            "schema": common.SCHEMA,
            "checkpoint": str(common.CHECKPOINT.relative_to(common.ROOT)),
            "steps": args.steps,
        },
        "results": results,
        "targets": checks,
        "other_processes": busy,
        "total_s": round(total, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(args.out)
    return 0


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(common.ROOT)) if path.is_relative_to(common.ROOT) else str(path)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git() -> dict[str, Any] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "glmv_cli"], cwd=common.ROOT, capture_output=True, text=True
        )
    except OSError:
        return None
    return {"commit": head.stdout.strip() or None, "glmv_cli_changed_files": len(dirty.stdout.splitlines())}


if __name__ == "__main__":
    sys.exit(main())
