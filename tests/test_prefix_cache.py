"""Follow-up questions reuse the page: a prompt whose prefix (up to its last image) was prefilled before
prefills only the rest, and answers exactly as a full prefill does (trained checkpoint, greedy)."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.xdist_group("trained-model")
TRAINED = ROOT / "models" / "glmv-tiny-trained"
QUESTIONS = ["What is the invoice number?", "What is the total?", "Who is the vendor?"]


def _requests(image, system=None):
    from glmv_cli.engine.base import GenerationSettings, Request

    settings = GenerationSettings(max_new_tokens=24)
    return [Request(images=[image], prompt=q, system=system, settings=settings) for q in QUESTIONS]


def test_follow_up_questions_prefill_only_their_own_tokens():
    from glmv_cli.engine.local import LocalBackend

    image = Image.open(SAMPLES / "invoice-acme.png").convert("RGB")
    plain = LocalBackend(str(TRAINED), prefix_cache_mb=0)
    want = [g.text for g in plain.generate(_requests(image))]
    assert plain.prefixes.stats()["hits"] == 0

    reuse = LocalBackend(str(TRAINED), prefix_cache_mb=64)
    first = reuse.generate(_requests(image)[:1])  # prefills the page, keeps its prefix
    rest = reuse.generate(_requests(image)[1:])  # both hit, prefilled alone, joined into one batch
    stats = reuse.prefixes.stats()
    assert stats["hits"] == 2 and stats["entries"] == 1 and stats["saved_tokens"] > 2 * 100
    assert [g.text for g in first + rest] == want
    assert [g.prompt_tokens for g in first + rest] == [g.prompt_tokens for g in plain.generate(_requests(image))]
    # a batch that mixes a hit with a fresh page keeps the group's order
    other = Image.open(SAMPLES / "screenshot-login.png").convert("RGB")
    mixed = reuse.generate([_requests(other)[0], _requests(image)[2], _requests(other)[1]])
    assert [g.text for g in mixed] == [
        g.text for g in plain.generate([_requests(other)[0], _requests(image)[2], _requests(other)[1]])
    ]


def test_prefix_cache_is_bounded_by_bytes():
    import torch

    from glmv_cli.engine.prefix import Prefix, PrefixCache

    kv = [(torch.zeros(1, 1, 10, 4), torch.zeros(1, 1, 10, 4))]  # 320 bytes
    cache = PrefixCache(max_bytes=700, end_of_image_id=5)
    for key in "abc":
        cache.put(key, Prefix(10, kv))
    assert cache.get("a") is None and cache.get("b") is not None and cache.get("c") is not None
    cache.get("b")
    cache.put("d", Prefix(10, kv))  # c is now the least recently used
    assert cache.get("c") is None and cache.get("b") is not None
    assert PrefixCache(0, 5).key({"input_ids": torch.tensor([[5, 1]]), "pixel_values": torch.zeros(1)}) is None


def test_a_follow_up_skips_the_processor_and_encodes_as_the_processor_does():
    """The processed page is kept by content hash; the prompt tokenised around it is the processor's own
    encoding, token for token and pixel for pixel (two images of different sizes, a system turn)."""
    import torch

    from glmv_cli.engine.local import LocalBackend
    from glmv_cli.engine.prefix import IMAGE_DIGESTS, ImageCache, encode_with_images

    backend = LocalBackend(str(TRAINED), prefix_cache_mb=64)
    processor = backend.loaded.processor
    page = Image.open(SAMPLES / "invoice-acme.png").convert("RGB")
    small = Image.open(SAMPLES / "screenshot-login.png").convert("RGB").resize((300, 200))
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Total?"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    want = processor(text=[text], images=[[page, small]], return_tensors="pt")
    cache = ImageCache(64 * 2**20)
    for _ in range(2):  # processed, then taken from the cache
        got = encode_with_images(processor, text, [page, small], cache, torch.float32)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
            assert torch.equal(got[key], want[key]), key
    assert cache.stats()["hits"] == 2 and cache.stats()["entries"] == 2
    assert len(set(got[IMAGE_DIGESTS])) == 2

    # Through the engine: the second question about the page (a new but equal image) hits the kept pixels.
    backend.generate(_requests(page)[:1])
    backend.generate(_requests(page.copy())[1:2])
    assert backend._images.stats()["hits"] == 1 and backend.prefixes.stats()["hits"] == 1
    assert backend.held_bytes(backend.prepare(_requests(page)[0])) > page.width * page.height  # digests aside
    assert ImageCache(0).max_bytes == 0 and LocalBackend(str(TRAINED))._images.max_bytes == 0  # off with reuse
