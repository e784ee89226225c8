"""Continuous batching on the tiny checkpoint: rows leave as they stop, new ones join, answers stay the same."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from glmv_cli.engine.base import GenerationSettings, Request
from glmv_cli.engine.decode import Batcher, KVBatch
from glmv_cli.engine.local import LocalBackend
from tests.test_engine import SCHEMA


@pytest.fixture(scope="module")
def backend(tiny_model):
    # float32 cache: rows batched answer as alone to 1e-4. The bf16 cache `auto` keeps on a bf16 CPU rounds
    # attention to bf16, so rows may differ in the last bits with the batch (test_engine: the same answers).
    return LocalBackend(str(tiny_model), dtype="float32")


@pytest.fixture
def forward_rows(backend):
    """The batch size of every forward the model runs (prefills and decode steps)."""
    sizes: list[int] = []

    def hook(module, args, kwargs):
        sizes.append(kwargs["input_ids"].shape[0])

    handle = backend.loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
    yield sizes
    handle.remove()


@pytest.fixture
def no_failures(monkeypatch):
    """Batches that never fail: a swallowed error would otherwise hide behind the retry paths."""

    def fail(self, items, error, out_of_memory):
        raise AssertionError(error)

    monkeypatch.setattr(Batcher, "_start_failed", fail)
    monkeypatch.setattr(Batcher, "_step_failed", fail)


def mixed_requests() -> list[Request]:
    """With and without images and a schema, budgets from 8 to 48 tokens: rows stop at very different steps."""
    white, tall = Image.new("RGB", (320, 240), "white"), Image.new("RGB", (150, 450), (200, 180, 160))

    def settings(tokens: int) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=tokens, logprobs=True)

    return [
        Request(images=[white], prompt="Extract", json_schema=SCHEMA, settings=settings(48)),
        Request(prompt="Say hi", settings=settings(8)),
        Request(images=[tall], prompt="Describe this page", settings=settings(40)),
        Request(prompt="Extract the totals, please", json_schema=SCHEMA, settings=settings(32)),
        Request(images=[tall, white], prompt="Two pages", settings=settings(12)),
        Request(prompt="A longer free answer " * 3, settings=settings(24)),
    ]


def assert_same(batched, alone):
    assert batched.token_ids == alone.token_ids
    assert batched.text == alone.text and batched.finish_reason == alone.finish_reason
    assert batched.output_tokens == alone.output_tokens and batched.prompt_tokens == alone.prompt_tokens
    assert batched.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)


def test_rows_joining_mid_flight_answer_as_alone(backend, forward_rows, no_failures):
    reqs = [r.model_copy(update={"tag": i}) for i, r in enumerate(mixed_requests())]
    alone = [backend.generate([r])[0] for r in reqs]
    forward_rows.clear()
    streamed = list(backend.generate_stream(reqs, max_rows=3))
    # Completion order, each with its tag; every request answered once.
    assert sorted(g.tag for g in streamed) == list(range(len(reqs)))
    for gen in streamed:
        assert_same(gen, alone[gen.tag])
    # Three rows at most; later requests were prefilled while others were still decoding.
    assert max(forward_rows) == 3
    assert max(g.batch_size for g in streamed) == 3
    assert streamed[0].tag != 0  # the 8-token answer finished before the first request's 48


def test_generate_keeps_order_and_matches_rows_alone(backend, no_failures):
    reqs = mixed_requests()
    batched = backend.generate(reqs)
    for req, gen in zip(reqs, batched, strict=True):
        assert_same(gen, backend.generate([req])[0])
    assert {g.finish_reason for g in batched} <= {"stop", "length"}


def test_a_finished_row_leaves_the_batch(backend, forward_rows, no_failures):
    settings = [GenerationSettings(max_new_tokens=n) for n in (4, 30, 30)]
    reqs = [Request(prompt=f"Write {i}", settings=s) for i, s in enumerate(settings)]
    gens = backend.generate(reqs)
    assert [g.finish_reason for g in gens] == ["length"] * 3
    assert forward_rows[0] == 3  # one prefill for the three
    # Once the 4-token row is done, every later step runs two rows: its cache rows are gone.
    assert forward_rows[1:4] == [3, 3, 3] and set(forward_rows[4:]) == {2}
    assert len(forward_rows) == 30  # the prefill plus 29 steps (the last token needs no forward)
    # The short row's own times end when it did, not with the batch.
    assert gens[0].decode_s < gens[1].decode_s


def test_join_pads_the_shorter_cache_on_the_left(backend, monkeypatch, no_failures):
    joins = []
    real = KVBatch.join

    def spy(self, other):
        before = [r.length for r in self.rows], [r.length for r in other.rows]
        real(self, other)
        joins.append(before)
        # Every row's real tokens sit at the right end; the masks say so.
        assert self.mask.shape[1] == max(r.length for r in self.rows)
        assert self.mask.sum(dim=1).tolist() == [r.length for r in self.rows]
        assert self.cache.layers[0].keys.shape[2] == self.mask.shape[1]

    monkeypatch.setattr(KVBatch, "join", spy)
    reqs = [
        Request(prompt="short", settings=GenerationSettings(max_new_tokens=3)),
        Request(prompt="a much longer prompt " * 8, settings=GenerationSettings(max_new_tokens=20)),
        Request(
            images=[Image.new("RGB", (200, 200), "gray")], prompt="x", settings=GenerationSettings(max_new_tokens=6)
        ),
    ]
    streamed = {
        g.tag: g
        for g in backend.generate_stream([r.model_copy(update={"tag": i}) for i, r in enumerate(reqs)], max_rows=2)
    }
    assert joins  # the third request joined a running batch
    for i, req in enumerate(reqs):
        assert streamed[i].text == backend.generate([req])[0].text


def test_the_token_budget_caps_rows(backend, forward_rows, monkeypatch):
    reqs = [Request(prompt=f"Budget {i}", settings=GenerationSettings(max_new_tokens=6)) for i in range(4)]
    one_row = backend.estimate_tokens(reqs[0])
    monkeypatch.setattr(LocalBackend, "token_budget", lambda self: 2 * one_row)
    gens = list(backend.generate_stream(reqs, max_rows=8))
    assert len(gens) == 4 and max(forward_rows) == 2


def test_long_prompts_prefill_apart_and_decode_together(backend, monkeypatch, no_failures):
    """The prefill limit (rows x longest prompt) splits prefills, not decoding: answers stay the same."""
    shapes: list[tuple[int, int]] = []  # (rows, 1) of a decode step, (rows, prompt length) of a prefill

    def hook(module, args, kwargs):
        prefill = kwargs["cache"].get_seq_length() == 0
        shapes.append((kwargs["input_ids"].shape[0], kwargs["input_ids"].shape[1] if prefill else 1))

    handle = backend.loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
    reqs = [r.model_copy(update={"tag": i}) for i, r in enumerate(mixed_requests())]
    prompts = [backend.estimate_tokens(r) - r.settings.max_new_tokens for r in reqs]
    try:
        alone = [backend.generate([r])[0] for r in reqs]
        monkeypatch.setattr(backend, "prefill_tokens", max(prompts))  # room for one long prompt at a time
        shapes.clear()
        streamed = {g.tag: g for g in backend.generate_stream(reqs, max_rows=len(reqs))}
        prefills = [rows for rows, length in shapes if length > 1]
        steps = [rows for rows, length in shapes if length == 1]
        monkeypatch.setattr(backend, "prefill_tokens", None)
        shapes.clear()
        list(backend.generate_stream(reqs, max_rows=len(reqs)))
        unlimited = [rows for rows, length in shapes if length > 1]
    finally:
        handle.remove()
    for i, gen in streamed.items():
        assert_same(gen, alone[i])
    assert unlimited == [len(reqs)]  # without a limit: one prefill of every row
    assert len(prefills) > 1 and sum(prefills) == len(reqs)
    assert steps[0] == len(reqs)  # every row prefilled before the first step, which runs them all


def test_seeded_sampling_is_the_same_in_any_batch(backend):
    settings = GenerationSettings(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    reqs = [Request(prompt=f"Sample {i}", settings=settings) for i in range(3)]
    batched = backend.generate(reqs)
    assert [g.text for g in batched] == [backend.generate([r])[0].text for r in reqs]


def test_thinking_then_json_joins_like_any_row(backend, no_failures):
    settings = GenerationSettings(max_new_tokens=48, think=True, think_budget=6)
    reqs = [Request(prompt=f"Think {i}", json_schema=SCHEMA, settings=settings) for i in range(2)]
    reqs.append(Request(prompt="plain", settings=GenerationSettings(max_new_tokens=5)))
    batched = backend.generate(reqs)
    for req, gen in zip(reqs, batched, strict=True):
        alone = backend.generate([req])[0]
        assert (gen.text, gen.thinking, gen.output_tokens) == (alone.text, alone.thinking, alone.output_tokens)
    assert batched[0].thinking is not None and batched[0].finish_reason in ("stop", "length")


def test_a_row_that_cannot_start_fails_alone(backend, monkeypatch):
    real = LocalBackend._run

    def run(self, requests, *args, **kw):
        if any(r.prompt == "bad" for r in requests):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(self, requests, *args, **kw)

    monkeypatch.setattr(LocalBackend, "_run", run)
    reqs = [Request(prompt=p, settings=GenerationSettings(max_new_tokens=6)) for p in ("good", "bad", "fine")]
    gens = backend.generate(reqs)
    assert [g.finish_reason for g in gens] == ["length", "error", "length"]
    assert "device-side assert" in gens[1].error


def test_a_failing_step_fails_only_its_row(backend, monkeypatch):
    """A decode step that fails sends its rows back to run alone; only the row that fails alone fails."""
    real = KVBatch.step

    def step(self, model, runs, **kwargs):
        if any(r.work.request.prompt == "bad" for r in self.rows) and any(
            r.length > r.prompt_tokens for r in self.rows
        ):
            raise RuntimeError("kernel failed")
        return real(self, model, runs, **kwargs)

    monkeypatch.setattr(KVBatch, "step", step)
    reqs = [Request(prompt=p, settings=GenerationSettings(max_new_tokens=6)) for p in ("good", "bad", "fine")]
    gens = backend.generate(reqs)
    assert [g.finish_reason for g in gens] == ["length", "error", "length"]
    assert gens[1].error == "RuntimeError: kernel failed"
    monkeypatch.setattr(KVBatch, "step", real)
    assert gens[0].text == backend.generate([reqs[0]])[0].text


def test_out_of_memory_in_a_step_halves_rows_and_budget(backend, monkeypatch):
    real = KVBatch.step

    def step(self, model, runs, **kwargs):
        if len(self.rows) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, model, runs, **kwargs)

    monkeypatch.setattr(KVBatch, "step", step)
    monkeypatch.setattr(backend, "_budget_scale", 1.0)
    reqs = [Request(prompt=f"row {i}", settings=GenerationSettings(max_new_tokens=5)) for i in range(3)]
    gens = list(backend.generate_stream(reqs, max_rows=3))
    assert [g.finish_reason for g in gens] == ["length"] * 3
    assert backend._budget_scale < 1


def test_stream_hands_out_the_answer_text(backend):
    pieces: list[str] = []
    req = Request(prompt="Extract", json_schema=SCHEMA, settings=GenerationSettings(max_new_tokens=48))
    gen = backend.stream(req, pieces.append)
    assert "".join(pieces).strip() == gen.text and gen.text == backend.generate([req])[0].text


def test_extraction_streams_documents_with_the_batch_paths_answers(tiny_model, tmp_path):
    from glmv_cli.engine.factory import create_backend
    from glmv_cli.extraction.pipeline import ExtractOptions, Extractor
    from glmv_cli.extraction.schemas import resolve_schema

    for i in range(5):
        Image.new("RGB", (200 + 60 * i, 160), "white").save(tmp_path / f"page{i}.png")
    paths = sorted(tmp_path.iterdir())
    options = ExtractOptions(settings=GenerationSettings(max_new_tokens=40 + 20 * 3), use_cache=False, batch_size=3)

    def run(stream: bool):
        extractor = Extractor(
            create_backend(str(tiny_model), dtype="float32"), resolve_schema("vendor, total float"), options
        )
        extractor._stream_failed = not stream  # the batch path, as a backend without generate_stream takes
        return extractor, list(extractor.run(paths))

    streamed, records = run(stream=True)
    assert not streamed._stream_failed and streamed.model_calls == 1  # one stream for every document
    assert [r.file for r in records] == [str(p) for p in paths]  # input order, whatever the completion order
    _, batched = run(stream=False)
    assert [(r.status, r.data) for r in records] == [(r.status, r.data) for r in batched]


def test_forced_tokens_ride_along_with_the_chosen_one(backend, monkeypatch, no_failures):
    """Keys and punctuation the grammar forces are fed in the chosen token's forward: fewer forwards, same answers."""
    widths: list[int] = []  # tokens per row of every decode step

    def hook(module, args, kwargs):
        if kwargs["cache"].get_seq_length() > 0:
            widths.append(kwargs["input_ids"].shape[1])

    reqs = [r.model_copy(update={"tag": i}) for i, r in enumerate(mixed_requests()) if r.json_schema is not None]
    handle = backend.loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        fast = {g.tag: g for g in backend.generate_stream(reqs, max_rows=len(reqs))}
        fast_widths, widths[:] = list(widths), []
        monkeypatch.setattr(Batcher, "_fast_forward", lambda self, processor, row: [])
        slow = {g.tag: g for g in backend.generate_stream(reqs, max_rows=len(reqs))}
    finally:
        handle.remove()
    assert max(fast_widths) > 1 and len(fast_widths) < len(widths)
    for tag, gen in fast.items():
        # The same text, token for token, with a log-prob for every token (forced ones from the wide step).
        assert gen.text == slow[tag].text and gen.token_ids == slow[tag].token_ids
        assert len(gen.token_logprobs) == len(gen.token_ids) and gen.output_tokens == slow[tag].output_tokens
        assert gen.token_logprobs == pytest.approx(slow[tag].token_logprobs, abs=1e-4)


def test_the_cache_grows_into_spare_columns_with_the_same_answers(backend, monkeypatch, no_failures):
    """A decode step writes into the layer's spare columns; the cache is copied when rows change or room runs out."""
    from transformers.cache_utils import DynamicLayer

    from glmv_cli.engine import decode

    copies, writes = [], []
    real_append = decode._append

    def spy(filled, new, buffer):
        out, grown = real_append(filled, new, buffer)
        (writes if grown is buffer else copies).append(new.shape[-2])
        return out, grown

    monkeypatch.setattr(decode, "_append", spy)
    reqs = [r.model_copy(update={"tag": i}) for i, r in enumerate(mixed_requests())]
    grown = {g.tag: g for g in backend.generate_stream(reqs, max_rows=len(reqs))}
    assert len(writes) > 3 * len(copies)  # most steps write in place

    monkeypatch.setattr(decode.GrowingLayer, "update", DynamicLayer.update)  # concatenate at every step
    concatenated = {g.tag: g for g in backend.generate_stream(reqs, max_rows=len(reqs))}
    for tag, gen in grown.items():
        assert_same(gen, concatenated[tag])


def test_rows_leave_and_join_inside_buffers_with_room():
    """Dropping rows moves the kept ones down in place, joining writes both into one new buffer with room:
    the next step's columns go into the spare room either way (no second copy)."""
    from glmv_cli.engine.decode import GrowingLayer

    layer = GrowingLayer()
    keys, values = torch.randn(4, 2, 5, 3), torch.randn(4, 2, 5, 3)
    layer.update(keys, values)
    buffer = layer._key_buffer
    layer.keep_rows([1, 3])
    assert torch.equal(layer.keys, keys[[1, 3]]) and torch.equal(layer.values, values[[1, 3]])
    layer.update(torch.ones(2, 2, 1, 3), torch.ones(2, 2, 1, 3))
    assert layer._key_buffer.data_ptr() == buffer.data_ptr() and layer.keys.shape == (2, 2, 6, 3)

    other = GrowingLayer()
    other.update(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3))
    before = layer.keys.clone()
    layer.join(other, 6)
    assert torch.equal(layer.keys[:2], before) and torch.equal(layer.keys[2, :, 3:], other.keys[0])
    assert not layer.keys[2, :, :3].any() and not layer.values[2, :, :3].any()  # zeros, never NaN
    joined = layer._key_buffer
    layer.update(torch.ones(3, 2, 1, 3), torch.ones(3, 2, 1, 3))
    assert layer._key_buffer is joined

    kept = layer.keys[[2, 0]].clone()
    layer.keep_rows([2, 0])  # a new order: gathered into a new tensor
    assert torch.equal(layer.keys, kept)


def test_step_mask_is_each_rows_columns_and_causal_among_the_new_ones():
    from glmv_cli.engine.decode import step_mask

    mask = torch.tensor([[0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1]])
    for width in (1, 3):
        additive = step_mask(mask, width, torch.bfloat16)
        assert additive.shape == (2, 1, width, 6) and additive.dtype == torch.bfloat16
        attended = additive == 0
        assert (additive[~attended] == torch.finfo(torch.bfloat16).min).all()
        start = mask.shape[1] - width
        for b in range(2):
            for i in range(width):
                want = [bool(mask[b, j]) and (j < start or j - start <= i) for j in range(6)]
                assert attended[b, 0, i].tolist() == want


def test_flash_kernels_keep_the_2d_mask():
    from types import SimpleNamespace

    from glmv_cli.engine.decode import _step_attention_mask

    mask = torch.ones(2, 5, dtype=torch.long)
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert _step_attention_mask(flash, mask, 2, torch.float32) is mask
    sdpa = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    assert _step_attention_mask(sdpa, mask, 2, torch.float32).shape == (2, 1, 2, 5)


def test_prompts_of_different_lengths_prefill_causally_without_a_mask(backend, monkeypatch, no_failures):
    """Left-padded prompts prefill padded on the right with no mask (attention's causal kernel), then decode
    from the left-padded cache with the same answers as each alone."""
    seen: list[tuple[bool, bool]] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        if query.shape[2] > 1 and query.shape[2] == key.shape[2]:  # a prefill: as many queries as keys
            seen.append((attn_mask is None, is_causal))
        return real(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    reqs = [
        Request(prompt="Say hi", settings=GenerationSettings(max_new_tokens=8, logprobs=True)),
        Request(prompt="A longer free answer " * 3, settings=GenerationSettings(max_new_tokens=12, logprobs=True)),
    ]
    alone = [backend.generate([r])[0] for r in reqs]
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    batched = backend.generate(reqs)
    assert seen and all(no_mask and causal for no_mask, causal in seen)
    for gen, want in zip(batched, alone, strict=True):
        assert_same(gen, want)
