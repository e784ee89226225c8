"""The KV cache of recent prompt prefixes: a follow-up question about the same page skips its prefill.

A prompt's prefix is everything up to the end of its last image: the chat template's head, the
system text, earlier turns and the page images, which are most of the prompt (about 3,500 tokens
for an A4 page at 150 dpi). Its keys and values are kept after a prefill, keyed by the prefix's
token ids and the images' content hashes, bounded by bytes, least recently used first out. A request
whose prompt starts with a kept prefix prefills only the rest, its M-RoPE positions taken from the
whole prompt's (decode.KVBatch.prefill_after).

A follow-up also skips the processor's work on the page (resize, normalise, patchify: about as long as
the page's prefill on a small model): the processed images are kept too, by content hash (ImageCache),
and the prompt's text is tokenised around them as the processor itself does (encode_with_images).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

V = TypeVar("V")


@dataclass
class Prefix:
    """One kept prefix: its length in tokens and each layer's keys and values (1, heads, length, dim)."""

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


class BytesCache(Generic[V]):
    """Values by key, at most `max_bytes` of them (0 keeps none), least recently used first out;
    thread-safe (requests are prepared in loader threads)."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]):
        self.max_bytes = max_bytes
        self._size = size
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: str) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: str, value: V) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= self._size(old)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}


class PrefixCache(BytesCache[Prefix]):
    """Prompt prefixes by key (`key`), and how many prompt tokens they saved."""

    def __init__(self, max_bytes: int, end_of_image_id: int | None):
        super().__init__(max_bytes, lambda prefix: prefix.nbytes)
        self.end_of_image_id = end_of_image_id
        self.saved_tokens = 0

    def key(self, encoding: dict[str, Any]) -> tuple[str, int] | None:
        """(key, prefix length) of a single-request encoding, or None when it has no image to reuse.

        The images count by their content hashes (IMAGE_DIGESTS: hashed once, before processing)."""
        if not self.max_bytes or self.end_of_image_id is None or IMAGE_DIGESTS not in encoding:
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
        digest.update(encoding["image_grid_thw"].numpy().tobytes())
        digest.update("".join(encoding[IMAGE_DIGESTS]).encode())
        return digest.hexdigest(), length

    def get(self, key: str) -> Prefix | None:
        prefix = super().get(key)
        if prefix is not None:
            with self._lock:
                self.saved_tokens += prefix.length
        return prefix

    def stats(self) -> dict[str, int]:
        stats = super().stats()
        with self._lock:
            return {**stats, "saved_tokens": self.saved_tokens}


# The key under which an encoding carries its images' content hashes (not a model input: collate drops it).
IMAGE_DIGESTS = "image_digests"


def image_digest(image: Any) -> str:
    """A PIL image's content hash: mode, size and pixels (about 10 ms for an A4 page at 150 dpi)."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.mode} {image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ImageCache(BytesCache[dict[str, torch.Tensor]]):
    """Processed images (the image processor's pixel values and grid) by content hash."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, lambda features: sum(t.numel() * t.element_size() for t in features.values()))


def encode_with_images(
    processor: Any, text: str, images: list[Any], cache: ImageCache, dtype: torch.dtype
) -> dict[str, Any]:
    """What `processor(text=[text], images=[images])` returns, each image processed once and kept.

    As the processor does it: every image token in the text becomes one token per merged patch of its
    image, the text is tokenised, and image tokens are marked in `mm_token_type_ids`. Pixel values are
    kept in the model's dtype. The images' content hashes ride along under IMAGE_DIGESTS.
    """
    digests, parts = [], []
    for image in images:
        digest = image_digest(image)
        features = cache.get(digest)
        if features is None:
            made = processor.image_processor(images=[image], return_tensors="pt")
            features = {"pixel_values": made["pixel_values"].to(dtype), "image_grid_thw": made["image_grid_thw"]}
            cache.put(digest, features)
        digests.append(digest)
        parts.append(features)
    pieces = text.split(processor.image_token)
    if len(pieces) != len(images) + 1:
        raise ValueError(f"{len(pieces) - 1} image slots in the prompt for {len(images)} images")
    merge = processor.image_processor.merge_size**2
    counts = [int(f["image_grid_thw"].prod()) // merge for f in parts]
    expanded = pieces[0] + "".join(processor.image_token * n + rest for n, rest in zip(counts, pieces[1:], strict=True))
    encoding: dict[str, Any] = dict(processor.tokenizer([expanded], return_tensors="pt"))
    encoding.pop("token_type_ids", None)
    encoding["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(encoding["input_ids"].tolist()))
    encoding["pixel_values"] = torch.cat([f["pixel_values"] for f in parts])
    encoding["image_grid_thw"] = torch.cat([f["image_grid_thw"] for f in parts])
    encoding[IMAGE_DIGESTS] = digests
    return encoding
