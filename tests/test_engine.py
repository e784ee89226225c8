"""The local backend on the tiny checkpoint: the real loading and generation path."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from glmv_cli.engine.base import GenerationSettings, Request
from glmv_cli.engine.loader import looks_like_path
from glmv_cli.engine.local import LocalBackend
from glmv_cli.engine.text import AnswerFilter, split_thinking
from glmv_cli.errors import ModelLoadError, UsageError

SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"anyOf": [{"type": "string", "maxLength": 30}, {"type": "null"}]},
        "total": {"anyOf": [{"type": "number", "minimum": -1e6, "maximum": 1e6}, {"type": "null"}]},
        "items": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 10}},
    },
    "required": ["vendor", "total", "items"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def backend(tiny_model):
    return LocalBackend(str(tiny_model))


def images():
    return [Image.new("RGB", (640, 480), "white"), Image.new("RGB", (300, 900), (200, 180, 160))]


def test_loads_real_architecture_offline(backend):
    lm = backend.loaded
    assert type(lm.model).__name__ == "Glm4vForConditionalGeneration"
    assert lm.model.config.model_type == "glm4v"
    assert lm.device == "cpu" and lm.quant == "none"
    assert len(lm.eos_ids) == 3  # endoftext, <|user|>, <|observation|>
    assert lm.vocab_size > len(lm.tokenizer)  # padded vocabulary, as in the real model


def test_thinking_off_reaches_the_prompt(backend):
    prompt = backend._prompts([Request(images=images()[:1], prompt="Total?")], think=False)[0]
    assert prompt.startswith("[gMASK]<sop>")
    assert "<|begin_of_image|><|image|><|end_of_image|>" in prompt
    assert "/nothink" in prompt and prompt.endswith("<think></think>\n")
    thinking = backend._prompts([Request(images=images()[:1], prompt="Total?")], think=True)[0]
    assert "/nothink" not in thinking and not thinking.endswith("</think>\n")


def test_constrained_batch_matches_single_rows(backend):
    settings = GenerationSettings(max_new_tokens=200)
    reqs = [Request(images=[img], prompt="Extract", json_schema=SCHEMA, settings=settings) for img in images()]
    batched = backend.generate(reqs)
    for req, gen in zip(reqs, batched, strict=True):
        assert gen.finish_reason == "stop", gen
        assert set(json.loads(gen.text)) == {"vendor", "total", "items"}
        assert backend.generate([req])[0].text == gen.text
    assert batched[0].batch_size == 2 and batched[0].prompt_tokens > 0 and batched[0].ttft_s is not None


def test_logprobs_are_raw_not_masked(backend):
    gen = backend.generate(
        [
            Request(
                images=images()[:1],
                prompt="x",
                json_schema=SCHEMA,
                settings=GenerationSettings(max_new_tokens=200, logprobs=True),
            )
        ]
    )[0]
    assert gen.token_logprobs and len(gen.token_logprobs) == len(gen.tokens)
    # Forced tokens (the opening brace, keys) would read ~0 if masked scores leaked through.
    assert all(lp < -0.5 for lp in gen.token_logprobs[:3])
    assert "".join(gen.tokens) == gen.text


def test_streaming_yields_several_chunks(backend):
    pieces: list[str] = []
    gen = backend.stream(
        Request(images=images()[:1], prompt="Describe", settings=GenerationSettings(max_new_tokens=12)), pieces.append
    )
    assert len(pieces) > 1
    assert "".join(pieces).strip() == gen.text


def test_thinking_then_constrained_json(backend):
    settings = GenerationSettings(max_new_tokens=200, think=True, think_budget=8)
    prompts = []
    real = backend._prompts

    def spy(requests, think):
        prompts.extend(real(requests, think))
        return prompts[-len(requests) :]

    backend._prompts = spy
    try:
        gen = backend.generate([Request(images=images()[:1], prompt="x", json_schema=SCHEMA, settings=settings)])[0]
    finally:
        del backend._prompts
    assert gen.thinking is not None and not gen.thinking.startswith("{")  # thinking is free text
    json.loads(gen.text)
    thinking_prompt, answer_prompt = prompts[-2:]
    assert "/nothink" not in thinking_prompt and "/nothink" not in answer_prompt
    assert answer_prompt.startswith(thinking_prompt) and answer_prompt.endswith("</think>\n")


def test_cpu_int8_quantisation(tiny_model):
    backend = LocalBackend(str(tiny_model), quant="8bit")
    assert backend.loaded.quant == "8bit"
    gen = backend.generate(
        [Request(images=images()[:1], prompt="x", json_schema=SCHEMA, settings=GenerationSettings(max_new_tokens=200))]
    )[0]
    json.loads(gen.text)


def test_4bit_on_cpu_is_a_clear_error(tiny_model):
    with pytest.raises(UsageError, match="needs a CUDA GPU"):
        _ = LocalBackend(str(tiny_model), quant="4bit", device="cpu").loaded


def test_missing_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        _ = LocalBackend("/nonexistent/model").loaded
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        _ = LocalBackend(str(tmp_path / "empty")).loaded
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache") as info:
        _ = LocalBackend("nobody-here/no-such-model").loaded  # HF_HUB_OFFLINE=1: no network
    assert "hf download nobody-here/no-such-model" in info.value.hint


def test_model_spec_forms():
    assert not looks_like_path("zai-org/GLM-4.6V-Flash")
    assert looks_like_path("./model") and looks_like_path("/models/glm") and looks_like_path("a/b/c")


def test_answer_filter_strips_markers_across_pieces():
    f = AnswerFilter(thinking=True)
    pieces = ["I think", " hard</th", "ink>The <|begin_", "of_box|>42<|end_of_box|> EUR", " <b>"]
    out = "".join(f.feed(p) for p in pieces) + f.flush()
    assert out == "The 42 EUR <b>"
    assert split_thinking("<think>hmm</think><|begin_of_box|>7<|end_of_box|>") == ("hmm", "7")


@pytest.mark.gpu
def test_cuda_4bit_keeps_vision_unquantised(tiny_model):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    pytest.importorskip("bitsandbytes")
    backend = LocalBackend(str(tiny_model), quant="4bit")
    lm = backend.loaded
    assert lm.device == "cuda" and lm.quant == "4bit"
    visual = [type(m).__name__ for m in lm.model.model.visual.modules()]
    assert not any("4bit" in name for name in visual)
    text = [type(m).__name__ for m in lm.model.model.language_model.modules()]
    assert any("4bit" in name for name in text)
    gen = backend.generate(
        [Request(images=images()[:1], prompt="x", json_schema=SCHEMA, settings=GenerationSettings(max_new_tokens=200))]
    )[0]
    json.loads(gen.text)


@pytest.mark.gpu
def test_stock_processor_with_torchvision(tiny_model):
    pytest.importorskip("torchvision")
    backend = LocalBackend(str(tiny_model))
    assert backend.loaded.processor_kind == "stock"


def test_prepared_requests_collate_like_the_processor(backend):
    import torch

    from glmv_cli.engine.local import collate

    short = GenerationSettings(max_new_tokens=24)  # the inputs are what is compared; answers only agree
    reqs = [Request(images=[img], prompt=f"Extract {i}" * (i + 1), settings=short) for i, img in enumerate(images())]
    texts = backend._prompts(reqs, think=False)
    batch = backend.loaded.processor(text=texts, images=[r.images for r in reqs], return_tensors="pt", padding=True)
    prepared = [backend.prepare(r) for r in reqs]
    stacked = collate([p.prepared[1][0] for p in prepared], backend.loaded.tokenizer.pad_token_id)
    for key, value in stacked.items():
        assert torch.equal(value, batch[key]), key
    # A prepared request reused after its prompt changed (a repair) is encoded again, not reused.
    changed = prepared[0].model_copy(update={"prompt": "something else"})
    assert backend._encoded(changed, think=False)[0]["input_ids"].shape != prepared[0].prepared[1][0]["input_ids"].shape
    gens = backend.generate(prepared)
    assert [g.text for g in gens] == [g.text for g in backend.generate(reqs)]


def test_error_rows_may_only_stop():
    import torch

    from glmv_cli.engine.steps import StepProcessor, apply_bitmask

    steps = StepProcessor([object()], 128, {5, 31, 63})  # 31 and 63 sit on the sign bit of an int32 word
    steps._allow_only_eos(0)
    scores = torch.zeros(1, 128)
    apply_bitmask(scores, steps.bitmask)
    assert torch.isfinite(scores[0]).nonzero().flatten().tolist() == [5, 31, 63]


def test_tiny_checkpoint_is_deterministic(tiny_model, tmp_path):
    from glmv_cli.engine.tiny import build_tiny

    again = build_tiny(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name


def test_tiny_checkpoint_takes_the_real_text_limits(backend):
    text = backend.loaded.model.config.text_config
    assert text.max_position_embeddings == 131072  # the real 128K context: long documents fit as they would
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 64  # vLLM's CPU attention rejects 16
    rope = text.rope_parameters
    assert sum(rope["mrope_section"]) == head_dim * rope["partial_rotary_factor"] / 2
    linears = [m for m in backend.loaded.model.modules() if type(m).__name__ == "Linear"]
    assert min(m.in_features for m in linears) >= 64  # bitsandbytes 4-bit on CPU needs it


def test_tiny_variant_with_real_image_limits(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from glmv_cli.engine.loader import load_processor
    from glmv_cli.engine.tiny import build_tiny

    real = build_tiny(tmp_path / "real", real_image_limits=True)
    # The same language model; a narrower vision tower (its cost grows with the square of a page's patches).
    test_weights, real_weights = load_file(tiny_model / "model.safetensors"), load_file(real / "model.safetensors")
    text = {k for k in test_weights if ".visual." not in k}
    assert text and all(test_weights[k].equal(real_weights[k]) for k in text)
    assert real_weights.keys() - text == {k for k in real_weights if ".visual." in k}

    def visual_tokens(folder, height, width):
        image_processor = load_processor(str(folder), None)[0].image_processor
        return image_processor.get_number_of_image_patches(height, width) // image_processor.merge_size**2

    a4_150dpi = (1754, 1240)
    assert visual_tokens(tiny_model, *a4_150dpi) <= 256  # the test cap
    assert 2700 <= visual_tokens(real, *a4_150dpi) <= 2800  # about 2,772, as the real processor gives
    assert visual_tokens(real, 8000, 8000) <= 6144  # the real cap: 28 x 28 x 2 x 6144 pixels over 2 frames


def test_pages_are_fitted_to_the_processors_own_cap(tiny_model, tmp_path):
    """glmv fits a page to exactly what the processor keeps: the processor then only rounds it to whole
    patches, it never shrinks it a second time (two resamplings blur small print)."""
    from glmv_cli.engine.tiny import build_tiny
    from glmv_cli.inputs import fit_for_vision

    real = LocalBackend(str(build_tiny(tmp_path / "real", real_image_limits=True)))
    assert real.max_image_pixels() == 28 * 28 * 6144  # 6,144 visual tokens of 28 x 28 pixels
    for backend in (LocalBackend(str(tiny_model)), real):
        cap = backend.max_image_pixels()
        image_processor = backend.loaded.processor.image_processor
        for width, height in ((1024, 762), (762, 1024), (9000, 6000), (3000, 200)):
            fitted = fit_for_vision(Image.new("RGB", (width, height), "white"), max_pixels=cap)
            grid = image_processor(images=[fitted], return_tensors="pt")["image_grid_thw"][0].tolist()
            kept = (grid[1] * 14, grid[2] * 14)  # (height, width) after the processor's resize
            assert all(abs(k - f) < 28 for k, f in zip(kept, (fitted.height, fitted.width), strict=True)), (
                width,
                height,
                fitted.size,
                kept,
            )


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA GPU of a chosen compute capability and memory, as far as the loader's questions go."""
    import sys
    import types

    import torch

    def install(capability, memory_gb=16):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        props = types.SimpleNamespace(total_memory=memory_gb * 2**30)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))  # only imported

    return install


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"), ((8, 9), "bfloat16"), ((9, 0), "bfloat16")],
)
def test_auto_dtype_follows_the_gpu(fake_gpu, capability, expected):
    import torch

    from glmv_cli.engine.loader import plan_load

    fake_gpu(capability)  # 16 GB: auto picks 4-bit
    plan = plan_load()
    assert plan.device == "cuda" and plan.quant == "4bit"
    assert plan.dtype == getattr(torch, expected)
    qconfig = plan.quantization_config
    assert qconfig.load_in_4bit and qconfig.bnb_4bit_compute_dtype == plan.dtype  # 4-bit computes in the same dtype
    assert qconfig.llm_int8_skip_modules == ["model.visual", "lm_head"]


def test_dtype_flag_overrides_the_gpu(fake_gpu):
    import torch

    from glmv_cli.engine.loader import plan_load

    fake_gpu((7, 5))
    plan = plan_load(dtype="bf16", quant="4bit")
    assert plan.dtype == torch.bfloat16 and plan.quantization_config.bnb_4bit_compute_dtype == torch.bfloat16
    fake_gpu((9, 0), memory_gb=80)
    plan = plan_load(dtype="float16")
    assert plan.quant == "none" and plan.quantization_config is None and plan.dtype == torch.float16
    with pytest.raises(UsageError, match="unknown --dtype"):
        plan_load(dtype="fp8")


def test_cpu_plan_is_float32_without_bitsandbytes():
    import torch

    from glmv_cli.engine.loader import plan_load

    plan = plan_load(device="cpu")
    assert (plan.device, plan.dtype, plan.quant, plan.quantization_config) == ("cpu", torch.float32, "none", None)


@pytest.mark.parametrize("fast", [True, False])
def test_streamed_text_is_the_whole_decode_with_constant_work(tiny_model, fast):
    """Pieces join to exactly the full decode; each token decodes a bounded window, not the whole row."""
    from transformers import AutoTokenizer

    from glmv_cli.engine.local import _TextFeed

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = '{"vendor":"Zürich Café € 12,50 — 日本","n":12}' * 20
    ids = tok.encode(text, add_special_tokens=False)
    lengths = []
    real_decode = tok.decode

    def counting(token_ids, **kwargs):
        lengths.append(len(token_ids))
        return real_decode(token_ids, **kwargs)

    pieces: list[str] = []
    feed = _TextFeed(tok, set(), pieces.append, thinking=False)
    if not fast:
        feed.stream = None  # the fallback for tokenizers without DecodeStream
        tok.decode = counting
    for token in ids:
        feed(token)
    feed.end()
    assert "".join(pieces) == real_decode(ids, skip_special_tokens=False)
    assert max(lengths, default=0) <= _TextFeed.WINDOW + 4  # plus a character still arriving (<= 4 bytes)


def test_cpu_cache_is_bf16_under_auto_where_the_cpu_computes_bf16(monkeypatch, fake_gpu):
    import torch

    from glmv_cli.engine import loader

    monkeypatch.setattr(loader, "cpu_computes_bf16", lambda: True)
    plan = loader.plan_load(device="cpu")
    assert plan.dtype == torch.float32 and plan.kv_dtype == torch.bfloat16  # float32 products, half the cache
    assert loader.plan_load(device="cpu", dtype="float32").kv_dtype is None  # an explicit dtype: the cache's too
    assert loader.plan_load(device="cpu", dtype="bf16").kv_dtype is None
    monkeypatch.setattr(loader, "cpu_computes_bf16", lambda: False)
    assert loader.plan_load(device="cpu").kv_dtype is None
    monkeypatch.setattr(loader, "cpu_computes_bf16", lambda: True)
    fake_gpu((9, 0), memory_gb=80)
    assert loader.plan_load().kv_dtype is None  # a GPU computes in its cache's dtype


def test_bf16_cache_answers_as_the_float32_one(monkeypatch):
    """Trained checkpoint, text-layer questions: a bf16 cache beside the float32 model gives the same answers,
    first prefills and follow-ups (prefix cache) alike, with the cache really kept in bf16."""
    import math

    import torch

    from glmv_cli.engine import decode, loader
    from glmv_cli.extraction.prompt import pick_text_hint, question_prompt
    from glmv_cli.inputs import load_document
    from tests.conftest import ROOT, SAMPLES

    trained = str(ROOT / "models" / "glmv-tiny-trained")
    page = load_document(SAMPLES / "invoice-acme.pdf", pages=[1], max_pages=1).pages[0]
    questions = ["What is the invoice number?", "What is the total?", "Who is the vendor?", "What is the date?"]
    settings = GenerationSettings(max_new_tokens=40, logprobs=True)
    hint = pick_text_hint([page.text], "auto")
    requests = [Request(images=[page.image], prompt=question_prompt(q, hint), settings=settings) for q in questions]

    full = LocalBackend(trained, dtype="float32", prefix_cache_mb=0)
    want = full.generate(requests)
    assert full.loaded.kv_dtype is None and all(g.finish_reason == "stop" for g in want)

    monkeypatch.setattr(loader, "cpu_computes_bf16", lambda: True)
    caches = []
    made = decode.growing_cache
    monkeypatch.setattr(decode, "growing_cache", lambda *a: caches.append(made(*a)) or caches[-1])
    half = LocalBackend(trained, prefix_cache_mb=64)
    half._loaded = loader.load_model(trained, device="cpu")  # not the process's shared copy: this one's plan
    assert half.loaded.model.dtype == torch.float32 and half.loaded.kv_dtype == torch.bfloat16
    got = half.generate(requests[:1]) + half.generate(requests[1:])  # then three follow-ups on the kept page
    assert half.prefixes.stats()["hits"] == 3
    assert [g.text for g in got] == [g.text for g in want]
    assert {layer.keys.dtype for cache in caches for layer in cache.layers} == {torch.bfloat16}
    for a, b in zip(got, want, strict=True):
        # the tokens' probabilities (what confidence is made of) agree closely: a bf16 cache keeps about three
        # digits of each key and value; the retrained checkpoint's widest gap here is 0.038 (0.660 for 0.698)
        probabilities = [math.exp(x) for x in a.token_logprobs]
        assert probabilities == pytest.approx([math.exp(x) for x in b.token_logprobs], abs=0.05)


def test_patch_embedding_runs_as_the_product_it_is(tiny_model):
    """The loaded model's patch embedding is a matrix product with the checkpoint's Conv3d weights, and
    gives what that convolution gives."""
    import torch

    from glmv_cli.engine.loader import PatchProduct

    embed = LocalBackend(str(tiny_model)).loaded.model.model.visual.patch_embed
    assert isinstance(embed.proj, PatchProduct)
    conv = torch.nn.Conv3d(
        embed.in_channels, embed.embed_dim, kernel_size=embed.proj.weight.shape[2:], stride=embed.proj.weight.shape[2:]
    )
    with torch.no_grad():
        conv.weight.copy_(embed.proj.weight)
        conv.bias.copy_(embed.proj.bias)
        patches = torch.randn(37, embed.in_channels * embed.temporal_patch_size * embed.patch_size**2)
        want = conv(patches.view(-1, embed.in_channels, *conv.kernel_size).to(conv.weight.dtype)).view(37, -1)
        assert torch.allclose(embed(patches), want, atol=1e-5)
    assert "proj.weight" in dict(embed.named_parameters())  # the checkpoint's names
