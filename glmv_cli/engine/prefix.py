"""The KV cache of recent prompt prefixes: a follow-up question about the same page skips its prefill.

A prompt's prefix is everything up to the end of its last image: the chat template's head, the
system text, earlier turns and the page images, which are most of the prompt (about 3,500 tokens
for an A4 page at 150 dpi). Its keys and values are kept after a prefill, keyed by the prefix's
token ids and the image pixels' hash, bounded by bytes, least recently used first out. A request
whose prompt starts with a kept prefix prefills only the rest, its M-RoPE positions taken from the
whole prompt's (decode.KVBatch.prefill_after).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class Prefix:
    """One kept prefix: its length in tokens and each layer's keys and values (1, heads, length, dim)."""

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class PrefixCache:
    """Prefixes by key, at most `max_bytes` of them (0 turns the cache off); thread-safe."""

    def __init__(self, max_bytes: int, end_of_image_id: int | None):
        self.max_bytes = max_bytes
        self.end_of_image_id = end_of_image_id
        self._entries: OrderedDict[str, Prefix] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.saved_tokens = 0

    def key(self, encoding: dict[str, torch.Tensor]) -> tuple[str, int] | None:
        """(key, prefix length) of a single-request encoding, or None when it has no image to reuse."""
        if not self.max_bytes or self.end_of_image_id is None or "pixel_values" not in encoding:
            return None
        ids = encoding["input_ids"][0]
        ends = (ids == self.end_of_image_id).nonzero()
        if not len(ends):
            return None
        length = int(ends[-1]) + 1
        if length >= ids.shape[0]:  # the rest must hold at least one token to prefill
            return None
        digest = hashlib.blake2b(digest_size=20)
        digest.update(ids[:length].numpy().tobytes())
        pixels = encoding["pixel_values"]
        digest.update(str((pixels.dtype, tuple(pixels.shape))).encode())
        digest.update(pixels.contiguous().view(torch.uint8).numpy().tobytes())
        digest.update(encoding["image_grid_thw"].numpy().tobytes())
        return digest.hexdigest(), length

    def get(self, key: str) -> Prefix | None:
        with self._lock:
            prefix = self._entries.get(key)
            if prefix is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            self.saved_tokens += prefix.length
            return prefix

    def put(self, key: str, prefix: Prefix) -> None:
        size = prefix.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = prefix
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= old.nbytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
                "saved_tokens": self.saved_tokens,
            }
