"""Evidence: each value's page and box, found in a PDF's own text layer with glmv eval's normalisation."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from glmv_cli.extraction.evidence import PageWords, locate
from tests.conftest import ROOT, SAMPLES

TRAINED = ROOT / "models" / "glmv-tiny-trained"


def _word(text, x, y, w=0.05, h=0.02):
    return (text, x, y, x + w, y + h)


PAGE = [
    _word("Subtotal", 0.6, 0.70),
    _word("1.000,00", 0.8, 0.70),
    _word("Total", 0.6, 0.75),
    _word("1.085,40", 0.8, 0.75),
    _word("Date", 0.1, 0.10),
    _word("March", 0.2, 0.10),
    _word("15,", 0.26, 0.10),
    _word("2024", 0.3, 0.10),
    _word("Acme", 0.1, 0.05),
    _word("Widgets", 0.16, 0.05),
    _word("Ltd.", 0.24, 0.05),
    _word("Note:", 0.1, 0.9),
    _word("1,085.40", 0.3, 0.9),  # the same amount again, far from the Total label
]


def test_values_are_found_in_either_convention_nearest_their_label():
    pages = [PageWords(1, PAGE)]
    data = {"total": 1085.4, "date": "2024-03-15", "vendor": "ACME WIDGETS LTD.", "missing": "nowhere", "n": None}
    found = locate(data, pages)
    assert found["total"] == {"page": 1, "box": [0.8, 0.75, 0.85, 0.77], "source": "text"}  # beside "Total"
    assert found["date"]["box"] == [0.2, 0.1, 0.35, 0.12]  # three words, one date
    assert found["vendor"]["box"] == [0.1, 0.05, 0.29, 0.07]
    assert found["missing"] is None and found["n"] is None
    items = locate({"items": [{"amount": 1000}, {"amount": 7}]}, pages)
    assert items["items"][0]["amount"]["box"][:2] == [0.8, 0.7] and items["items"][1]["amount"] is None


def test_pdf_text_layer_words_have_page_boxes():
    from glmv_cli.inputs import load_document

    page = load_document(SAMPLES / "invoice-acme.pdf").pages[0]
    words = {w[0]: w[1:] for w in page.words}
    assert "INVOICE" in words and "INV-2024-0042" in words
    x0, y0, x1, y1 = words["INVOICE"]
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and y0 < 0.5  # top half: origin top left
    assert load_document(SAMPLES / "invoice-acme.png").pages[0].words is None


def _words_in(words, box) -> list[str]:
    """The words of a page whose boxes lie inside `box` (0-1, top left)."""
    x0, y0, x1, y1 = box
    return [w[0] for w in words if w[1] >= x0 - 1e-3 and w[3] <= x1 + 1e-3 and w[2] >= y0 - 1e-3 and w[4] <= y1 + 1e-3]


@pytest.mark.xdist_group("trained-model")
def test_extract_gives_right_values_their_boxes(tmp_path):
    """The trained checkpoint on held-out text-layer invoices: every value it got right has a box whose
    words are that value; CSV gets <column>.page and <column>.box."""
    sys.path.insert(0, str(ROOT / "tools"))
    import synth_docs

    synth_docs.write_folder(tmp_path, 20261209, 3, ("invoice",), forms=("pdf",))
    cmd = [sys.executable, "-m", "glmv_cli", "extract", str(tmp_path), "--schema", "invoice", "-m", str(TRAINED)]
    cmd += ["--text-hint", "on", "--no-cache", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from glmv_cli.evaluation.normalise import normalise, same
    from glmv_cli.inputs import load_document

    checked = 0
    for line in done.stdout.splitlines():
        record = json.loads(line)
        truth = json.loads((tmp_path / record["file"].rsplit("/", 1)[-1]).with_suffix(".truth.json").read_text())
        words = load_document(record["file"]).pages[0].words
        for field in ("invoice_number", "invoice_date", "total", "vendor_tax_id"):
            value = record["data"][field]
            if value is None or not same(normalise(value), normalise(truth[field])):
                continue
            evidence = record["evidence"][field]
            assert evidence is not None and evidence["page"] == 1 and evidence["source"] == "text", field
            inside = _words_in(words, evidence["box"])
            assert same(normalise(" ".join(inside)), normalise(value)), (field, inside, value)
            checked += 1
    assert checked >= 6
    done = subprocess.run([*cmd, "--format", "csv", "--evidence-columns"], capture_output=True, text=True, timeout=300)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and {"total.page", "total.box"} <= set(rows[0])
    assert any(row["total.page"] == "1" and len(row["total.box"].split()) == 4 for row in rows)


CORPUS_MAPS = {  # file-name prefix -> the glmv eval map of its truth format
    "i2d_": "invoice2data",
    "zf_": "facturx",
    "az_Invoice": "azure-labels",
    "az_sample": "azure-invoice",
    "gcp_": "gcp-warehouse",
}


def test_corpus_values_in_a_text_layer_have_boxes_that_hold_them():
    """Real invoices (../shared/corpus) with their ground truth as the values: every scalar value that occurs
    in a PDF's own text layer gets text evidence, and the words inside its box read as that value."""
    from glmv_cli.evaluation.mapping import apply_map, load_map
    from glmv_cli.evaluation.normalise import normalise, same
    from glmv_cli.evaluation.sources import read_truth
    from glmv_cli.inputs import load_document
    from tests.conftest import needs_corpus

    folder = needs_corpus() / "invoices"
    truths = read_truth(folder)
    checked, found_in = 0, set()
    for pdf in sorted(folder.glob("*.pdf")):
        prefix = next((p for p in CORPUS_MAPS if pdf.name.startswith(p)), None)
        if prefix is None or pdf.stem not in truths:
            continue
        expected = apply_map(truths[pdf.stem], load_map(CORPUS_MAPS[prefix]))
        pages = [PageWords(p.number, p.words) for p in load_document(pdf).pages if p.words]
        if not pages:
            continue
        values = {k: v for k, v in expected.items() if isinstance(v, (str, int, float)) and normalise(v)}
        evidence = locate(values, pages)
        for field, value in values.items():
            want = normalise(value)
            occurs = any(same(norm, want) for page in pages for _, _, norm in page.runs)
            box = evidence[field]
            assert (box is not None) == occurs, (pdf.name, field, value)
            if box is None:
                continue
            assert box["source"] == "text"
            inside = _words_in(next(p for p in pages if p.number == box["page"]).words, box["box"])
            assert same(normalise(" ".join(inside)), want), (pdf.name, field, value, inside)
            checked += 1
            found_in.add(pdf.name)
    assert checked >= 40 and len(found_in) >= 10, (checked, sorted(found_in))


# --- the grounding pass (--evidence model|all) --------------------------------------------------------


def test_grounding_boxes_parse_or_are_null():
    from glmv_cli.extraction.grounding import parse_box, targets

    assert parse_box("[100, 200, 300, 400]") == [0.1, 0.2, 0.3, 0.4]
    assert parse_box("the total is at [[5,6,900,1000]] here") == [0.005, 0.006, 0.9, 1.0]
    for bad in ("", "no box", "[1,2,3]", "[300,200,100,400]", "[1,2,3,1001]", "[a,b,c,d]", None):
        assert parse_box(bad) is None
    data = {"total": 12.5, "vendor": "Acme", "due": None, "items": [{"amount": 3.0, "paid": True}]}
    evidence = {"total": {"page": 1, "box": [0, 0, 1, 1], "source": "text"}, "vendor": None}
    confidence = {"total": 0.1, "vendor": 0.95, "items": [{"amount": 0.2}]}
    assert [t[0] for t in targets(data, evidence, confidence, None)] == [("vendor",), ("items", 0, "amount")]
    assert targets(data, evidence, confidence, 0.9) == [(("items", 0, "amount"), "amount", 3.0)]


class _Grounded:
    """The trained checkpoint for extraction; grounding requests answered with a box for known values only."""

    def __init__(self, inner, boxes):
        self.inner, self.boxes, self.grounding_calls = inner, boxes, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, requests):
        from glmv_cli.engine.base import Generation

        out, pending = {}, []
        for i, r in enumerate(requests):
            if r.prompt.startswith("Locate "):
                self.grounding_calls += 1
                found = next((box for value, box in self.boxes.items() if f'"{value}"' in r.prompt), "no idea")
                out[i] = Generation(text=found, tag=r.tag)
            else:
                pending.append(i)
        if pending:
            for i, gen in zip(pending, self.inner.generate([requests[i] for i in pending]), strict=True):
                out[i] = gen
        return [out[i] for i in range(len(requests))]


def test_evidence_model_places_what_the_text_layer_cannot(tmp_path, monkeypatch):
    """An image has no text layer: --evidence all asks the model for every value; a box or null, cached."""
    from glmv_cli import Glmv
    from glmv_cli.engine.factory import create_backend

    monkeypatch.setenv("GLMV_CACHE_DIR", str(tmp_path / "cache"))
    inner = create_backend(str(ROOT / "models" / "glmv-tiny-trained"))
    first = list(Glmv(backend=inner).extract([SAMPLES / "invoice-acme.png"], schema="invoice", use_cache=False))[0]
    data = first.data
    value = next(v for v in data.values() if isinstance(v, (int, float)) and not isinstance(v, bool))
    backend = _Grounded(inner, {value: "<|begin_of_box|>[100,200,300,400]<|end_of_box|>"})
    glmv = Glmv(backend=backend)
    record = list(glmv.extract([SAMPLES / "invoice-acme.png"], schema="invoice", evidence="all"))[0]
    assert record.status in ("ok", "review") and record.data == data
    leaves = [e for e in record.evidence.values() if not isinstance(e, list)]
    placed = [e for e in leaves if e is not None]
    assert placed and all(e == {"page": 1, "box": [0.1, 0.2, 0.3, 0.4], "source": "model"} for e in placed)
    assert any(e is None for e in leaves), "a value with no box in the answer keeps null evidence"
    calls = backend.grounding_calls
    assert calls >= len([v for v in data.values() if v is not None and not isinstance(v, (list, bool))])
    again = list(glmv.extract([SAMPLES / "invoice-acme.png"], schema="invoice", evidence="all"))[0]
    assert again.cached and again.evidence == record.evidence and backend.grounding_calls == calls

    # model: only the doubtful values (under --review-below) are asked about.
    backend.grounding_calls = 0
    doubtful = list(glmv.extract([SAMPLES / "invoice-acme.png"], schema="invoice", evidence="model", review_below=0))[0]
    assert backend.grounding_calls == 0 and doubtful.evidence is None


def test_evidence_model_on_the_real_engine_never_fails_a_record(tmp_path):
    """The trained checkpoint itself, unprompted for boxes: whatever it answers, evidence is a box or null."""
    out = tmp_path / "p.jsonl"
    env = {**os.environ, "GLMV_MODEL": str(ROOT / "models" / "glmv-tiny-trained"), "GLMV_CACHE_DIR": str(tmp_path)}
    files = [str(SAMPLES / "invoice-acme.png"), str(SAMPLES / "invoice-acme.pdf")]
    cmd = [
        sys.executable,
        "-m",
        "glmv_cli",
        "extract",
        *files,
        "--schema",
        "invoice",
        "--evidence",
        "all",
        "-o",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    for record in map(json.loads, out.read_text().splitlines()):
        assert record["status"] in ("ok", "review")
        for entry in _leaves(record["evidence"]):
            if entry is not None:
                assert entry["source"] in ("text", "model") and len(entry["box"]) == 4
                assert 0 <= entry["box"][0] < entry["box"][2] <= 1 and 0 <= entry["box"][1] < entry["box"][3] <= 1


def _leaves(evidence):
    if isinstance(evidence, dict) and "box" not in evidence:
        for v in evidence.values():
            yield from _leaves(v)
    elif isinstance(evidence, list):
        for v in evidence:
            yield from _leaves(v)
    else:
        yield evidence
