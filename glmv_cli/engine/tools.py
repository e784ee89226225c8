"""GLM-4.6V's tool calls: the grammar that constrains them, and reading them back in OpenAI's shape.

The model calls a tool as the chat template renders a past call, and as vLLM's and SGLang's
`glm45` parsers read it:

    <tool_call>NAME
    <arg_key>KEY</arg_key>
    <arg_value>VALUE</arg_value>
    </tool_call>

with string values raw and every other value as JSON; a second call follows on a new line. The
grammar (llguidance's Lark syntax, its special tokens by name) fixes the name and the keys and
holds every value to the tool's JSON Schema, so a forced call always validates.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from glmv_cli.engine.base import JSON_GRAMMAR_OPTIONS

CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # OpenAI's function names (plus . and :, as MCP tools use)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""

    def openai(self, index: int | None = None) -> dict[str, Any]:
        """The call as OpenAI's `tool_calls` item (arguments as a JSON string); with `index` for a stream delta."""
        item: dict[str, Any] = {
            "id": self.id or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }
        return {"index": index, **item} if index is not None else item


def functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> parameters schema, from OpenAI tool definitions; ValueError names the first bad one."""
    out: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ValueError(f"tools[{i}]: only function tools are supported")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"tools[{i}].function.name: letters, digits, _ . : - (at most 64)")
        if name in out:
            raise ValueError(f"tools[{i}]: a second function named {name!r}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ValueError(f"tools[{i}].function.parameters: must be a JSON Schema object")
        out[name] = params
    return out


def tool_grammar(
    tools: dict[str, dict[str, Any]], names: list[str], *, parallel: bool, text: bool, text_schema: dict | None
) -> str:
    """A Lark grammar for llguidance: one call (or several with `parallel`) of the named tools, or, with
    `text`, a plain answer instead (free text, or JSON of `text_schema` when the request also set one)."""
    rules = ["start: answer", 'calls: call ("\\n" call)*' if parallel else "calls: call"]
    rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(names))))
    for i, name in enumerate(names):
        schema = tools[name]
        props: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        args = []
        for j, (key, sub) in enumerate(props.items()):
            value = f"<arg_value> {_value(sub)} </arg_value>"
            rules.append(f'arg_{i}_{j}: <arg_key> {_lit(key)} </arg_key> "\\n" {value} "\\n"')
            args.append(f"arg_{i}_{j}" + ("" if key in required else "?"))
        rules.append(f"call_{i}: <tool_call> {_lit(name + chr(10))} {' '.join(args)} </tool_call>")
    if text and text_schema is not None:
        rules.append(f"answer: calls | json_text\njson_text: %json {_json(text_schema)}")
    elif text:
        rules.append("answer: calls | TEXT\nTEXT: /(.|\\n)+/")
    else:
        rules.append("answer: calls")
    return "\n".join(rules) + "\n"


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json(schema: Any) -> str:
    body = dict(schema) if isinstance(schema, dict) else {}
    body["x-guidance"] = {**JSON_GRAMMAR_OPTIONS, **(body.get("x-guidance") or {})}
    return json.dumps(body, ensure_ascii=False)


def _value(schema: Any) -> str:
    """A value as the template writes it: JSON, except that a string is raw (no '<', which would open a
    tag): one of an enum's strings, or any text where a string may stand (a pattern is left to validation)."""
    choices = (
        schema.get("enum") or ([schema["const"]] if "const" in schema else None) if isinstance(schema, dict) else None
    )
    if choices and all(isinstance(c, str) for c in choices):
        return "(" + " | ".join(_lit(c) for c in choices) + ")"
    if "string" in _types(schema):
        return "/[^<]*/"
    return f"%json {_json(schema)}"


def _types(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    if "anyOf" in schema or "oneOf" in schema:
        return set().union(*(_types(s) for s in schema.get("anyOf") or schema.get("oneOf") or []))
    kind = schema.get("type")
    if isinstance(kind, list):
        return set(kind)
    if kind is None and ("enum" in schema or "const" in schema):
        return {type(v).__name__.replace("str", "string") for v in schema.get("enum") or [schema.get("const")]}
    return {kind} if isinstance(kind, str) else set()


def parse_tool_calls(text: str, tools: dict[str, dict[str, Any]]) -> tuple[str | None, list[ToolCall]]:
    """(the text outside any call or None, the calls) from an answer; values typed by the tool's schema."""
    calls = []
    for body in CALL.findall(text):
        name, _, rest = body.partition("\n") if "\n" in body.split("<arg_key>")[0] else body.partition("<arg_key>")
        name = name.strip()
        props = (tools.get(name) or {}).get("properties") or {}
        arguments = {k.strip(): _typed(v, props.get(k.strip())) for k, v in ARG.findall(body)}
        calls.append(ToolCall(name, arguments))
    content = CALL.sub("", text).strip() if calls else text
    return (content or None) if calls else text, calls


def _typed(raw: str, schema: Any) -> Any:
    """A raw value back to JSON, as vLLM's glm45 parser does: strings stay strings, the rest is parsed."""
    types = _types(schema)
    if "string" in types and not (raw == "null" and "null" in types):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def template_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An assistant message's OpenAI `tool_calls` as the chat template renders them (arguments as a dict)."""
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise ValueError(f"tool call {fn.get('name')!r}: arguments are not JSON") from None
        if not isinstance(args, dict):
            raise ValueError(f"tool call {fn.get('name')!r}: arguments must be a JSON object")
        out.append({"type": "function", "function": {"name": fn.get("name", ""), "arguments": args}})
    return out
