"""API keys (compared in constant time, logged only as a short hash) and a per-key token-bucket rate limit."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def key_id(key: str) -> str:
    """A short, stable name for a key in logs and metrics; the key itself is never written anywhere."""
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def read_keys(keys: Iterable[str] = (), key_file: Path | None = None, env: str | None = None) -> list[str]:
    """Keys from flags, a file (one per line, # comments) and GLMV_API_KEYS (comma or space separated)."""
    found = [k.strip() for k in keys]
    if key_file is not None:
        for line in key_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
    if env:
        found.extend(re.split(r"[,\s]+", env))
    return list(dict.fromkeys(k for k in found if k))


class KeyRing:
    """The configured keys; empty means the server is open to anyone who can reach it."""

    def __init__(self, keys: Iterable[str]):
        # Digests, not keys, are compared: equal lengths, so not even a key's length leaks through timing.
        self._keys = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def check(self, authorization: str | None) -> str | None:
        """The key id for a valid `Authorization: Bearer KEY` header, else None (every key compared, always)."""
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        candidate = hashlib.sha256(given.strip().encode()).digest()
        match = None
        for digest, ident in self._keys:  # no early exit: the time taken does not tell which key matched
            if hmac.compare_digest(candidate, digest):
                match = ident
        return match


class RateLimiter:
    """A token bucket per client: `per_minute` requests a minute on average, bursts of up to `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute = per_minute
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill time)
        self._lock = threading.Lock()
        self._sweep_at = self.SWEEP_MIN  # sweep when this many buckets are held

    SWEEP_MIN = 1024

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, client: str) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available (for Retry-After)."""
        if self.per_minute <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(client, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.rate)
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _sweep(self, now: float) -> None:
        """Drop the buckets that have refilled: a full bucket is what a new client gets anyway.

        Amortised: the next sweep waits until the table has doubled, so an open server keyed by client
        address holds about the clients of the last minute, not every address it ever saw.
        """
        full = float(self.per_minute)
        self._buckets = {c: (t, last) for c, (t, last) in self._buckets.items() if t + (now - last) * self.rate < full}
        self._sweep_at = max(self.SWEEP_MIN, 2 * len(self._buckets))

    @staticmethod
    def retry_after(wait_s: float) -> str:
        return str(max(1, math.ceil(wait_s)))
