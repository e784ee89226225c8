"""The one JSON Schema walker (glmv_cli/schema_walk.py) and the readers built on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from glmv_cli.schema_walk import (
    SchemaWalkError,
    alternatives,
    non_null,
    ref_cycle,
    resolve_ref,
    subschemas,
    walk_properties,
)

PARTY = {"type": "object", "properties": {"name": {"type": "string"}}}
ROOT: dict[str, Any] = {
    "$defs": {
        "Party": PARTY,
        "Alias": {"$ref": "#/$defs/Party", "title": "Alias"},  # a $ref to a $ref
        "MaybeParty": {"anyOf": [{"$ref": "#/$defs/Party"}, {"type": "null"}]},
        "Loop": {"$ref": "#/$defs/Loop2"},
        "Loop2": {"$ref": "#/$defs/Loop"},
        "SelfUnion": {"anyOf": [{"$ref": "#/$defs/SelfUnion"}, {"type": "null"}]},
        "a/b": {"type": "integer"},
    },
    "definitions": {"Old": {"type": "string", "minLength": 2}},
}


def test_nested_ref_resolves_with_the_referring_node_keys_on_top() -> None:
    node = resolve_ref(ROOT, {"$ref": "#/$defs/Alias", "description": "the buyer"})
    assert node == {**PARTY, "title": "Alias", "description": "the buyer"}


def test_definitions_and_escaped_pointers_resolve() -> None:
    assert resolve_ref(ROOT, {"$ref": "#/definitions/Old"}) == {"type": "string", "minLength": 2}
    assert resolve_ref(ROOT, {"$ref": "#/$defs/a~1b"}) == {"type": "integer"}


def test_unresolvable_refs_are_lenient_unless_strict() -> None:
    assert resolve_ref(ROOT, {"$ref": "#/$defs/Missing", "title": "t"}) == {"title": "t"}
    remote = {"$ref": "https://example.com/party.json"}
    assert resolve_ref(ROOT, remote) == remote
    for node in ({"$ref": "#/$defs/Missing"}, remote):
        with pytest.raises(SchemaWalkError, match="not found"):
            resolve_ref(ROOT, node, strict=True)


def test_a_ref_chain_back_to_itself_is_a_clear_error_not_a_loop() -> None:
    with pytest.raises(SchemaWalkError, match=r"cycle: #/\$defs/Loop -> #/\$defs/Loop2 -> #/\$defs/Loop"):
        resolve_ref(ROOT, {"$ref": "#/$defs/Loop"})
    with pytest.raises(SchemaWalkError, match="cycle"):  # through anyOf branches too
        alternatives(ROOT, {"$ref": "#/$defs/SelfUnion"})


def test_ref_to_a_nullable_definition() -> None:
    assert alternatives(ROOT, {"$ref": "#/$defs/MaybeParty"}) == ([PARTY], True)
    assert non_null(ROOT, {"$ref": "#/$defs/MaybeParty"}) == PARTY


def test_alternatives_flatten_unions_and_type_lists() -> None:
    node = {"anyOf": [{"anyOf": [{"type": "integer"}, {"type": "null"}]}, {"$ref": "#/$defs/Alias"}], "title": "x"}
    found, nullable = alternatives(ROOT, node)
    assert nullable and found == [{"type": "integer", "title": "x"}, {**PARTY, "title": "Alias"}]
    assert alternatives(ROOT, {"type": ["string", "null"], "maxLength": 3}) == (
        [{"type": "string", "maxLength": 3}],
        True,
    )
    assert alternatives(ROOT, {"type": "null"}) == ([], True)
    assert alternatives(ROOT, {"enum": ["a", None]}) == ([{"enum": ["a", None]}], False)  # the enum is the caller's
    # Several things besides null: non_null gives the node itself.
    union = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}
    assert non_null(ROOT, union) == union


def test_strict_alternatives_reject_malformed_nodes() -> None:
    with pytest.raises(SchemaWalkError, match="node 5"):
        alternatives(ROOT, {"anyOf": [5, {"type": "null"}]}, strict=True)
    with pytest.raises(TypeError, match="type 5"):
        alternatives(ROOT, {"type": 5}, strict=True)
    assert alternatives(ROOT, {"anyOf": [5, {"type": "null"}]}) == ([], True)


def test_walk_properties_expands_objects_and_a_recursive_model_once() -> None:
    schema = {
        "$ref": "#/$defs/Node",
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "owner": {"$ref": "#/$defs/Party"},
                },
            },
            "Party": PARTY,
        },
    }
    walked = [(name, expanded) for name, _, _, expanded in walk_properties(schema, schema, into_lists=True)]
    assert walked == [
        ("label", False),
        ("parent", False),  # Node inside Node: listed, not expanded
        ("children", False),
        ("owner", True),
        ("owner.name", False),
    ]
    lists = {"type": "object", "properties": {"lines": {"type": "array", "items": PARTY}}}
    assert [n for n, *_ in walk_properties(lists, lists, into_lists=True)] == ["lines", "lines.name"]
    assert [n for n, *_ in walk_properties(lists, lists)] == ["lines"]


def test_ref_cycle_is_found_under_any_keyword() -> None:
    assert ref_cycle(ROOT | {"properties": {"p": {"$ref": "#/$defs/Party"}}}) is None
    hidden = {
        "properties": {"m": {"type": "object", "additionalProperties": {"$ref": "#/$defs/M"}}},
        "$defs": {"M": {"type": "object", "additionalProperties": {"$ref": "#/$defs/M"}}},
    }
    assert ref_cycle(hidden) == ["#/$defs/M", "#/$defs/M"]


def test_subschemas_are_the_direct_children() -> None:
    node = {
        "properties": {"a": {"type": "string"}},
        "items": {"type": "integer"},
        "prefixItems": [{"type": "null"}],
        "anyOf": [{"type": "boolean"}],
        "description": "not a schema",
    }
    assert list(subschemas(node)) == [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "null"}]


# --- readers built on the walker -----------------------------------------------------------


def test_minimal_instance_follows_refs_and_ends_on_recursion() -> None:
    from glmv_cli.engine.closing import minimal_instance

    schema = {
        "type": "object",
        "properties": {
            "lines": {"type": "array", "minItems": 2, "items": {"$ref": "#/$defs/Line"}},
            "old": {"$ref": "#/definitions/Old"},
            "maybe": {"$ref": "#/$defs/MaybeLine"},
            "tree": {"$ref": "#/$defs/Tree"},
            "loop": {"$ref": "#/$defs/Loop"},
        },
        "$defs": {
            "Line": {"type": "object", "properties": {"qty": {"type": "integer"}}},
            "MaybeLine": {"anyOf": [{"$ref": "#/$defs/Line"}, {"type": "null"}]},
            "Tree": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Tree"}}},  # no finite answer
            "Loop": {"$ref": "#/$defs/Loop"},
        },
        "definitions": {"Old": {"type": "string", "minLength": 2}},
    }
    assert minimal_instance(schema, schema) == {
        "lines": [{"qty": 0}, {"qty": 0}],
        "old": "xx",
        "maybe": None,
        "tree": {"child": None},  # was a RecursionError
        "loop": None,
    }


def test_json_schema_file_reads_a_ref_to_a_nullable_definition(tmp_path: Path) -> None:
    from glmv_cli.extraction.schemas import resolve_schema

    spec = {
        "properties": {"buyer": {"$ref": "#/$defs/MaybeParty"}, "seller": {"$ref": "#/$defs/Alias"}},
        "required": ["buyer", "seller"],
        "$defs": {k: ROOT["$defs"][k] for k in ("Party", "Alias", "MaybeParty")},
    }
    (tmp_path / "parties.json").write_text(json.dumps(spec))
    model = resolve_schema("parties.json", cwd=tmp_path).model
    assert model.model_validate({"buyer": None, "seller": {"name": "Bo"}}).buyer is None
    with pytest.raises(ValueError):
        model.model_validate({"buyer": None, "seller": None})


def test_json_schema_file_with_a_ref_chain_cycle_is_a_usage_error(tmp_path: Path) -> None:
    from glmv_cli.errors import UsageError
    from glmv_cli.extraction.schemas import resolve_schema

    spec = {"properties": {"a": {"$ref": "#/$defs/Loop"}}, "$defs": {k: ROOT["$defs"][k] for k in ("Loop", "Loop2")}}
    (tmp_path / "loop.json").write_text(json.dumps(spec))
    with pytest.raises(UsageError, match="recursive"):
        resolve_schema("loop.json", cwd=tmp_path)
