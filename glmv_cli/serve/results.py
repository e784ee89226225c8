"""Greedy answers kept in glmv's result cache (the same SQLite file as `glmv extract`), keyed by request."""

from __future__ import annotations

import threading
from typing import Any

from glmv_cli.cache import ResultCache, cache_key
from glmv_cli.engine.base import Generation

_KEPT = (
    "text",
    "thinking",
    "finish_reason",
    "closed_early",
    "prompt_tokens",
    "output_tokens",
    "token_logprobs",
    "tokens",
)
# token_bytes are kept as hex (JSON has no bytes).
_VERSION = "serve-2"  # bump when what a cached answer holds changes


class AnswerCache:
    """Maps (backend identity, canonical request) to a finished Generation; only greedy, error-free answers."""

    def __init__(self, store: ResultCache, identity: dict[str, Any]):
        self.store = store
        self.identity = identity
        self._lock = threading.Lock()

    @staticmethod
    def cacheable(parts: dict[str, Any]) -> bool:
        return parts["settings"]["temperature"] == 0

    def key(self, parts: dict[str, Any]) -> str:
        return cache_key({"kind": _VERSION, "backend": self.identity, "request": parts})

    def get(self, key: str) -> Generation | None:
        with self._lock:
            record = self.store.get(key)
        if record is None:
            return None
        raw = record.pop("token_bytes_hex", None)
        gen = Generation(**record)
        if raw is not None and hasattr(gen, "token_bytes"):
            gen.token_bytes = [bytes.fromhex(h) for h in raw]
        return gen

    def put(self, key: str, gen: Generation) -> None:
        if gen.error or gen.finish_reason == "error":
            return
        with self._lock:
            record = {name: getattr(gen, name) for name in _KEPT}
            raw = getattr(gen, "token_bytes", None)
            if raw is not None:
                record["token_bytes_hex"] = [b.hex() for b in raw]
            self.store.put(key, record, file="glmv serve")

    def stats(self) -> dict[str, int]:
        return {"hits": self.store.hits, "misses": self.store.misses}

    def close(self) -> None:
        with self._lock:
            self.store.finish_run()
            self.store.close()
