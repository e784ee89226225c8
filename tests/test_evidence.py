"""Evidence: each value's page and box, found in a PDF's own text layer with glmv eval's normalisation."""

from __future__ import annotations

import csv
import io
import json
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
            x0, y0, x1, y1 = evidence["box"]
            inside = [
                w[0]
                for w in words
                if w[1] >= x0 - 1e-3 and w[3] <= x1 + 1e-3 and w[2] >= y0 - 1e-3 and w[4] <= y1 + 1e-3
            ]
            assert same(normalise(" ".join(inside)), normalise(value)), (field, inside, value)
            checked += 1
    assert checked >= 6
    done = subprocess.run([*cmd, "--format", "csv", "--evidence-columns"], capture_output=True, text=True, timeout=300)
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and {"total.page", "total.box"} <= set(rows[0])
    assert any(row["total.page"] == "1" and len(row["total.box"].split()) == 4 for row in rows)
