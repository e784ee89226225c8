"""Check a resolved schema before any model loads: bounded, valid, and compilable to a grammar.

llguidance is a Rust extension without torch (about 30 ms to import next to pydantic), so the
check costs milliseconds; a schema that fails it would otherwise fail every document later.
"""

from __future__ import annotations

from typing import Any

import llguidance
from pydantic import PydanticUserError

from glmv_cli.engine.base import JSON_GRAMMAR_OPTIONS
from glmv_cli.errors import UsageError
from glmv_cli.extraction.constraint import constraint_schema
from glmv_cli.extraction.schemas import ResolvedSchema, recursive_error, ref_cycle


def check_schema(resolved: ResolvedSchema) -> None:
    """Raise a UsageError if the schema is recursive, has no JSON Schema, or cannot become a grammar."""
    name = resolved.describe()
    try:
        schema = resolved.json_schema()
    except (PydanticUserError, TypeError, ValueError) as exc:  # e.g. a field type Pydantic cannot describe
        raise UsageError(f"Schema {name} has no JSON Schema: {_joined(str(exc))}") from exc
    cycle = ref_cycle(schema)
    if cycle:
        raise recursive_error(name, cycle)
    problem = grammar_problem(constraint_schema(schema))
    if problem:
        raise UsageError(
            f"Schema {name} cannot be compiled to a grammar: {problem}",
            hint="drop or simplify that keyword; `glmv schemas show NAME` prints the JSON Schema",
        )


def grammar_problem(schema: dict[str, Any]) -> str | None:
    """llguidance's one-line complaint about a JSON Schema, or None when it compiles (no tokenizer needed)."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_GRAMMAR_OPTIONS)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    except (TypeError, ValueError) as exc:
        return _joined(str(exc))
    return _joined(messages[0]) if is_error else None


def lark_problem(grammar: str) -> str | None:
    """llguidance's one-line complaint about a Lark grammar (tool calls), or None when it compiles."""
    try:
        compiled = llguidance.grammar_from("lark", grammar)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled, None)
    except (TypeError, ValueError) as exc:
        return _joined(str(exc))
    return _joined(messages[0]) if is_error else None


def _joined(text: str) -> str:
    """Join a multi-line message, dropping caret-only lines (regex errors point with ^^^)."""
    lines = [line.strip() for line in text.splitlines()]
    return " ".join(line for line in lines if line.strip("^")) or "unknown error"
