"""Run statistics: counts, throughput and latency percentiles, as plain data for the CLI to render."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from glmv_cli.records import Record


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q% of values at or below it.

    Always one of the measured values (no interpolation); None for no values.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class RunStats:
    """Everything a run's summary needs, collected one record at a time."""

    model_load_s: float | None = None
    wall_s: float | None = None  # set directly, or by start()/stop()
    docs_ok: int = 0
    docs_review: int = 0  # written with data, flagged for a human look
    docs_failed: int = 0
    docs_duplicate: int = 0
    docs_cached: int = 0
    docs_page_limited: int = 0  # documents with more pages than --max-pages allowed
    pages: int = 0
    output_tokens: int = 0
    timed_tokens: int = 0  # output tokens of documents whose generate time is known
    generate_s: float = 0.0  # generate time of those documents
    latencies: list[float] = field(default_factory=list)  # timings.total of processed, non-cached docs
    ttfts: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    _started: float | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the wall clock."""
        self._started = time.perf_counter()

    def stop(self) -> None:
        """Stop the wall clock; wall_s is the time since start()."""
        if self._started is not None:
            self.wall_s = time.perf_counter() - self._started

    def add(self, record: Record) -> None:
        """Count one finished record."""
        if record.status == "duplicate":
            self.docs_duplicate += 1
            return
        if record.pages_cut:
            self.docs_page_limited += 1
        if record.status == "ok":
            self.docs_ok += 1
        elif record.status == "review":
            self.docs_review += 1
        else:
            self.docs_failed += 1
        self.pages += len(record.pages)
        if record.cached:
            self.docs_cached += 1
            return
        t = record.timings
        if t.total is not None:
            self.latencies.append(t.total)
        if t.ttft is not None:
            self.ttfts.append(t.ttft)
        self.output_tokens += t.output_tokens or 0
        if t.output_tokens is not None and t.generate:
            self.timed_tokens += t.output_tokens
            self.generate_s += t.generate
        if t.tokens_per_s is not None:
            self.tokens_per_s.append(t.tokens_per_s)
        elif t.output_tokens is not None and t.generate:
            self.tokens_per_s.append(t.output_tokens / t.generate)

    @property
    def done(self) -> int:
        """Documents finished, duplicates included."""
        return self.docs_ok + self.docs_review + self.docs_failed + self.docs_duplicate

    def summary(self) -> dict[str, Any]:
        """Counts, throughput and latencies in seconds; None where nothing was measured.

        docs_ok, docs_review and docs_failed include cached documents (docs_cached says how many);
        duplicates are counted apart and in nothing else. Latency and TTFT percentiles are
        nearest-rank over processed (non-cached) documents. decode_tokens_per_s_mean is the
        mean of per-document rates; decode_tokens_per_s_aggregate is all output tokens over
        all generate time. docs_per_min counts ok, review and failed documents over the wall time.
        """
        done = self.docs_ok + self.docs_review + self.docs_failed
        wall = self.wall_s
        if wall is None and self._started is not None:
            wall = time.perf_counter() - self._started
        return {
            "docs_ok": self.docs_ok,
            "docs_review": self.docs_review,
            "docs_failed": self.docs_failed,
            "docs_duplicate": self.docs_duplicate,
            "docs_cached": self.docs_cached,
            "docs_page_limited": self.docs_page_limited,
            "pages": self.pages,
            "wall_s": wall,
            "docs_per_min": done / wall * 60 if wall else None,
            "latency_p50_s": percentile(self.latencies, 50),
            "latency_p90_s": percentile(self.latencies, 90),
            "latency_p99_s": percentile(self.latencies, 99),
            "latency_max_s": max(self.latencies, default=None),
            "ttft_p50_s": percentile(self.ttfts, 50),
            "decode_tokens_per_s_mean": _mean(self.tokens_per_s),
            "decode_tokens_per_s_aggregate": self.timed_tokens / self.generate_s if self.generate_s else None,
            "output_tokens": self.output_tokens,
            "model_load_s": self.model_load_s,
        }
