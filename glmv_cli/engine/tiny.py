"""Build a tiny random-weight checkpoint of GLM-4.6V-Flash's architecture, offline and deterministically.

The real code path (AutoModelForImageTextToText, the checkpoint's processor and chat template,
several EOS ids, left-padded batches) runs against it in a fraction of a second. Values are
meaningless; shapes, batching, constraints and validation are real.

It keeps the real model's scale where scale changes behaviour: 131,072 positions, and an
attention head size of 64 (vLLM's CPU attention rejects 16), so the same checkpoint also serves
in vLLM. Only the image cap is small by default, so tests stay fast; the `real_image_limits`
variant takes the real processor's cap (up to 6,144 visual tokens per image) for memory and
throughput benchmarks, with the same language model and a one-layer vision tower.

    python -m glmv_cli.engine.tiny build/tiny-glm4v
    python -m glmv_cli.engine.tiny build/tiny-glm4v-real --real-image-limits
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# The real text limit (GLM-4.6V-Flash's 128K context): a smaller one silently lets a
# many-page document run past what the model allows.
MAX_POSITIONS = 131072
# A head size vLLM's CPU attention accepts: one query head and one KV head of 64.
HEAD_DIM = 64
# Visual tokens per image are capped by `longest_edge` (pixels x 2 frames for a still image).
TEST_LONGEST_EDGE = 28 * 28 * 2 * 256  # at most 256 visual tokens: CPU tests stay fast
# The real checkpoint's cap (its preprocessor_config.json): 9,633,792 pixels, at most 6,144 visual tokens
# (transformers' Glm46VImageProcessor default, 28 x 28 x 15,000, is larger).
REAL_LONGEST_EDGE = 28 * 28 * 2 * 6144
# The real-limits variant's vision tower: one narrow layer. Its attention runs over every patch of a
# page (about 11,000 at 150 dpi), so the test tower (2 layers of 64) spends 1.3 s of CPU per page and
# a 1,000-page memory benchmark half an hour; pixel values, visual tokens and text lengths stay real.
# (Its 16-wide layers are below what bitsandbytes accepts on CPU: load it unquantised.)
REAL_SCALE_VISION = {"depth": 1, "hidden_size": 16, "num_heads": 1}
TEST_VISION = {"depth": 2, "hidden_size": 64, "num_heads": 4}
SHORTEST_EDGE = 112 * 112

# GLM-4 special tokens, in the real tokenizer's order (ids there start at 151329).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|begin_of_transcription|>",
    "<|end_of_transcription|>",
    "<|code_prefix|>",
    "<|code_middle|>",
    "<|code_suffix|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "/nothink",
    "<|begin_of_box|>",
    "<|end_of_box|>",
]
# Tokens the model may emit as text (kept when decoding with skip_special_tokens=False).
NON_SPECIAL = {
    "<think>",
    "</think>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
    "/nothink",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
}

# The GLM-4.5V/4.6V chat template, ported from the real checkpoint's (rendered with transformers'
# trim_blocks and lstrip_blocks, so a block tag's own line adds nothing): [gMASK]<sop>; a `# Tools`
# system turn when tools are offered; `/nothink` on every user turn when thinking is off (unless the
# turn already ends with it); a past assistant turn as `<think></think>` (its reasoning inside when it
# follows the last user turn) and its stripped text; `<tool_call>NAME` with <arg_key>/<arg_value>
# pairs (strings raw, anything else as JSON); tool results as `<|observation|>` + <tool_response>;
# and a generation prompt that opens an empty think block only when thinking is off.
# tests/test_chat_template.py holds it to the real template's renderings (../shared/glm46v/FACTS.md).
CHAT_TEMPLATE = r"""[gMASK]<sop>
{%- if tools -%}
<|system|>
# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{% for tool in tools %}
{{ tool | tojson(ensure_ascii=False) }}
{% endfor %}
</tools>

For each function call, output the function name and arguments within the following XML format:
<tool_call>{function-name}
<arg_key>{arg-key-1}</arg_key>
<arg_value>{arg-value-1}</arg_value>
<arg_key>{arg-key-2}</arg_key>
<arg_value>{arg-value-2}</arg_value>
...
</tool_call>{%- endif -%}
{%- macro visible_text(content) -%}
    {%- if content is string -%}
        {{- content }}
    {%- elif content is iterable and content is not mapping -%}
        {%- for item in content -%}
            {%- if item is mapping and item.type == 'text' -%}
                {{- item.text }}
            {%- elif item is mapping and (item.type == 'image' or 'image' in item) -%}
                <|begin_of_image|><|image|><|end_of_image|>
            {%- elif item is mapping and (item.type == 'video' or 'video' in item) -%}
                <|begin_of_video|><|video|><|end_of_video|>
            {%- elif item is string -%}
                {{- item }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{- content }}
    {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(last_user_index=-1) %}
{%- for m in messages %}
    {%- if m.role == 'user' %}
        {% set ns.last_user_index = loop.index0 -%}
    {%- endif %}
{%- endfor %}
{% for m in messages %}
{%- if m.role == 'user' -%}<|user|>
{% if m.content is string %}
{{ m.content }}
{%- else %}
{%- for item in m.content %}
{% if item.type == 'video' or 'video' in item %}
<|begin_of_video|><|video|><|end_of_video|>{% elif item.type == 'image' or 'image' in item %}
<|begin_of_image|><|image|><|end_of_image|>{% elif item.type == 'text' %}
{{ item.text }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '/nothink' if (enable_thinking is defined and not enable_thinking and not visible_text(m.content).endswith("/nothink")) else '' -}}
{%- elif m.role == 'assistant' -%}
<|assistant|>
{%- set reasoning_content = '' %}
{%- set content = visible_text(m.content) %}
{%- if m.reasoning_content is string %}
    {%- set reasoning_content = m.reasoning_content %}
{%- else %}
    {%- if '</think>' in content %}
        {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
        {%- set content = content.split('</think>')[-1].lstrip('\n') %}
    {%- endif %}
{%- endif %}
{%- if loop.index0 > ns.last_user_index and reasoning_content -%}
{{ '\n<think>' + reasoning_content.strip() +  '</think>'}}
{%- else -%}
{{ '\n<think></think>' }}
{%- endif -%}
{%- if content.strip() -%}
{{ '\n' + content.strip() }}
{%- endif -%}
{% if m.tool_calls %}
{% for tc in m.tool_calls %}
{%- if tc.function %}
    {%- set tc = tc.function %}
{%- endif %}
{{ '\n<tool_call>' + tc.name }}
{% set _args = tc.arguments %}
{% for k, v in _args.items() %}
<arg_key>{{ k }}</arg_key>
<arg_value>{{ v | tojson(ensure_ascii=False) if v is not string else v }}</arg_value>
{% endfor %}
</tool_call>{% endfor %}
{% endif %}
{%- elif m.role == 'tool' -%}
{%- if m.content is string -%}
{%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
    {{- '<|observation|>' }}
{%- endif %}
{{- '\n<tool_response>\n' }}
{{- m.content }}
{{- '\n</tool_response>' }}
{% elif m.content is iterable and m.content is not mapping %}
{%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
{{- '<|observation|>' }}
{%- endif %}
{{- '\n<tool_response>\n' }}
{%- for tr in m.content -%}
  {%- if tr is mapping and tr.type is defined -%}
    {%- set t = tr.type | lower -%}
    {%- if t == 'text' and tr.text is defined -%}
{{ tr.text }}
    {%- elif t in ['image', 'image_url'] -%}
<|begin_of_image|><|image|><|end_of_image|>
    {%- elif t in ['video', 'video_url'] -%}
<|begin_of_video|><|video|><|end_of_video|>
    {%- else -%}
{{ tr | tojson(ensure_ascii=False) }}
    {%- endif -%}
  {%- else -%}
{{ tr.output if tr.output is defined else tr }}
  {%- endif -%}
{%- endfor -%}
{{- '\n</tool_response>' }}
{%- else -%}
<|observation|>{% for tr in m.content %}

<tool_response>
{{ tr.output if tr.output is defined else tr }}
</tool_response>{% endfor -%}
{% endif -%}
{%- elif m.role == 'system' -%}
<|system|>
{{ visible_text(m.content) }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant|>
{{'<think></think>\n' if (enable_thinking is defined and not enable_thinking) else ''}}
{%- endif -%}"""  # noqa: E501

# Local training text for the byte-level BPE: document words, JSON punctuation, digits.
_WORDS = [
    "invoice",
    "receipt",
    "total",
    "subtotal",
    "tax",
    "vat",
    "amount",
    "due",
    "date",
    "number",
    "vendor",
    "customer",
    "address",
    "currency",
    "EUR",
    "USD",
    "GBP",
    "quantity",
    "unit",
    "price",
    "description",
    "item",
    "line",
    "items",
    "payment",
    "method",
    "cash",
    "card",
    "merchant",
    "store",
    "tip",
    "change",
    "balance",
    "screenshot",
    "button",
    "link",
    "input",
    "error",
    "login",
    "password",
    "email",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "what",
    "who",
    "when",
    "where",
    "how",
    "much",
    "page",
    "document",
    "title",
    "summary",
    "key",
    "value",
    "language",
    "english",
    "french",
    "german",
    "spanish",
    "null",
    "true",
    "false",
    "name",
    "phone",
    "street",
    "city",
    "Rechnung",
    "Facture",
    "Factura",
    "Betrag",
    "Montant",
    "Importe",
    "Datum",
    "fecha",
]
_PUNCT = ['{"', '": ', '", "', '"}', "[", "]", ", ", ": ", "null", "-", ".", "/", "\n", "  "]


def _training_text() -> list[str]:
    lines = []
    for i, word in enumerate(_WORDS):
        number = f"{(i * 7919) % 10000}.{i % 100:02d}"
        date = f"20{10 + i % 16}-{1 + i % 12:02d}-{1 + i % 28:02d}"
        lines.append(f'{{"{word}": "{word.title()} {number}", "date": "{date}", "n": {i}}}')
        lines.append(" ".join(_WORDS[i:] + _WORDS[:i]))
    lines.append("".join(_PUNCT) * 4)
    lines.append("0123456789 " * 8)
    return lines


def _build_tokenizer(out: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    from tokenizers import AddedToken

    fast.add_special_tokens(
        {
            "additional_special_tokens": [
                AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for t in SPECIAL_TOKENS
            ]
        }
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return len(fast)


def glm4v_config(
    ids: dict[str, int],
    vocab: int,
    vision: dict[str, int],
    *,
    hidden: int = 64,
    layers: int = 2,
    intermediate: int = 128,
) -> Any:
    """A Glm4vConfig: GLM-4.6V's layout at a tiny width (attention heads of 64), with the given vision tower size.

    The defaults are this random checkpoint's: every Linear has in_features >= 64 (bitsandbytes on CPU needs it).
    """
    from transformers import Glm4vConfig

    heads = hidden // HEAD_DIM
    return Glm4vConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": intermediate,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            # transformers' GLM-4V text attention always has q/k/v biases; vLLM builds them only when the
            # config says so, as GLM-4.6V-Flash's does (without it vLLM serves a different model)
            "attention_bias": True,
            "max_position_embeddings": MAX_POSITIONS,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                # head_dim 64 x partial 0.5 / 2 = 16 frequencies, split over (t, h, w)
                "mrope_section": [8, 4, 4],
            },
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]],
        },
        vision_config={
            **vision,
            "intermediate_size": 128,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "image_size": 336,
            "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0},
        },
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )


def write_processor_files(out: Path, longest_edge: int) -> None:
    """The processor configs GLM-4.6V ships, with the given image cap (pixels x 2 frames)."""
    pre = {
        "image_processor_type": "Glm46VImageProcessor",
        "processor_class": "Glm46VProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "size": {"shortest_edge": SHORTEST_EDGE, "longest_edge": longest_edge},
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Glm46VProcessor"}, indent=2))


def build_tiny(out: str | Path, *, real_image_limits: bool = False) -> Path:
    """Write the tiny checkpoint to `out` (overwriting) and return the folder.

    real_image_limits: the real processor's image cap instead of the test cap, and the narrow vision
    tower (REAL_SCALE_VISION) beside the same language model weights.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Glm4vForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_tokens = _build_tokenizer(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = (n_tokens // 64 + 2) * 64  # padded above the tokenizer, as the real 151,552 is

    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration(glm4v_config(ids, vocab, TEST_VISION)).eval()
    if real_image_limits:  # the same language model beside the narrower vision tower
        text = {k: v for k, v in model.state_dict().items() if ".visual." not in k}
        model = Glm4vForConditionalGeneration(glm4v_config(ids, vocab, REAL_SCALE_VISION)).eval()
        missing, unexpected = model.load_state_dict(text, strict=False)
        assert not unexpected and all(".visual." in k for k in missing)
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,  # the vendor's chat defaults; glmv overrides with greedy for extraction
        temperature=0.8,
        top_p=0.6,
        top_k=2,
    )
    model.save_pretrained(out)

    write_processor_files(out, REAL_LONGEST_EDGE if real_image_limits else TEST_LONGEST_EDGE)
    (out / "README.md").write_text(
        "Tiny random-weight GLM-4.6V-architecture checkpoint built by `python -m glmv_cli.engine.tiny`.\n"
        "For tests only: its outputs are meaningless.\n"
        + (
            "Image limits: the real processor's (up to 6,144 visual tokens per image); one narrow vision layer.\n"
            if real_image_limits
            else ""
        )
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glmv_cli.engine.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="build/tiny-glm4v")
    parser.add_argument("--real-image-limits", action="store_true", help="the stock processor's image cap")
    args = parser.parse_args(argv)
    print(build_tiny(args.out, real_image_limits=args.real_image_limits))


if __name__ == "__main__":
    main()
