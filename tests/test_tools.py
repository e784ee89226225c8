"""GLM tool calls: the grammar holds a call to the tool's schema, and calls read back in OpenAI's shape;
the chat template renders what the grammar lets the model write (a round trip through the template)."""

from __future__ import annotations

import json

import pytest

from glmv_cli.engine.tools import functions, parse_tool_calls, template_calls, tool_grammar

llguidance = pytest.importorskip("llguidance")

SAVE = {
    "type": "function",
    "function": {
        "name": "save",
        "description": "Save an invoice",
        "parameters": {
            "type": "object",
            "properties": {
                "vendor": {"type": "string"},
                "total": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                "paid": {"type": "boolean"},
                "items": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["vendor", "total"],
        },
    },
}
CALL = (
    "<tool_call>save\n<arg_key>vendor</arg_key>\n<arg_value>Acme Ltd</arg_value>\n"
    "<arg_key>total</arg_key>\n<arg_value>12.50</arg_value>\n</tool_call>"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _accepts(tokenizer, grammar: str, text: str) -> bool:
    import llguidance.hf

    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    lg_tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer), eos_token=eos)
    matcher = llguidance.LLMatcher(lg_tok, llguidance.grammar_from("lark", grammar), log_level=0)
    ok = all(matcher.consume_token(t) for t in tokenizer.encode(text, add_special_tokens=False))
    return ok and matcher.is_accepting()


def test_forced_call_grammar_holds_keys_and_types(tokenizer):
    tools = functions([SAVE])
    forced = tool_grammar(tools, ["save"], parallel=False, text=False, text_schema=None)
    assert _accepts(tokenizer, forced, CALL)
    assert not _accepts(tokenizer, forced, CALL.replace("12.50", "twelve"))  # total is a number
    assert not _accepts(tokenizer, forced, CALL.replace("vendor", "seller"))  # no such key
    assert not _accepts(tokenizer, forced, "Here it is.")  # a forced call is a call
    assert not _accepts(tokenizer, forced, CALL + "\n" + CALL)  # one call unless parallel
    parallel = tool_grammar(tools, ["save"], parallel=True, text=False, text_schema=None)
    assert _accepts(tokenizer, parallel, CALL + "\n" + CALL)


def test_auto_grammar_takes_text_or_calls_and_a_response_format(tokenizer):
    tools = functions([SAVE])
    auto = tool_grammar(tools, ["save"], parallel=True, text=True, text_schema=None)
    assert _accepts(tokenizer, auto, "The total is 12.50.")
    assert _accepts(tokenizer, auto, CALL)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    typed = tool_grammar(tools, ["save"], parallel=False, text=True, text_schema=schema)
    assert _accepts(tokenizer, typed, '{"a":"x"}')
    assert not _accepts(tokenizer, typed, "plain words")


def test_calls_read_back_typed_by_the_schema():
    tools = functions([SAVE])
    text = CALL.replace(
        "</tool_call>",
        '<arg_key>paid</arg_key>\n<arg_value>true</arg_value>\n<arg_key>items</arg_key>\n<arg_value>["a"]</arg_value>\n'
        "</tool_call>",
    )
    content, calls = parse_tool_calls(f"Saving.\n{text}\n{CALL.replace('12.50', 'null')}", tools)
    assert content == "Saving."
    assert [c.arguments for c in calls] == [
        {"vendor": "Acme Ltd", "total": 12.5, "paid": True, "items": ["a"]},
        {"vendor": "Acme Ltd", "total": None},
    ]
    item = calls[0].openai()
    assert item["type"] == "function" and item["id"].startswith("call_")
    assert json.loads(item["function"]["arguments"])["total"] == 12.5
    assert parse_tool_calls("no call here", tools) == ("no call here", [])


def test_template_renders_a_call_as_the_grammar_writes_it(tokenizer):
    """A past call, rendered by the chat template, is exactly the text the grammar accepts and the parser reads."""
    _, calls = parse_tool_calls(CALL, functions([SAVE]))
    messages = [
        {"role": "user", "content": "Save it."},
        {"role": "assistant", "content": "", "tool_calls": template_calls([calls[0].openai()])},
        {"role": "tool", "content": "saved"},
    ]
    text = tokenizer.apply_chat_template(messages, tools=[SAVE], tokenize=False, add_generation_prompt=True)
    assert CALL.replace("12.50", "12.5") in text
    assert "<|observation|>\n<tool_response>\nsaved\n</tool_response>" in text


def test_bad_tool_definitions_are_named():
    with pytest.raises(ValueError, match=r"tools\[0\]: only function tools"):
        functions([{"type": "code_interpreter"}])
    with pytest.raises(ValueError, match="name"):
        functions([{"type": "function", "function": {"name": "has space"}}])
    with pytest.raises(ValueError, match="second function"):
        functions([SAVE, SAVE])
    with pytest.raises(ValueError, match="not JSON"):
        template_calls([{"function": {"name": "save", "arguments": "{nope"}}])
