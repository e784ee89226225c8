"""The Python API (glmv_cli.Glmv): the same records, statuses and error codes as the CLI, from Python.

Plumbing on the random tiny checkpoint; values on the trained one (held-out documents it never saw);
and the example notebook's code cells, run as a user would run them.
"""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from PIL import Image
from pydantic import BaseModel

from tests.conftest import ROOT, SAMPLES

TRAINED = ROOT / "models" / "glmv-tiny-trained"


class Totals(BaseModel):
    invoice_number: str | None
    total: float | None


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (240, 240, 240)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_extract_takes_paths_bytes_images_and_any_schema_form(tiny_model):
    from glmv_cli import Glmv

    glmv = Glmv(str(tiny_model), cache=False)
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    inputs = [SAMPLES / "receipt-cafe.jpg", _png(), image, b"not a document"]
    records = list(glmv.extract(inputs, schema=Totals, max_tokens=40, repair=False))
    assert [r.file for r in records] == [str(SAMPLES / "receipt-cafe.jpg"), "<input 2>", "<input 3>", "<input 4>"]
    assert [r.status in ("ok", "review") for r in records[:3]] == [True, True, True]
    assert records[3].status == "failed" and records[3].error_code == "unsupported_type"  # the batch went on
    schema = {"title": "Pair", "type": "object", "properties": {"a": {"type": "string"}, "n": {"type": "integer"}}}
    (record,) = glmv.extract(_png(), schema=schema, max_tokens=30)
    assert record.schema_name == "Pair" and set(record.data or {}) <= {"a", "n"}


def test_extract_options_are_the_cli_options(tiny_model):
    from glmv_cli import Glmv
    from glmv_cli.errors import UsageError

    glmv = Glmv(str(tiny_model), cache=False)
    with pytest.raises(TypeError, match="unknown extract option 'colour'"):
        glmv.extract(_png(), schema="document", colour="red")
    with pytest.raises(UsageError, match="text_hint"):
        glmv.extract(_png(), schema="document", text_hint="sometimes")
    with pytest.raises(UsageError):
        glmv.extract(_png(), schema="no_such_schema")


def test_ask_returns_or_streams(tiny_model):
    from glmv_cli import Glmv

    glmv = Glmv(str(tiny_model))
    answer = glmv.ask(_png(), "What is this?", max_tokens=5)
    assert answer.finish_reason in ("stop", "length") and answer.timings["output_tokens"] > 0
    pieces = list(glmv.ask(_png(), "What is this?", max_tokens=5, stream=True))
    assert "".join(pieces) == answer.text  # greedy: the same answer, in pieces


@pytest.mark.xdist_group("trained-model")
def test_values_from_the_trained_checkpoint(tmp_path):
    """Real answers through the API: held-out invoices (text layer), a Pydantic model, then eval."""
    sys.path.insert(0, str(ROOT / "tools"))
    import synth_docs

    synth_docs.write_folder(tmp_path, 20261206, 4, ("invoice",), forms=("pdf",))
    from glmv_cli import Glmv

    with Glmv(str(TRAINED), cache=False) as glmv:
        records = list(glmv.extract(tmp_path, schema=Totals, text_hint="on"))
        truths = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.truth.json"))]
        assert [r.status for r in records] == ["ok"] * 4
        right = sum(r.data["invoice_number"] == t["invoice_number"] for r, t in zip(records, truths, strict=True))
        assert right >= 3, [(r.data, t["invoice_number"]) for r, t in zip(records, truths, strict=True)]
        report = glmv.eval(list(glmv.extract(tmp_path, schema="invoice", text_hint="on")), tmp_path)
        assert report.documents == 4 and report.overall.f1 > 0.5


@pytest.mark.xdist_group("trained-model")
def test_the_example_notebook_runs(monkeypatch, capsys):
    """Every code cell of examples/quickstart.ipynb, in order, in one namespace (the trained checkpoint)."""
    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    monkeypatch.setenv("GLMV_MODEL", str(TRAINED))
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "quickstart.ipynb", "exec", dont_inherit=True), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "samples/invoice-acme.pdf ok" in out and "field F1" in out
    assert os.environ["GLMV_MODEL"] == str(TRAINED)
