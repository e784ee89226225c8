"""Small helpers for walking a JSON Schema: follow local $refs, see through nullable anyOf."""

from __future__ import annotations

from typing import Any


def resolve_ref(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The node with a local `#/...` $ref replaced by its target (sibling keys kept)."""
    for _ in range(32):  # a bounded loop: a $ref chain may point at itself
        ref = node.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#/"):
            break
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def non_null(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The node with $refs resolved and a nullable anyOf/oneOf reduced to its non-null branch."""
    node = resolve_ref(root, node)
    for key in ("anyOf", "oneOf"):
        options = [o for o in node.get(key, []) if o.get("type") != "null"]
        if len(options) == 1:
            return resolve_ref(root, options[0])
    return node
