"""Watches for CPU used by processes outside the benchmark: on a 2-core machine they skew every figure."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import psutil


class BusyMonitor(threading.Thread):
    """Samples, once a second, how many cores other processes used, under the current label."""

    def __init__(self, interval: float = 1.0):
        super().__init__(name="bench-busy", daemon=True)
        self.interval = interval
        self.label = "start"
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.culprits: dict[str, float] = defaultdict(float)  # command line -> CPU seconds
        self._halt = threading.Event()
        self._me = psutil.Process()

    def run(self) -> None:
        prev = self._cpu_by_pid()
        last = time.perf_counter()
        while not self._halt.wait(self.interval):
            cur = self._cpu_by_pid()
            now = time.perf_counter()
            ours = {self._me.pid} | {c.pid for c in self._safe_children()}
            other = 0.0
            for pid, (cpu, cmd) in cur.items():
                if pid in ours or pid not in prev:
                    continue
                delta = cpu - prev[pid][0]
                if delta > 0:
                    other += delta
                    self.culprits[cmd] += delta
            self.samples[self.label].append(other / (now - last))
            prev, last = cur, now

    def wait_quiet(self, max_wait_s: float, threshold: float = 0.2) -> float:
        """Wait until other processes used under `threshold` cores for 2 samples in a row; seconds waited."""
        label, self.label = self.label, "waiting"
        started = time.perf_counter()
        try:
            while time.perf_counter() - started < max_wait_s:
                recent = self.samples["waiting"][-2:]
                if len(recent) == 2 and max(recent) < threshold:
                    break
                time.sleep(self.interval)
        finally:
            self.samples["waiting"].clear()
            self.label = label
        return time.perf_counter() - started

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def report(self) -> dict[str, object]:
        """Mean cores used by other processes per phase, and the busiest of them."""
        per_phase = {k: round(sum(v) / len(v), 2) for k, v in self.samples.items() if v}
        top = sorted(self.culprits.items(), key=lambda kv: -kv[1])[:3]
        return {
            "other_cores_mean": per_phase,
            "busiest_others": [{"cmd": cmd[:100], "cpu_s": round(s, 1)} for cmd, s in top if s >= 1],
        }

    def _safe_children(self) -> list[psutil.Process]:
        try:
            return self._me.children(recursive=True)
        except psutil.Error:
            return []

    @staticmethod
    def _cpu_by_pid() -> dict[int, tuple[float, str]]:
        out = {}
        for proc in psutil.process_iter(["pid", "cmdline", "name"]):
            try:
                times = proc.cpu_times()
                cmd = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or "?"
                out[proc.info["pid"]] = (times.user + times.system, cmd)
            except psutil.Error:
                continue
        return out
