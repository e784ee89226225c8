"""Property tests (hypothesis): the inline schema DSL, page specs, and the CSV writer's flattening."""

from __future__ import annotations

import csv
import io
import json
import keyword
import re
import types
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from glmv_cli.errors import UsageError
from glmv_cli.extraction.schemas import INLINE_TYPES, model_from_dsl
from glmv_cli.inputs.pages import MAX_PAGE_NUMBER, format_page_ranges, parse_page_spec
from glmv_cli.outputs.writers import RECORD_COLUMNS, open_writer
from glmv_cli.records import Record

# Fast enough for every `make test` (the deep search is `make fuzz`'s job); no example database,
# so a run leaves no .hypothesis/ folder in the working tree.
FAST = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- inline schema DSL ----------------------------------------------------------------------

# Names pydantic refuses or swallows (leading "_", BaseModel's own attributes, "model_*"): a known
# finding, tested on its own below, so the general properties steer clear of them.
_RESERVED = re.compile(r"(?<!\w)(_\w*|model_\w*)")


def _reserved(text: str) -> bool:
    return bool(_RESERVED.search(text)) or any(w in dir(BaseModel) for w in re.findall(r"\w+", text))


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,11}", fullmatch=True).filter(lambda n: not _reserved(n))
# Descriptions hold no "," (the single-line separator) and no line breaks (the multi-line one),
# and do not end in "," (a multi-line item's trailing comma is dropped on purpose).
descriptions = st.text(st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"], blacklist_characters=",\x85"))
fields = st.tuples(names, st.sampled_from([None, *INLINE_TYPES]), st.none() | descriptions)


def _item(name: str, type_name: str | None, description: str | None) -> str:
    head = name if type_name is None else f"{name} {type_name}"
    return head if description is None else f"{head}: {description}"


@FAST
@given(st.lists(fields, min_size=1, max_size=8, unique_by=lambda f: f[0]), st.booleans())
def test_dsl_builds_exactly_the_fields_given(items, multiline):
    spec = ("\n" if multiline else ", ").join(_item(*item) for item in items)
    model = model_from_dsl(spec)
    assert list(model.model_fields) == [name for name, _, _ in items]
    for name, type_name, description in items:
        field = model.model_fields[name]
        assert set(get_args(field.annotation)) == {INLINE_TYPES[type_name or "str"], types.NoneType}
        assert field.description == ((description or "").strip() or None)
    assert model().model_dump() == dict.fromkeys(model.model_fields)  # every field optional


dsl_ish = st.lists(st.sampled_from([*"ab_9 ,:\n\t\r", "str", "int", "date", "x y", "::", "\u2028", "é", "1a"])).map(
    "".join
)


@FAST
@given(st.text() | dsl_ish)
@example("a int, a str")
@example("a: b\nc,")
@example(", , ,")
@example("class, def int")
def test_dsl_any_text_builds_a_model_or_raises_usage_error(text):
    assume(not _reserved(text))
    try:
        model = model_from_dsl(text)
    except UsageError:
        return
    assert model.model_fields
    assert all(name.isidentifier() for name in model.model_fields)


@pytest.mark.parametrize("name", ["_x", "model_dump", "model_config"])
def test_dsl_reserved_names_are_usage_errors_or_fields(name):
    try:
        model = model_from_dsl(f"{name}, total int")
    except UsageError:
        return
    assert name in model.model_fields


def test_dsl_keywords_are_plain_field_names():
    model = model_from_dsl(", ".join(keyword.kwlist[:5]))
    assert list(model.model_fields) == keyword.kwlist[:5]


# --- page specs -----------------------------------------------------------------------------


@st.composite
def page_range(draw) -> tuple[int, int]:
    # Mostly small pages, sometimes near the cap, where an off-by-one would show.
    lo = draw(st.integers(1, 300) | st.integers(MAX_PAGE_NUMBER - 50, MAX_PAGE_NUMBER))
    return lo, min(MAX_PAGE_NUMBER, lo + draw(st.integers(0, 40)))


spaces = st.sampled_from(["", " ", "  ", "\t"])


@FAST
@given(st.lists(st.tuples(page_range(), spaces, spaces, st.booleans()), min_size=1, max_size=10))
def test_page_spec_is_the_sorted_union_of_its_ranges(parts):
    text = ",".join(
        f"{before}{lo}{after}" if lo == hi and short else f"{before}{lo}-{hi}{after}"
        for (lo, hi), before, after, short in parts
    )
    expected = sorted({n for (lo, hi), *_ in parts for n in range(lo, hi + 1)})
    assert parse_page_spec(text) == expected


page_ish = st.lists(st.sampled_from([*"0123456789-, \t+_", "all", "ALL", "1e3", "٣", "100001"])).map("".join)


@FAST
@given(st.text() | page_ish)
@example("0")
@example("3-1")
@example("1-100001")
@example("9" * 5000)
def test_page_spec_of_any_text_is_pages_none_or_usage_error(text):
    try:
        pages = parse_page_spec(text)
    except UsageError:
        return
    if pages is not None:
        assert pages == sorted(set(pages))
        assert all(1 <= n <= MAX_PAGE_NUMBER for n in pages)


@FAST
@given(st.lists(st.integers(1, MAX_PAGE_NUMBER), min_size=1, max_size=30, unique=True))
def test_page_spec_round_trips_through_its_text_form(numbers):
    numbers.sort()
    assert parse_page_spec(format_page_ranges(numbers)) == numbers


# --- CSV flattening -------------------------------------------------------------------------

keys = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True) | st.sampled_from([*RECORD_COLUMNS, "data"])
# Full unicode text: commas, quotes, CR/LF, NUL, emoji; no lone surrogates (not valid UTF-8).
texts = st.text(st.characters(blacklist_categories=["Cs"])) | st.sampled_from(["a,b", '"q"', "l1\nl2", "\r", 'é,"\r\n'])
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)
)
# Nested objects have at least one key: an empty object has no leaf, so it gets no column.
records_data = st.recursive(
    st.dictionaries(keys, scalars | st.lists(json_values, max_size=3), min_size=1, max_size=4),
    lambda inner: st.dictionaries(keys, scalars | st.lists(json_values, max_size=3) | inner, min_size=1, max_size=4),
    max_leaves=12,
)


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf name -> value, nested objects flattened as the README says."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _column(name: str) -> str:
    return f"data.{name}" if name in RECORD_COLUMNS else name


def _collides(data: dict[str, Any]) -> bool:
    """A top-level `file` and a nested `data.file` both land in the column 'data.file' (a finding)."""
    inner = data.get("data")
    return isinstance(inner, dict) and any(k in RECORD_COLUMNS for k in data if k in inner)


def _decoded(cell: str, like: Any) -> Any:
    """A cell read back as the type of the value written: lists JSON, None empty, bools true/false."""
    if like is None:
        assert cell == ""
        return None
    if isinstance(like, bool):
        return {"true": True, "false": False}[cell]
    if isinstance(like, int):
        return int(cell)
    if isinstance(like, float):
        return float(cell)
    if isinstance(like, list):
        return json.loads(cell)
    return cell


def _schema_for(data: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with the record's shape (objects nest, lists are arrays)."""

    def node(value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {"type": "object", "properties": {k: node(v) for k, v in value.items()}}
        return {"type": "array"} if isinstance(value, list) else {}

    return node(data)


def _write_csv(records: list[Record], schema: dict[str, Any] | None) -> list[dict[str, str]]:
    stream = io.StringIO()
    with open_writer("csv", None, stream, columns_schema=schema) as writer:
        for record in records:
            writer.write(record)
    reader = csv.DictReader(io.StringIO(stream.getvalue()))
    rows = list(reader)
    assert len(reader.fieldnames) == len(set(reader.fieldnames)), "a header repeats"
    return rows


def _assert_round_trip(record: Record, row: dict[str, str]) -> None:
    assert row["file"] == record.file
    assert row["status"] == record.status
    assert None not in row, "a row has more cells than the header"
    for name, value in _leaves(record.data or {}).items():
        assert _decoded(row[_column(name)], value) == value, name


@FAST
@given(st.lists(st.tuples(texts, records_data), min_size=1, max_size=4))
def test_csv_without_schema_round_trips_every_leaf(items):
    assume(not any(_collides(data) for name, data in items))
    records = [Record(file=name, status="ok", data=data) for name, data in items]
    rows = _write_csv(records, None)
    assert len(rows) == len(records)
    for record, row in zip(records, rows, strict=True):
        _assert_round_trip(record, row)
        written = {_column(n) for n in _leaves(record.data)}
        assert all(cell == "" for column, cell in row.items() if column not in written and column not in RECORD_COLUMNS)


@FAST
@given(texts, records_data)
def test_csv_with_schema_round_trips_every_leaf_in_schema_order(name, data):
    assume(not _collides(data))
    record = Record(file=name, status="ok", data=data)
    rows = _write_csv([record], _schema_for(data))
    assert len(rows) == 1
    header = list(rows[0])
    assert header[len(header) - len(_leaves(data)) :] == [_column(n) for n in _leaves(data)]
    _assert_round_trip(record, rows[0])


@pytest.mark.xfail(reason="finding: data 'file' and data 'data.file' share one CSV column", strict=False)
def test_csv_record_named_columns_do_not_collide_with_nested_data():
    rows = _write_csv([Record(file="f", status="ok", data={"file": "top", "data": {"file": "nested"}})], None)
    assert "top" in rows[0].values()
    assert "nested" in rows[0].values()


def test_csv_quotes_a_bare_carriage_return():
    rows = _write_csv([Record(file="a\rb", status="ok", data={"note": "c\rd"})], None)
    assert (rows[0]["file"], rows[0]["note"]) == ("a\rb", "c\rd")
