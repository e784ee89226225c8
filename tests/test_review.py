"""glmv review without a browser: the session's queue and checks, the page's API, saving, export, flow-back into
`glmv extract` through the cache, and `glmv eval --corrections` (tests/test_review_browser.py drives the page)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmv_cli.cli import app
from glmv_cli.review.session import DecisionError, ReviewSession, min_confidence
from glmv_cli.review.store import CorrectionStore

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "glmv-tiny-trained"
INVOICE = ROOT / "samples" / "invoice-acme.pdf"

pytestmark = pytest.mark.xdist_group("trained")


@pytest.fixture
def glmv():
    from glmv_cli import Glmv

    with Glmv(str(TRAINED)) as g:
        yield g


def extract(glmv, *paths: Path, **options) -> list[dict]:
    return [r.to_json_dict() for r in glmv.extract(list(paths), schema="invoice", **options)]


def write_results(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_queue_puts_review_then_failed_with_text_then_lowest_confidence(tmp_path):
    rows = [
        {"file": "a.pdf", "status": "ok", "schema": "invoice", "sha256": "a", "data": {}, "confidence": {"t": 0.9}},
        {"file": "b.pdf", "status": "failed", "schema": "invoice", "sha256": "b", "raw": "{..."},
        {"file": "c.pdf", "status": "ok", "schema": "invoice", "sha256": "c", "data": {}, "confidence": {"t": 0.2}},
        {"file": "d.pdf", "status": "review", "schema": "invoice", "sha256": "d", "data": {}, "confidence": {}},
        {"file": "e.pdf", "status": "failed", "schema": "invoice", "error_code": "pdf_corrupt"},
        {"file": "f.pdf", "status": "duplicate", "schema": "invoice", "duplicate_of": "a.pdf"},
    ]
    session = ReviewSession(write_results(tmp_path, rows), CorrectionStore(tmp_path / "store"))
    assert [q["file"] for q in session.queue()] == ["d.pdf", "b.pdf", "c.pdf", "a.pdf", "e.pdf"]
    assert min_confidence({"a": [{"x": 0.5}, {"x": 0.25}], "b": None}) == 0.25


def test_review_saves_each_decision_and_it_flows_back(glmv, tmp_path):
    first = extract(glmv, INVOICE)
    assert first[0]["status"] in ("ok", "review") and not first[0].get("reviewed")
    results = write_results(tmp_path, first)
    session = ReviewSession(results, CorrectionStore())
    doc = session.document(0)
    names = [f["name"] for f in doc["fields"]]
    assert names[:2] == ["vendor_name", "vendor_address"] and "line_items" in names
    assert next(f for f in doc["fields"] if f["name"] == "line_items")["kind"] == "table"

    with pytest.raises(DecisionError, match="invoice_date"):
        session.decide(0, "invoice_date", "2024-13-45", "edit")
    with pytest.raises(DecisionError, match="quantity"):
        session.decide(0, "line_items", [{"description": "x", "quantity": "many"}], "edit")
    session.decide(0, "invoice_date", "2024-02-29", "edit")
    session.decide(0, "line_items", [{"description": "Widget", "quantity": "3", "unit_price": 2, "amount": 6}], "edit")
    for f in session.document(0)["fields"]:
        if f["decision"] is None:
            session.decide(0, f["name"], f["original"], "accept")

    # A new session (a restarted page) sees every decision: they were saved as made.
    again = ReviewSession(results, CorrectionStore())
    assert all(f["decision"] for f in again.document(0)["fields"])

    # Flow-back: the same document and schema come back corrected from the cache; --refresh recomputes.
    second = extract(glmv, INVOICE)[0]
    assert second["cached"] and second["reviewed"] and second["status"] == "ok"
    assert second["data"]["invoice_date"] == "2024-02-29"
    widget = {"description": "Widget", "quantity": 3.0, "unit_price": 2.0, "amount": 6.0}
    assert second["data"]["line_items"] == [widget]
    log = {e["field"]: e for e in second["review_log"]}
    assert log["invoice_date"]["original"] == first[0]["data"]["invoice_date"]
    assert log["invoice_date"]["action"] == "edit" and log["vendor_name"]["action"] == "accept"
    fresh = extract(glmv, INVOICE, refresh=True)[0]
    assert "reviewed" not in fresh and fresh["data"] == first[0]["data"]

    # Export: JSONL and CSV with the decisions applied, the original kept in review_log.
    runner = CliRunner()
    out = tmp_path / "corrected.jsonl"
    result = runner.invoke(app, ["review", str(results), "--export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported[0]["reviewed"] is True and exported[0]["status"] == "ok"
    assert exported[0]["data"]["invoice_date"] == "2024-02-29"
    assert {e["field"] for e in exported[0]["review_log"]} == set(names)
    table = tmp_path / "corrected.csv"
    assert runner.invoke(app, ["review", str(results), "--export", "-o", str(table)]).exit_code == 0
    row = next(csv.DictReader(table.open()))
    assert row["status"] == "ok" and row["invoice_date"] == "2024-02-29"

    # glmv eval with the decisions as truth: the edited values are the model's misses.
    result = runner.invoke(app, ["eval", str(results), "--corrections", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["documents"] == 1
    by_field = {f["field"]: f for f in report["fields"]}
    if first[0]["data"]["invoice_date"] != "2024-02-29":
        assert by_field["invoice_date"]["tp"] == 0
    assert by_field.get("vendor_name", {"fn": 0})["fn"] == 0


def test_eval_needs_truth_or_corrections(tmp_path):
    results = write_results(tmp_path, [{"file": "a.pdf", "status": "ok", "data": {"x": 1}, "schema": "invoice"}])
    runner = CliRunner()
    assert runner.invoke(app, ["eval", str(results)]).exit_code == 2
    result = runner.invoke(app, ["eval", str(results), "--corrections"])
    assert result.exit_code == 2 and "no fully reviewed document" in result.output


def test_review_page_api(glmv, tmp_path):
    from fastapi.testclient import TestClient

    from glmv_cli.review.app import create_review_app

    results = write_results(tmp_path, extract(glmv, INVOICE))
    client = TestClient(create_review_app(ReviewSession(results, CorrectionStore(), threshold=0.5)))
    page = client.get("/")
    assert page.status_code == 200 and "/static/review.js" in page.text and "http" not in page.text.split("<body>")[1]
    assert client.get("/static/review.js").status_code == 200
    assert client.get("/static/review.css").status_code == 200
    assert client.get("/api/queue").json()["queue"][0]["file"] == str(INVOICE)
    doc = client.get("/api/doc/0").json()
    boxes = [f["evidence"] for f in doc["fields"] if f["evidence"]]
    assert boxes, "a text-layer PDF gives its values evidence boxes"
    png = client.get("/api/doc/0/page/1.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/api/doc/9").status_code == 404
    refused = client.post("/api/doc/0/decide", json={"field": "due_date", "value": "31/02/2024", "action": "edit"})
    assert refused.status_code == 422 and "due_date" in refused.json()["error"]
    saved = client.post("/api/doc/0/decide", json={"field": "total", "value": "12.5", "action": "edit"})
    assert saved.json() == {"field": "total", "value": 12.5, "decision": "edit"}
    accepted = client.post("/api/doc/0/accept-confident", json={"threshold": 0.0}).json()["accepted"]
    assert "total" not in accepted and accepted
    client.post("/api/doc/0/undo", json={"field": "total"})
    assert next(f for f in client.get("/api/doc/0").json()["fields"] if f["name"] == "total")["decision"] is None


def test_review_refuses_records_without_a_loadable_schema(tmp_path):
    results = write_results(tmp_path, [{"file": "a.pdf", "status": "ok", "data": {}, "schema": "inline"}])
    result = CliRunner().invoke(app, ["review", str(results), "--export"])
    assert result.exit_code == 2 and "--schema" in result.output
