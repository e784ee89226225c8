"""`glmv extract` end to end on the tiny checkpoint: inputs, schema forms, outputs, exit codes, cache."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from glmv_cli.cli import app
from glmv_cli.extraction.schemas import resolve_schema
from tests.conftest import ANSWERED, SAMPLES, answered, needs_corpus

runner = CliRunner()
SMALL = "vendor, total float: grand total, date date"


def extract(*args: str, **kw):
    return runner.invoke(app, ["extract", *args, "--max-tokens", "256"], **kw)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def docs(tmp_path) -> Path:
    """A small tree: samples of every kind plus a nested folder, a hidden file and a non-document."""
    root = tmp_path / "in"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("*.py", "*.json"))
    (root / "nested").mkdir()
    Image.new("RGB", (200, 120), "white").save(root / "nested" / "blank.webp")
    Image.new("RGB", (50, 50)).save(root / ".hidden.png")
    (root / "notes.txt").write_text("not a document")
    return root


def test_folder_to_stdout_jsonl(model_env, docs):
    result = extract(str(docs), "--schema", "invoice")
    records = jsonl(result.stdout)  # stdout is pure JSONL
    files = [r["file"] for r in records]
    assert files == sorted(files)  # deterministic order
    names = [Path(f).name for f in files]
    assert "blank.webp" in names
    assert ".hidden.png" not in names and "notes.txt" not in names
    model = resolve_schema("invoice").model
    for r in records:
        assert r["status"] in ANSWERED, (r["file"], r["error"], (r["raw"] or "")[-200:])
        model.model_validate(r["data"])
        assert r["schema"] == "invoice" and r["model"] == str(model_env) and r["timings"]["total"] > 0
    by_name = {Path(r["file"]).name: r for r in records}
    assert by_name["report-3pages.pdf"]["pages"] == [1, 2, 3]  # one request for the whole document
    assert "documents ok" in result.stderr  # statistics on stderr
    assert result.exit_code == 0


@pytest.mark.parametrize("form", ["name", "inline", "py", "py-model", "json"])
def test_schema_forms(model_env, tmp_path, form):
    py = tmp_path / "my_schema.py"
    py.write_text(
        "from pydantic import BaseModel, Field\n"
        "class Shop(BaseModel):\n"
        "    merchant: str | None = Field(None, max_length=40, description='shop name')\n"
        "    total: float | None = Field(None, ge=0, le=1e6)\n"
    )
    js = tmp_path / "shop.json"
    js.write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {
                    "merchant": {"type": ["string", "null"], "maxLength": 40},
                    "total": {"type": ["number", "null"], "minimum": 0, "maximum": 1e6},
                },
            }
        )
    )
    spec = {
        "name": "receipt",
        "inline": "merchant, total float",
        "py": str(py),
        "py-model": f"{py}:Shop",
        "json": str(js),
    }[form]
    result = extract(str(SAMPLES / "receipt-cafe.jpg"), "--schema", spec, "--format", "json")
    assert result.exit_code == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 1 and records[0]["status"] in ANSWERED
    assert "merchant" in records[0]["data"]


def test_unknown_schema_is_usage_error(model_env):
    result = extract(str(SAMPLES / "receipt-cafe.jpg"), "--schema", "nope")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Unknown schema" in result.stderr


def test_csv_flattening_and_explode(model_env, tmp_path):
    out = tmp_path / "out.csv"
    args = [str(SAMPLES / "invoice-acme.png"), str(SAMPLES / "invoice-acme.pdf"), "--schema", "invoice"]
    result = extract(*args, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2
    header = next(csv.reader(out.open()))
    fields = [name for name, _, _ in resolve_schema("invoice").fields() if "." not in name]
    assert header[: len(header) - len(fields)] == [
        "file",
        "pages",
        "status",
        "error_code",
        "error",
        "warning",
        "review_reasons",
        "cached",
    ]
    assert header[-len(fields) :] == fields  # schema order
    cached = extract(*args, "-o", str(tmp_path / "items.csv"), "--explode", "line_items")
    assert cached.exit_code == 0, cached.stderr
    exploded = list(csv.DictReader((tmp_path / "items.csv").open()))
    items = sum(max(1, len(json.loads(r["line_items"] or "[]"))) for r in rows)
    assert len(exploded) == items
    assert "line_items.description" in exploded[0]


def test_bad_files_do_not_stop_the_batch(model_env, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(SAMPLES / "receipt-cafe.jpg", folder / "a.jpg")
    (folder / "b.pdf").write_bytes(b"%PDF-1.4 truncated")
    (folder / "c.png").write_bytes(b"")
    shutil.copy(SAMPLES / "invoice-acme.png", folder / "d.jpg")  # a PNG named .jpg: typed by content
    result = extract(str(folder), "--schema", SMALL, "-v")
    assert result.exit_code == 3
    records = {Path(r["file"]).name: r for r in jsonl(result.stdout)}
    statuses = [answered(records[n]["status"]) for n in ("a.jpg", "b.pdf", "c.png", "d.jpg")]
    assert statuses == ["ok", "failed", "failed", "ok"]
    for name in ("b.pdf", "c.png"):
        assert records[name]["error"] and "\n" not in records[name]["error"]
    assert "failed    " in result.stderr and "b.pdf" in result.stderr  # -v: one line per document


def test_duplicates_pages_and_per_page(model_env, tmp_path):
    folder = tmp_path / "dups"
    folder.mkdir()
    for name in ("one.pdf", "two.pdf"):
        shutil.copy(SAMPLES / "report-3pages.pdf", folder / name)
    result = extract(str(folder), "--schema", SMALL, "--pages", "2-3")
    records = jsonl(result.stdout)
    assert [answered(r["status"]) for r in records] == ["ok", "duplicate"]
    assert records[0]["pages"] == [2, 3] and records[1]["duplicate_of"].endswith("one.pdf")
    per_page = extract(str(folder / "one.pdf"), "--schema", SMALL, "--per-page", "--max-pages", "2")
    assert [r["pages"] for r in jsonl(per_page.stdout)] == [[1], [2]]


def test_text_hint_reaches_the_prompt(model_env, monkeypatch):
    from glmv_cli.extraction import stages

    prompts = []
    real = stages.Stages.process

    def spy(self, batch, gens=None):
        prompts.extend(job.request.prompt for job in batch)
        return real(self, batch, gens)

    monkeypatch.setattr(stages.Stages, "process", spy)
    assert extract(str(SAMPLES / "invoice-acme.pdf"), "--schema", SMALL, "--no-cache").exit_code == 0
    assert "INV-2024-0042" in prompts[-1]  # the PDF's own text layer
    assert (
        extract(str(SAMPLES / "invoice-acme.pdf"), "--schema", SMALL, "--text-hint", "off", "--no-cache").exit_code == 0
    )
    assert "INV-2024-0042" not in prompts[-1]
    assert "total (float): grand total" in prompts[-1]  # field descriptions reach the prompt


def test_repair_retry_then_failed_record_keeps_raw(model_env, tmp_path):
    py = tmp_path / "strict.py"
    py.write_text(
        "from pydantic import BaseModel, Field, field_validator\n"
        "class Strict(BaseModel):\n"
        "    code: str | None = Field(None, max_length=8)\n"
        "    @field_validator('code')\n"
        "    @classmethod\n"
        "    def never(cls, v):\n"
        "        raise ValueError('codes are never valid here')\n"
    )
    result = extract(str(SAMPLES / "invoice-acme.png"), "--schema", f"{py}:Strict")
    assert result.exit_code == 3
    (record,) = jsonl(result.stdout)
    assert record["status"] == "failed" and "codes are never valid" in record["error"]
    assert record["raw"] and json.loads(record["raw"])  # the model's text is kept


def test_cache_second_run_loads_no_model(model_env, tmp_path, monkeypatch):
    args = [
        str(SAMPLES / "invoice-acme.png"),
        str(SAMPLES / "screenshot-login.png"),
        "--schema",
        SMALL,
        "--stats-json",
        str(tmp_path / "s.json"),
    ]
    first = extract(*args)
    assert first.exit_code == 0
    assert json.loads((tmp_path / "s.json").read_text())["model_load_s"] > 0
    from glmv_cli.engine import local

    def boom(*a, **k):
        raise AssertionError("the model must not load when everything is cached")

    monkeypatch.setattr(local, "load_model", boom)
    monkeypatch.setattr(local, "_MODELS", {})
    # Nor is the backend built (it imports torch and transformers: 1.8 s of a cached run over 1,000 files).
    monkeypatch.setattr(local, "LocalBackend", boom)
    second = extract(*args)
    assert second.exit_code == 0, second.stderr
    strip = [{k: v for k, v in r.items() if k not in ("cached", "timings")} for r in jsonl(first.stdout)]
    assert [{k: v for k, v in r.items() if k not in ("cached", "timings")} for r in jsonl(second.stdout)] == strip
    assert all(r["cached"] for r in jsonl(second.stdout))
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["docs_cached"] == 2 and stats["model_load_s"] is None
    info = runner.invoke(app, ["cache", "info", "--json"])
    assert json.loads(info.stdout)["last_run"]["hit_rate"] == 1.0
    assert runner.invoke(app, ["cache", "clear"]).exit_code == 0
    assert json.loads(runner.invoke(app, ["cache", "info", "--json"]).stdout)["entries"] == 0


def test_out_dir_mirrors_the_tree_and_is_not_read_back(model_env, docs):
    out = docs / "results"
    result = extract(str(docs), "--schema", SMALL, "--out-dir", str(out))
    assert result.exit_code == 0, result.stderr
    assert (out / "nested" / "blank.webp.json").is_file()
    assert json.loads((out / "invoice-acme.png.json").read_text())["status"] in ANSWERED
    again = extract(str(docs), "--schema", SMALL, "--out-dir", str(out))
    assert again.exit_code == 0 and not list(out.rglob("*.json.json"))


def test_output_file_inside_input_is_not_read_back(model_env, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLES / "invoice-acme.png", folder / "a.png")
    out = folder / "out.json"
    for _ in range(2):
        assert extract(str(folder), "--schema", SMALL, "-o", str(out)).exit_code == 0
    assert len(json.loads(out.read_text())) == 1


def test_interrupt_leaves_old_output_intact(model_env, tmp_path, monkeypatch):
    from glmv_cli.extraction import pipeline

    out = tmp_path / "out.jsonl"
    out.write_text("previous run\n")

    def interrupted(self, paths):
        yield from []
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Extractor, "run", interrupted)
    result = extract(str(SAMPLES / "invoice-acme.png"), "--schema", SMALL, "-o", str(out))
    assert result.exit_code == 130
    assert out.read_text() == "previous run\n" and list(tmp_path.iterdir()) == [out]


def test_unwritable_output_is_fatal(model_env, tmp_path):
    result = extract(str(SAMPLES / "invoice-acme.png"), "--schema", SMALL, "-o", str(tmp_path / "no" / "out.csv"))
    assert result.exit_code == 1 and result.stderr.startswith("glmv: error:")


def test_quiet_and_pipe_have_no_progress_bar(model_env):
    result = extract(str(SAMPLES / "invoice-acme.png"), "--schema", SMALL, "-q")
    assert result.exit_code == 0 and result.stderr == ""
    assert len(jsonl(result.stdout)) == 1


def test_nasty_corpus(model_env):
    nasty = needs_corpus() / "nasty"
    result = extract(str(nasty), "--schema", SMALL)
    assert result.exit_code == 3
    records = {Path(r["file"]).name: r for r in jsonl(result.stdout)}
    assert len(records) == len(list(nasty.iterdir()))
    convertible = ("cmyk_", "16bit_", "multiframe_", "exif6_", "malformed_")
    for name, r in records.items():
        expected = "ok" if name.startswith(convertible) else "failed"
        assert answered(r["status"]) == expected, (name, r["error"])
        if expected == "failed":
            assert r["error"] and "\n" not in r["error"] and "Traceback" not in r["error"]
    assert "Traceback" not in result.stderr
    assert records["multiframe_exif6_textract_multi_page_tiff.tiff"]["pages"] == [1, 2]


def test_encrypted_pdf_with_password(model_env):
    pdf = needs_corpus() / "nasty" / "encrypted_plumber_pw-test.pdf"
    result = extract(str(pdf), "--schema", SMALL, "--password", "test", "--max-pages", "1")
    assert result.exit_code == 0, result.stdout
    assert jsonl(result.stdout)[0]["pages"] == [1]


def test_csv_reads_every_line(model_env):
    result = extract(str(SAMPLES / "screenshot-login.png"), "--schema", "screenshot", "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["status"] in ANSWERED


def test_resume_after_interrupt(model_env, tmp_path, monkeypatch):
    from glmv_cli.extraction import stages

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("invoice-acme.png", "receipt-cafe.jpg", "screenshot-login.png"):
        shutil.copy(SAMPLES / name, folder / name)
    out = tmp_path / "out.jsonl"
    calls = []
    real = stages.Stages.process

    def flaky(self, batch, gens=None):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real(self, batch, gens)

    monkeypatch.setattr(stages.Stages, "process", flaky)
    first = extract(str(folder), "--schema", SMALL, "--batch-size", "1", "-o", str(out))
    assert first.exit_code == 130 and not out.exists()
    calls.clear()
    monkeypatch.setattr(stages.Stages, "process", real)
    second = extract(
        str(folder), "--schema", SMALL, "--batch-size", "1", "-o", str(out), "--stats-json", str(tmp_path / "s.json")
    )
    assert second.exit_code == 0
    records = jsonl(out.read_text())
    assert [Path(r["file"]).name for r in records] == sorted(p.name for p in folder.iterdir())  # no duplicates
    assert json.loads((tmp_path / "s.json").read_text())["docs_cached"] == 1  # finished work was kept


def test_concurrent_runs_share_the_cache(tmp_path):
    import multiprocessing

    from glmv_cli.cache import ResultCache

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_fill_cache, args=(tmp_path, n)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = ResultCache(tmp_path)
    assert cache.info()["entries"] == 300
    assert cache.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_opening_the_cache_waits_for_another_run_switching_it_to_wal(tmp_path, monkeypatch):
    """Switching the journal mode needs an exclusive lock that SQLite's busy timeout does not wait for:
    opening the cache retries until the other run lets go (here: at its first wait)."""
    import sqlite3

    from glmv_cli import cache as cache_module

    path = tmp_path / "results.sqlite"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")
    waits = []

    def other_lets_go(seconds: float) -> None:
        waits.append(seconds)
        other.execute("COMMIT")

    monkeypatch.setattr(cache_module.time, "sleep", other_lets_go)
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    cache_module._set_wal(db)
    assert len(waits) == 1 and db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _fill_cache(folder: Path, n: int) -> None:
    from glmv_cli.cache import ResultCache

    cache = ResultCache(folder)
    for i in range(100):
        cache.put(f"{n}-{i}", {"records": [{"i": i}]})
        cache.get(f"{(n + 1) % 3}-{i}")
    cache.finish_run()


def test_missing_path_is_usage_error(model_env, tmp_path):
    result = extract(str(tmp_path / "nope"), "--schema", SMALL)
    assert result.exit_code == 2 and "No such file" in result.stderr
