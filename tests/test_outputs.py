"""Writers (JSONL, JSON, CSV, --out-dir), atomic files, append mode, and run statistics."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from glmv_cli.errors import OutputError, UsageError
from glmv_cli.extraction.schemas import resolve_schema
from glmv_cli.outputs import DirWriter, RunStats, format_pages, open_writer, percentile
from glmv_cli.outputs.writers import RECORD_COLUMNS
from glmv_cli.records import Record, Timings

INVOICE = resolve_schema("invoice").json_schema()
NESTED = {
    "type": "object",
    "properties": {
        "vendor": {"anyOf": [{"$ref": "#/$defs/Party"}, {"type": "null"}]},
        "total": {"type": "number"},
        "status": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "$defs": {"Party": {"type": "object", "properties": {"name": {"type": "string"}, "vat": {"type": "string"}}}},
}


def ok(file: str = "a.pdf", **data) -> Record:
    return Record(file=file, pages=[1, 2, 3], status="ok", data=data)


def failed(file: str = "b.png") -> Record:
    return Record(file=file, pages=[1], status="failed", error="model output was not valid JSON", raw="{")


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_format_pages() -> None:
    assert format_pages([]) == ""
    assert format_pages([1]) == "1"
    assert format_pages([1, 2, 3]) == "1-3"
    assert format_pages([1, 3]) == "1;3"
    assert format_pages([1, 2, 3, 5]) == "1-3;5"


def test_jsonl_to_stream() -> None:
    out = io.StringIO()
    with open_writer(None, None, out) as writer:
        writer.write(ok(total=1.5))
        assert out.getvalue().count("\n") == 1, "flushed per record"
        writer.write(failed())
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["status"] for line in lines] == ["ok", "failed"]
    assert lines[0]["data"] == {"total": 1.5}
    assert lines[0]["schema"] is None and "schema_name" not in lines[0]
    assert " " not in out.getvalue().splitlines()[0], "compact"


def test_json_array_at_close(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with open_writer(None, path, io.StringIO()) as writer:
        writer.write(ok())
        writer.write(failed())
        assert not path.exists(), "nothing in place before close"
    records = json.loads(path.read_text())
    assert [r["file"] for r in records] == ["a.pdf", "b.png"]
    assert list(tmp_path.iterdir()) == [path], "no temp file left"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "the usual mode, not mkstemp's 0600"


def test_format_from_extension_and_unknown(tmp_path: Path) -> None:
    writer = open_writer(None, tmp_path / "x.csv", io.StringIO(), INVOICE)
    writer.close()
    header = (tmp_path / "x.csv").read_text().splitlines()[0]
    assert header.startswith(",".join(RECORD_COLUMNS) + ",vendor_name")
    with pytest.raises(UsageError):
        open_writer("xml", None, io.StringIO())


def test_csv_flattens_in_schema_order() -> None:
    out = io.StringIO()
    with open_writer("csv", None, out, NESTED) as writer:
        writer.write(ok(vendor={"name": "Acme", "vat": None}, total=9.5, status="paid", tags=["a", "b"]))
        writer.write(failed())
    header = out.getvalue().splitlines()[0]
    assert header == ",".join(RECORD_COLUMNS) + ",vendor.name,vendor.vat,total,data.status,tags"
    rows = read_csv(out.getvalue())
    assert rows[0] == {
        "file": "a.pdf",
        "pages": "1-3",
        "status": "ok",
        "error_code": "",
        "error": "",
        "warning": "",
        "review_reasons": "",
        "cached": "false",
        "vendor.name": "Acme",
        "vendor.vat": "",
        "total": "9.5",
        "data.status": "paid",
        "tags": '["a","b"]',
    }
    assert rows[1]["status"] == "failed" and rows[1]["error"].startswith("model output")
    assert rows[1]["vendor.name"] == ""


def test_csv_invoice_lists_are_json_cells() -> None:
    out = io.StringIO()
    items = [{"description": "Widget", "quantity": 2, "unit_price": 1.0, "amount": 2.0}]
    with open_writer("csv", None, out, INVOICE) as writer:
        writer.write(ok(vendor_name="Acme", line_items=items))
    row = read_csv(out.getvalue())[0]
    assert json.loads(row["line_items"]) == items
    assert list(row)[8:11] == ["vendor_name", "vendor_address", "vendor_tax_id"]


def test_csv_explode() -> None:
    out = io.StringIO()
    items = [
        {"description": "Widget", "quantity": 2, "unit_price": 1.0, "amount": 2.0},
        {"description": "Gadget", "quantity": 1, "unit_price": 5.0, "amount": 5.0},
    ]
    with open_writer("csv", None, out, INVOICE, explode="line_items") as writer:
        writer.write(ok("two.pdf", invoice_number="7", line_items=items))
        writer.write(ok("none.pdf", invoice_number="8", line_items=[]))
        writer.write(failed("bad.pdf"))
    rows = read_csv(out.getvalue())
    assert [r["file"] for r in rows] == ["two.pdf", "two.pdf", "none.pdf", "bad.pdf"]
    assert [r["line_items.description"] for r in rows] == ["Widget", "Gadget", "", ""]
    assert [r["invoice_number"] for r in rows] == ["7", "7", "8", ""]
    assert "line_items" not in rows[0]
    assert list(rows[0])[-4:] == [
        "line_items.description",
        "line_items.quantity",
        "line_items.unit_price",
        "line_items.amount",
    ]


def test_csv_explode_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        open_writer("csv", tmp_path / "out.csv", io.StringIO(), INVOICE, explode="nope")
    assert list(tmp_path.iterdir()) == [], "no temp file left behind"
    with pytest.raises(UsageError, match="no such list field") as info:
        open_writer("csv", None, io.StringIO(), INVOICE, explode="items")
    assert "line_items" in (info.value.hint or "")
    with pytest.raises(UsageError, match="not a list"):
        open_writer("csv", None, io.StringIO(), INVOICE, explode="total")
    with pytest.raises(UsageError):
        open_writer("jsonl", None, io.StringIO(), INVOICE, explode="line_items")


def test_csv_without_schema_uses_data_keys() -> None:
    out = io.StringIO()
    with open_writer("csv", None, out) as writer:
        writer.write(failed())
        writer.write(ok(b=1, a={"x": True}))
    rows = read_csv(out.getvalue())
    assert list(rows[0]) == [*RECORD_COLUMNS, "b", "a.x"]
    assert rows[1]["a.x"] == "true"


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_on_exception(tmp_path: Path, fmt: str, exc: type[BaseException]) -> None:
    fresh, old = tmp_path / f"fresh.{fmt}", tmp_path / f"old.{fmt}"
    old.write_text("previous run\n")
    for path in (fresh, old):
        with pytest.raises(exc), open_writer(None, path, io.StringIO(), INVOICE) as writer:
            writer.write(ok())
            raise exc()
    assert not fresh.exists()
    assert old.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name], "temp files removed"


def test_abort_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    writer = open_writer(None, path, io.StringIO())
    writer.write(ok())
    writer.abort()
    assert path.read_text() == "old\n"
    with open_writer(None, path, io.StringIO()) as writer:
        writer.write(ok())
    assert json.loads(path.read_text())["file"] == "a.pdf"


def test_append_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with open_writer(None, path, io.StringIO(), append=True) as writer:
        writer.write(ok("1.pdf"))
        assert path.read_text().count("\n") == 1, "flushed straight into the file"
    path.write_text(path.read_text() + '{"file": "cut sho')  # a crash mid-line
    with pytest.raises(RuntimeError), open_writer(None, path, io.StringIO(), append=True) as writer:
        writer.write(ok("2.pdf"))
        raise RuntimeError
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["file"] == "1.pdf"
    assert lines[1] == '{"file": "cut sho'
    assert json.loads(lines[2])["file"] == "2.pdf", "appended records survive an exception"
    with pytest.raises(UsageError):
        open_writer("csv", path, io.StringIO(), append=True)


def test_unwritable_path_is_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for path in (blocker / "out.jsonl", tmp_path / "missing" / "out.csv", tmp_path):
        with pytest.raises(OutputError):
            open_writer(None, path, io.StringIO(), INVOICE)
    with pytest.raises(OutputError):
        open_writer(None, blocker / "out.jsonl", io.StringIO(), append=True)


def test_dir_writer_mirrors_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with DirWriter(out) as writer:
        target = writer.write(ok(total=1.0), Path("2024/march/a.pdf"))
        writer.write(failed(), Path("b.png"))
    assert target == out / "2024" / "march" / "a.pdf.json"
    assert json.loads(target.read_text())["data"] == {"total": 1.0}
    assert json.loads((out / "b.png.json").read_text())["status"] == "failed"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(ValueError):
        writer.write(ok(), Path("../escape.pdf"))
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError):
        DirWriter(tmp_path / "blocker" / "out")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None


def test_run_stats_summary() -> None:
    stats = RunStats(model_load_s=2.5, wall_s=30.0)
    for i in range(1, 5):
        timings = Timings(total=float(i), ttft=0.1 * i, generate=2.0, output_tokens=20 * i)
        stats.add(Record(file=f"{i}.pdf", pages=[1, 2], status="ok", timings=timings))
    stats.add(Record(file="bad.pdf", pages=[1], status="failed", timings=Timings(total=10.0)))
    stats.add(Record(file="c.pdf", pages=[1], status="ok", cached=True, timings=Timings(total=99.0)))
    stats.add(Record(file="d.pdf", status="duplicate", duplicate_of="1.pdf"))
    summary = stats.summary()
    assert summary["docs_ok"] == 5 and summary["docs_failed"] == 1
    assert summary["docs_cached"] == 1 and summary["docs_duplicate"] == 1
    assert summary["pages"] == 10
    assert summary["docs_per_min"] == pytest.approx(12.0)
    assert summary["latency_p50_s"] == 3.0  # over 1, 2, 3, 4, 10: cached 99 left out
    assert summary["latency_p90_s"] == 10.0
    assert summary["latency_max_s"] == 10.0
    assert summary["ttft_p50_s"] == pytest.approx(0.2)
    assert summary["decode_tokens_per_s_mean"] == pytest.approx((10 + 20 + 30 + 40) / 4)
    assert summary["decode_tokens_per_s_aggregate"] == pytest.approx(200 / 8)
    assert summary["output_tokens"] == 200
    assert summary["model_load_s"] == 2.5


def test_run_stats_empty_and_clock() -> None:
    stats = RunStats()
    stats.start()
    stats.stop()
    summary = stats.summary()
    assert summary["wall_s"] is not None and summary["wall_s"] >= 0
    assert summary["latency_p50_s"] is None and summary["decode_tokens_per_s_mean"] is None


def test_csv_recursive_schema_terminates() -> None:
    schema = {
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}},
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
            }
        },
    }
    out = io.StringIO()
    with open_writer("csv", None, out, schema) as writer:
        writer.write(ok(root={"label": "a", "parent": {"label": "b", "parent": None}}))
    row = read_csv(out.getvalue())[0]
    assert list(row)[8:] == ["root.label", "root.parent"]
    assert json.loads(row["root.parent"]) == {"label": "b", "parent": None}
