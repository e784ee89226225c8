"""The tiny checkpoint's chat template renders exactly as GLM-4.6V-Flash's own does.

Each case is one of the renderings in ../shared/glm46v/FACTS.md (the real template, rendered the way
transformers does), copied here byte for byte, so prompts built against the tiny checkpoint are the
prompts the real model would see.
"""

from __future__ import annotations

from typing import Any

import pytest

SAVE_TOOL = {
    "type": "function",
    "function": {
        "name": "save",
        "description": "Save an invoice",
        "parameters": {
            "type": "object",
            "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
            "required": ["vendor", "total"],
        },
    },
}
IMAGE = "<|begin_of_image|><|image|><|end_of_image|>"
OFF = {"enable_thinking": False}

# (name, messages, kwargs besides add_generation_prompt=True, the real template's rendering)
CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    (
        "1 image + question, thinking off",
        [
            {"role": "system", "content": "SYS"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Extract the fields."}]},
        ],
        OFF,
        "[gMASK]<sop><|system|>\nSYS<|user|>\n<|begin_of_image|><|image|><|end_of_image|>Extract the fields./nothink"
        "<|assistant|>\n<think></think>\n",
    ),
    (
        "2 enable_thinking not passed",
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}],
        {},
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Q<|assistant|>\n",
    ),
    (
        "3 enable_thinking=True",
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}],
        {"enable_thinking": True},
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Q<|assistant|>\n",
    ),
    (
        "4 repair turn",
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Extract."}]},
            {"role": "assistant", "content": '{"total": 1}'},
            {"role": "user", "content": "Fix: total must be a string."},
        ],
        OFF,
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>Extract./nothink<|assistant|>\n"
        '<think></think>\n{"total": 1}<|user|>\nFix: total must be a string./nothink<|assistant|>\n<think></think>\n',
    ),
    (
        "5 two images then text",
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}]}],
        OFF,
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|><|begin_of_image|><|image|><|end_of_image|>"
        "Compare./nothink<|assistant|>\n<think></think>\n",
    ),
    (
        "6 tools offered",
        [{"role": "user", "content": "Save it."}],
        {**OFF, "tools": [SAVE_TOOL]},
        "[gMASK]<sop><|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "save", "description": "Save an invoice", "parameters": '
        '{"type": "object", "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}}, '
        '"required": ["vendor", "total"]}}}\n</tools>\n\n'
        "For each function call, output the function name and arguments within the following XML format:\n"
        "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n<arg_value>{arg-value-1}</arg_value>\n"
        "<arg_key>{arg-key-2}</arg_key>\n<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>"
        "<|user|>\nSave it./nothink<|assistant|>\n<think></think>\n",
    ),
    (
        "7 tool call and result",
        [
            {"role": "user", "content": "Save it."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"type": "function", "function": {"name": "save", "arguments": {"vendor": "Acme", "total": 12.5}}}
                ],
            },
            {"role": "tool", "content": "saved"},
        ],
        OFF,
        "[gMASK]<sop><|user|>\nSave it./nothink<|assistant|>\n<think></think>\n<tool_call>save\n"
        "<arg_key>vendor</arg_key>\n<arg_value>Acme</arg_value>\n<arg_key>total</arg_key>\n<arg_value>12.5</arg_value>\n"
        "</tool_call><|observation|>\n<tool_response>\nsaved\n</tool_response>\n<|assistant|>\n<think></think>\n",
    ),
]
IDS = [name.split()[0] for name, *_ in CASES]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def processor(tiny_model):
    from glmv_cli.engine.loader import load_processor

    return load_processor(str(tiny_model), None)[0]


@pytest.mark.parametrize(("name", "messages", "kwargs", "rendered"), CASES, ids=IDS)
def test_tokenizer_renders_as_the_real_template(tokenizer, name, messages, kwargs, rendered):
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs) == rendered


@pytest.mark.parametrize(("name", "messages", "kwargs", "rendered"), CASES, ids=IDS)
def test_processor_renders_as_the_real_template(processor, name, messages, kwargs, rendered):
    """glmv builds its prompts through the processor (engine/local.py): the same bytes come out."""
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs) == rendered


def test_thinking_and_nothink_details(tokenizer):
    """Beyond FACTS.md's examples, the real template's rules: a turn ending in /nothink keeps one, a past
    answer's reasoning shows only after the last user turn, and a system turn's content list is its text."""
    render = tokenizer.apply_chat_template
    already = [{"role": "user", "content": [{"type": "text", "text": "Q/nothink"}]}]
    assert render(already, add_generation_prompt=True, tokenize=False, **OFF) == (
        "[gMASK]<sop><|user|>\nQ/nothink<|assistant|>\n<think></think>\n"
    )
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>old</think>\n A "},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "x", "reasoning_content": " new "},
    ]
    assert render(history, tokenize=False) == (
        "[gMASK]<sop><|user|>\na<|assistant|>\n<think></think>\nA<|user|>\nb<|assistant|>\n<think>new</think>\nx"
    )
    system = [{"role": "system", "content": [{"type": "text", "text": "S"}]}, {"role": "user", "content": "u"}]
    assert render(system, add_generation_prompt=True, tokenize=False) == (
        "[gMASK]<sop><|system|>\nS<|user|>\nu<|assistant|>\n"
    )
    assert IMAGE in render([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
