"""`glmv eval`: normalisation rules, line-item matching, scoring, truth forms, maps, and the shipped corpus maps."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from glmv_cli.cli import app
from glmv_cli.evaluation import evaluate
from glmv_cli.evaluation.compare import compare_document
from glmv_cli.evaluation.mapping import apply_map, load_map, shipped_maps
from glmv_cli.evaluation.match import best_pairs
from glmv_cli.evaluation.normalise import normalise, parse_date, parse_number, same
from tests.conftest import needs_corpus


@pytest.mark.parametrize(
    ("text", "number"),
    [("1.234,56", 1234.56), ("1,234.56", 1234.56), ("$ 12.00", 12.0), ("12,5", 12.5), ("EUR 1 234,5", 1234.5),
     ("1,234", 1234.0), ("0.125", 0.125), ("(3.00)", -3.0), ("RM 9.00", 9.0), ("INV-100", None)],
)  # fmt: skip
def test_numbers_from_currency_strings(text, number):
    assert parse_number(text) == number


@pytest.mark.parametrize(
    ("text", "iso"),
    [("2024-01-31", "2024-01-31"), ("31/01/2024", "2024-01-31"), ("01/31/2024", "2024-01-31"),
     ("02/03/2024", "2024-03-02"), ("Jan 31, 2024", "2024-01-31"), ("31 January 2024", "2024-01-31"),
     ("31.01.2024", "2024-01-31"), ("20240131", "2024-01-31"), ("18/03/18", "2018-03-18"), ("2024-02-30", None)],
)  # fmt: skip
def test_dates_to_iso(text, iso):
    assert parse_date(text) == iso


def test_strings_fold_and_kinds_compare():
    assert same(normalise("  ACME   Corp\n"), normalise("acme corp"))
    assert same(normalise(12), normalise("12.00"))
    assert same(normalise("31.01.2024"), normalise("Jan 31, 2024"))
    assert not same(normalise("12.01"), normalise(12))
    assert normalise("") is None and normalise(None) is None and normalise([]) is None


def test_best_pairs_is_an_exact_assignment_at_any_size():
    # Greedy would take (0,0)=3 and leave 1 -> total 3; the exact assignment finds 2 + 2.
    assert sorted(best_pairs([[3, 2], [2, 0]])) == [(0, 1), (1, 0)]
    # 9 x 9 (the old greedy fallback's size): that block plus seven 1s. Greedy scores 10; the best is 11.
    nine = [[0] * 9 for _ in range(9)]
    nine[0][:2], nine[1][:2] = [3, 2], [2, 0]
    for i in range(2, 9):
        nine[i][i] = 1
    pairs = best_pairs(nine)
    assert sum(nine[r][c] for r, c in pairs) == 11 and (0, 0) not in pairs
    long = [[10 if r == c else 1 for c in range(12)] for r in range(12)]
    assert sorted(best_pairs(long)) == [(i, i) for i in range(12)]
    # rectangular either way, zero-weight pairs left unmatched
    assert best_pairs([[0, 5, 0]]) == [(0, 1)] and best_pairs([[0], [4], [0]]) == [(1, 0)]
    assert best_pairs([[0, 0], [0, 0]]) == []


def test_best_pairs_matches_brute_force():
    import itertools
    import random

    rng = random.Random(5)
    for _ in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        w = [[rng.choice([0, 0, 1, 2, 3, 5]) for _ in range(cols)] for _ in range(rows)]
        best = 0
        for perm in itertools.permutations(range(max(rows, cols)), rows):
            best = max(best, sum(w[r][c] for r, c in enumerate(perm) if c < cols))
        assert sum(w[r][c] for r, c in best_pairs(w)) == best, w


def test_line_items_matched_whatever_the_order():
    truth = {"line_items": [{"description": "Apple", "amount": 1}, {"description": "Pear", "amount": 2}]}
    pred = {"line_items": [{"description": "pear", "amount": "2.00"}, {"description": "apple", "amount": 9}]}
    counts = compare_document(pred, truth).fields
    assert (counts["line_items.description"].tp, counts["line_items.amount"].tp) == (2, 1)
    assert (counts["line_items.amount"].fp, counts["line_items.amount"].fn) == (1, 1)


def test_missing_extra_and_wrong_values():
    truth = {"a": "x", "b": "y", "c": "z"}
    pred = {"a": "X", "b": None, "c": "w", "d": "extra"}
    f = compare_document(pred, truth).fields
    assert (f["a"].tp, f["b"].fn, f["b"].fp) == (1, 1, 0)  # right; predicted null = miss
    assert (f["c"].fp, f["c"].fn) == (1, 1)  # wrong value: both
    assert (f["d"].fp, f["d"].fn) == (1, 0)  # value the truth lacks: extra


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RECORDS = [
    {"file": "docs/a.pdf", "status": "ok", "data": {"total": "1.234,56", "date": "31/01/2024", "name": " ACME "}},
    {"file": "docs/b.png", "status": "ok", "data": {"total": 5, "date": None, "name": "Other", "tip": 1}},
    {"file": "docs/c.pdf", "status": "failed", "data": None},
    {"file": "docs/extra.pdf", "status": "ok", "data": {"total": 1}},
]
TRUTH = {
    "a": {"total": 1234.56, "date": "2024-01-31", "name": "acme"},
    "b": {"total": "5.00", "date": "2024-02-01", "name": "Other"},
    "c": {"total": 3},
    "d": {"total": 4},
}


@pytest.fixture
def predictions(tmp_path):
    return _write_jsonl(tmp_path / "p.jsonl", RECORDS)


def _check_known_scores(report):
    # tp: a 3 + b 2 = 5; fn: b.date, c.total, d.total = 3; fp: b.tip = 1.
    assert (report.overall.tp, report.overall.fp, report.overall.fn) == (5, 1, 3)
    assert report.overall.f1 == pytest.approx(10 / 14)
    assert (report.documents, report.failed, report.missing, report.unlabelled) == (4, 1, 1, 1)
    assert report.exact_documents == 1 and report.exact_rate == 0.25
    assert {d.file for d in report.worst[:2]} == {"docs/c.pdf", "d"}  # f1 0: failed and missing
    total = {f.field: f for f in report.fields}["total"]
    assert (total.precision, total.recall) == (1.0, 0.5)


def test_truth_folder(tmp_path, predictions):
    folder = tmp_path / "truth"
    folder.mkdir()
    for stem, values in TRUTH.items():
        (folder / f"{stem}.truth.json").write_text(json.dumps(values))
    _check_known_scores(evaluate(predictions, folder))


def test_truth_jsonl(tmp_path, predictions):
    rows = [{"file": f"{stem}.pdf", **values} for stem, values in TRUTH.items()]
    _check_known_scores(evaluate(predictions, _write_jsonl(tmp_path / "t.jsonl", rows)))


def test_map_renames_nested_and_list_items_and_scores_only_mapped_fields(tmp_path):
    mapping = {
        "_about": "test",
        "head.amount": "total",
        "who": "vendor.name",
        "lines": {"field": "line_items", "items": {"label": "description", "price.value": "amount"}},
    }
    map_file = tmp_path / "m.json"
    map_file.write_text(json.dumps(mapping))
    truth = [{"head": {"amount": "12,50"}, "who": "Acme", "lines": [{"label": "A", "price": {"value": 1}}]}]
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.truth.json").write_text(json.dumps(truth))  # a list of one object is that object
    items = [{"description": "a", "amount": 1, "quantity": 3}]
    data = {"total": 12.5, "vendor": {"name": "ACME"}, "note": "unlabelled", "line_items": items}
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"file": "x.png", "status": "ok", "data": data}])
    report = evaluate(preds, tmp_path / "t", str(map_file))
    assert report.overall.f1 == 1.0 and report.overall.tp == 4
    assert report.scored_fields == ["line_items.amount", "line_items.description", "total", "vendor.name"]


def test_confidence_separation_reported_only_when_present(tmp_path, predictions):
    truth = _write_jsonl(tmp_path / "t.jsonl", [{"file": "a", "x": "1", "y": "2"}])
    conf = {"x": 0.9, "y": 0.4}
    record = {"file": "a", "status": "ok", "data": {"x": 1, "y": 3}, "confidence": conf}
    preds = _write_jsonl(tmp_path / "conf.jsonl", [record])
    rows = {r.threshold: r for r in evaluate(preds, truth).confidence}
    assert (rows[0.5].wrong_below, rows[0.5].right_above) == (1.0, 1.0)
    assert (rows[0.95].wrong_below, rows[0.95].right_above) == (1.0, 0.0)
    assert evaluate(predictions, truth).confidence is None


def test_cli_text_and_json(tmp_path, predictions):
    rows = [{"file": f"{stem}.pdf", **values} for stem, values in TRUTH.items()]
    truth = _write_jsonl(tmp_path / "t.jsonl", rows)
    text = CliRunner().invoke(app, ["eval", str(predictions), str(truth)])
    assert text.exit_code == 0, text.output
    assert "overall (micro)" in text.output and "worst documents" in text.output
    out = CliRunner().invoke(app, ["eval", str(predictions), str(truth), "--format", "json"])
    assert out.exit_code == 0
    assert json.loads(out.output)["overall"]["f1"] == pytest.approx(10 / 14)


@pytest.mark.parametrize(
    "args",
    [["missing.jsonl", "t.jsonl"], ["p.jsonl", "missing"], ["p.jsonl", "t.jsonl", "--map", "nosuchmap"],
     ["p.jsonl", "t.jsonl", "--map", "bad.json"]],
)  # fmt: skip
def test_usage_errors_exit_2_with_one_line(tmp_path, predictions, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    _write_jsonl(tmp_path / "t.jsonl", [{"file": "a", "total": 1}])
    (tmp_path / "bad.json").write_text('{"a": 3}')
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 2
    assert result.output.count("glmv: error:") == 1


CORPUS_MAPS = {
    "invoices/i2d_coolblue1": "invoice2data",
    "invoices/i2d_AmazonWebServices": "invoice2data",
    "invoices/zf_en16931_1": "facturx",
    "invoices/az_sample-invoice": "azure-invoice",
    "invoices/gcp_warehouse_invoice1": "gcp-warehouse",
    "invoices/az_Invoice_1": "azure-labels",
    "receipts/sroie_019": "sroie",
    "receipts/az_contoso-allinone": "azure-receipt",
    "receipts/textract_receipt": "textract-expense",
}


@pytest.mark.parametrize(("stem", "map_name"), CORPUS_MAPS.items())
def test_shipped_map_on_corpus_truth_scores_a_perfect_prediction_1(tmp_path, stem, map_name):
    corpus = needs_corpus()
    truth_file = corpus / f"{stem}.truth.json"
    raw = json.loads(truth_file.read_text())
    mapped = apply_map(raw[0] if isinstance(raw, list) else raw, load_map(map_name))
    assert len(mapped) >= 2, mapped  # the map reaches real fields
    preds = _write_jsonl(tmp_path / "p.jsonl", [{"file": f"{stem}.pdf", "status": "ok", "data": mapped}])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / truth_file.name).write_text(truth_file.read_text())
    result = CliRunner().invoke(app, ["eval", str(preds), str(tmp_path / "t"), "--map", map_name, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["overall"]["f1"] == 1.0 and report["overall"]["tp"] >= 2 and report["exact_documents"] == 1


def test_every_shipped_map_loads():
    assert {"sroie", "invoice2data", "facturx", "cord"} <= set(shipped_maps())
    for name in shipped_maps():
        assert load_map(name)
