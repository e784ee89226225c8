"""The closing rule: when the token budget runs low, steer a JSON answer to its shortest valid end.

A constrained row keeps `reserve` tokens of its budget for closing; past that step the
Closer's biases favour, among the tokens the grammar allows, the ones that end the answer.
"""

from __future__ import annotations

import json
from functools import cached_property
from typing import Any

import torch

from glmv_cli.schema_walk import SchemaWalkError, alternatives_within


def closing_step(max_new_tokens: int, reserve: int) -> int:
    """The step after which a constrained answer is steered to close.

    At most half the budget is kept for closing, unless half is less than the shortest valid
    answer (reserve is twice that, plus 16): then closing starts early enough to write that
    answer, from the first step if need be, so a tight budget still gives valid JSON.
    """
    keep = min(reserve, max(max_new_tokens // 2, reserve // 2 + 8))
    return max(0, max_new_tokens - keep)


class Closer:
    """Steers a JSON answer to its shortest valid ending once the token budget is nearly spent.

    Applied only among the tokens the grammar allows. Inside a string the closing quote wins;
    outside, stop > close brackets > null > separators. The JSON lexical state (in a string or
    not) is tracked from the text of the chosen tokens.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self._reserves: dict[str, int] = {}

    def reserve(self, schema: dict[str, Any]) -> int:
        """Tokens to keep for closing an answer from deep inside: twice the shortest valid answer."""
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if key not in self._reserves:
            shortest = json.dumps(minimal_instance(schema, schema), separators=(",", ":"))
            self._reserves[key] = 2 * len(self.tokenizer.encode(shortest, add_special_tokens=False)) + 16
        return self._reserves[key]

    @cached_property
    def texts(self) -> list[str]:
        """Every token's text; built on first need, as it decodes the whole vocabulary."""
        ids = range(len(self.tokenizer))
        return [self.tokenizer.decode([i]) for i in ids] + [""] * max(0, self.vocab_size - len(ids))

    @cached_property
    def in_string(self) -> torch.Tensor:
        """Bias inside a string: the closing quote, alone or followed by closing punctuation."""
        bias = torch.zeros(self.vocab_size)
        for token_id, text in enumerate(self.texts[: self.vocab_size]):
            if text and text[0] == '"' and set(text[1:]) <= set(",]}"):
                bias[token_id] = 3.0
        return bias * 1e4

    @cached_property
    def outside(self) -> torch.Tensor:
        """Bias outside strings: stop > close brackets > null > separators."""
        bias = torch.zeros(self.vocab_size)
        for token_id, text in enumerate(self.texts[: self.vocab_size]):
            if not text:
                continue
            if set(text) <= set("]}"):
                bias[token_id] = 3.0
            elif text == "null":
                bias[token_id] = 2.0
            elif set(text) <= set("]},"):
                bias[token_id] = 1.0
        bias[self.eos_ids] = 4.0
        return bias * 1e4

    @staticmethod
    def advance(in_string: bool, escaped: bool, text: str) -> tuple[bool, bool]:
        """The JSON lexical state after `text`: (inside a string, after a backslash)."""
        for ch in text:
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
        return in_string, escaped


def minimal_instance(node: Any, root: dict[str, Any], _path: frozenset[str] = frozenset()) -> Any:
    """The shortest value a JSON Schema admits, roughly: null where allowed, empty otherwise.

    A $ref back into a definition being built (a recursive schema) counts as null, so the estimate ends.
    """
    if not isinstance(node, dict):
        return None
    try:
        found, nullable = alternatives_within(root, node, _path)
    except SchemaWalkError:
        return None
    if nullable or not found:
        return None
    node, path = found[0]
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        required = node.get("required", props)
        return {k: minimal_instance(v, root, path) for k, v in props.items() if k in required}
    if kind == "array":
        return [minimal_instance(node.get("items", {}), root, path)] * int(node.get("minItems", 0))
    if kind == "string":
        return "x" * int(node.get("minLength", 0))
    if kind in ("number", "integer"):
        return 0
    return None if kind in (None, "null") else False
