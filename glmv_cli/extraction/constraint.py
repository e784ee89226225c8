"""The JSON Schema handed to the grammar engine, derived from the user's schema."""

from __future__ import annotations

import copy
from typing import Any

from glmv_cli.schema_walk import DEFS, subschemas


def constraint_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Every property required (null allowed where the model allows it), nothing extra.

    Optional fields would let the model skip a key; requiring each key makes it decide, field
    by field, between a value and null (as OpenAI's strict structured outputs do). Validation
    still uses the user's own model.
    """
    out = copy.deepcopy(schema)
    _tighten(out)
    for key in DEFS:
        for definition in out.get(key, {}).values():
            _tighten(definition)
    return out


def _tighten(node: Any) -> None:
    if not isinstance(node, dict):
        return
    props = node.get("properties")
    if isinstance(props, dict) and props:
        node["required"] = list(props)
        node.setdefault("additionalProperties", False)
        for value in props.values():
            value.pop("default", None)
    for child in subschemas(node):
        _tighten(child)
