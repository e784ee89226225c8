"""The one JSON Schema walker: follow local $refs, see through nullable anyOf/oneOf, visit properties.

Every module that reads a JSON Schema's structure goes through these: the schema translator
(extraction/schemas.py), the grammar constraint (extraction/constraint.py), the closing rule's
shortest answer (engine/closing.py) and the CSV columns (outputs/writers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

DEFS = ("$defs", "definitions")  # where a schema keeps the definitions its $refs point at
SUBSCHEMA_KEYS = ("properties", "items", "anyOf", "oneOf", "allOf", "prefixItems")


class SchemaWalkError(ValueError):
    """A schema the walk cannot read: a $ref not local, not found, or in a chain back to itself; a malformed node."""


def json_pointer(root: Any, ref: str) -> Any:
    """The node a local $ref ('#/$defs/Node') points at, or None."""
    node, path = root, ref.removeprefix("#").removeprefix("/")
    for part in path.split("/") if path else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def resolve_ref(root: dict[str, Any], node: dict[str, Any], *, strict: bool = False) -> dict[str, Any]:
    """The node with a local `#...` $ref replaced by its target, the node's other keys kept over the target's.

    A $ref chain that returns to itself raises SchemaWalkError. A $ref that cannot be followed
    raises it too when strict; otherwise a missing target reads as {} and a non-local $ref is
    left in place.
    """
    return _resolve(root, node, strict, frozenset())[0]


def _resolve(
    root: dict[str, Any], node: dict[str, Any], strict: bool, seen: frozenset[str]
) -> tuple[dict[str, Any], frozenset[str]]:
    """resolve_ref, also giving the $refs followed so far (`seen`, for the caller's own cycle check)."""
    chain: list[str] = []
    while "$ref" in node:
        ref = node["$ref"]
        local = isinstance(ref, str) and ref.startswith("#")
        target = json_pointer(root, ref) if local else None
        if not isinstance(target, dict):
            if strict:
                raise SchemaWalkError(f"$ref {ref!r} not found (only local '#/...' references are read)")
            if not local:
                break
            target = {}
        if ref in seen or ref in chain:
            raise SchemaWalkError(f"$ref cycle: {' -> '.join([*chain, ref])} refers back to itself")
        chain.append(ref)
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node, seen | frozenset(chain)


def alternatives(
    root: dict[str, Any], node: dict[str, Any], *, strict: bool = False
) -> tuple[list[dict[str, Any]], bool]:
    """(what the node admits besides null, whether it admits null).

    $refs are resolved. An anyOf/oneOf gives its non-null branches (nested ones flattened), each
    with the node's own other keys under the branch's; a type list gives one alternative per
    non-null type. Null is admitted by a "null" branch or type (an enum holding None is the
    caller's to read).
    """
    found, nullable = _alternatives(root, node, strict, frozenset())
    return [branch for branch, _ in found], nullable


def alternatives_within(
    root: dict[str, Any], node: dict[str, Any], path: frozenset[str]
) -> tuple[list[tuple[dict[str, Any], frozenset[str]]], bool]:
    """alternatives() for a walk that descends into what it finds: each alternative comes with
    `path` plus the $refs followed to reach it, and a $ref already on `path` (a schema that
    contains itself) raises SchemaWalkError.
    """
    return _alternatives(root, node, False, path)


def _alternatives(
    root: dict[str, Any], node: dict[str, Any], strict: bool, seen: frozenset[str]
) -> tuple[list[tuple[dict[str, Any], frozenset[str]]], bool]:
    node, seen = _resolve(root, node, strict, seen)
    key = next((k for k in ("anyOf", "oneOf") if k in node), None)
    if key is not None:
        outer = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
        found: list[tuple[dict[str, Any], frozenset[str]]] = []
        nullable = False
        for option in node[key]:
            if not isinstance(option, dict):
                if strict:
                    raise SchemaWalkError(f"node {option!r}")
                continue
            branches, option_null = _alternatives(root, option, strict, seen)
            found += [({**outer, **branch}, refs) for branch, refs in branches]
            nullable = nullable or option_null
        return found, nullable
    kind = node.get("type")
    if not isinstance(kind, list):
        if strict and not (kind is None or isinstance(kind, str)):
            raise TypeError(f"type {kind!r} is neither a name nor a list of names")
        return ([], True) if kind == "null" else ([(node, seen)], False)
    return [({**node, "type": k}, seen) for k in kind if k != "null"], "null" in kind


def non_null(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """The node with $refs resolved and, when it admits exactly one thing besides null, that thing."""
    found, _ = alternatives(root, node)
    return found[0] if len(found) == 1 else resolve_ref(root, node)


def direct_refs(node: Any) -> frozenset[str]:
    """$refs a property points at directly, through anyOf/oneOf or its list items."""
    if not isinstance(node, dict):
        return frozenset()
    refs = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    for child in [*node.get("anyOf", []), *node.get("oneOf", []), node.get("items")]:
        refs |= direct_refs(child)
    return frozenset(refs)


def walk_properties(
    root: dict[str, Any], node: dict[str, Any], *, into_lists: bool = False
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], bool]]:
    """(dotted name, the property as written, its non_null target, expanded) for every property, depth first.

    An object property is followed by its own properties (expanded=True); with into_lists, a
    list of objects is too (its item's properties under the list's name). A model met again
    inside itself is listed but not expanded, so a recursive schema ends.
    """

    def walk(node: dict[str, Any], prefix: str, seen: frozenset[str]) -> Iterator[Any]:
        for key, sub in node.get("properties", {}).items():
            target = non_null(root, sub)
            inner = non_null(root, target.get("items", {})) if into_lists and target.get("type") == "array" else target
            refs = direct_refs(sub)
            expand = "properties" in inner and inner.get("type", "object") == "object" and not refs & seen
            yield f"{prefix}{key}", sub, target, expand
            if expand:
                yield from walk(inner, f"{prefix}{key}.", seen | refs)

    yield from walk(non_null(root, node), "", direct_refs(node))


def subschemas(node: dict[str, Any]) -> Iterator[Any]:
    """The schemas directly inside a node: property values, items, prefixItems and anyOf/oneOf/allOf branches."""
    for key in SUBSCHEMA_KEYS:
        child = node.get(key)
        if key == "properties" and isinstance(child, dict):
            yield from child.values()
        elif isinstance(child, dict):
            yield child
        elif isinstance(child, list):
            yield from child


def ref_cycle(schema: dict[str, Any]) -> list[str] | None:
    """A chain of local $refs that leads back into itself (['#/$defs/Node', '#/$defs/Node']), or None.

    Looks under every key, not only SUBSCHEMA_KEYS, so no keyword can hide a cycle.
    """
    explored: set[str] = set()

    def visit(node: Any, chain: list[str]) -> list[str] | None:
        children = node if isinstance(node, list) else []
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#") and ref not in explored:
                if ref in chain:
                    return chain[chain.index(ref) :] + [ref]
                found = visit(json_pointer(schema, ref), [*chain, ref])
                if found:
                    return found
                explored.add(ref)
            # definitions are visited through the $refs that use them; unused ones never reach a grammar
            children = [v for k, v in node.items() if k not in DEFS]
        return next((found for child in children if (found := visit(child, chain))), None)

    return visit(schema, ["#"])
