"""Per-value confidence from raw token probabilities, and the `review` status, end to end."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from glmv_cli.cli import app
from glmv_cli.extraction.confidence import (
    below_reasons,
    confidence_like,
    is_threshold_reason,
    leaf_confidence,
    leaf_spans,
    leaves,
    token_offsets,
)
from tests.conftest import SAMPLES, needs_corpus

runner = CliRunner()


def lp(p: float) -> float:
    return math.log(p)


# -- the aggregation, on hand-made tokens ------------------------------------------------------------------
def test_a_value_is_scored_by_its_own_tokens_only():
    pieces = [b'{"', b"vendor", b'":"', b"Ac", b"me", b'","', b"total", b'":', b"12", b".5", b',"due":', b"null", b"}"]
    probs = [0.01, 0.02, 0.03, 0.9, 0.4, 0.05, 0.06, 0.07, 0.8, 0.7, 0.08, 0.95, 0.09]
    got = leaf_confidence(pieces, [lp(p) for p in probs])
    # keys, quotes and punctuation (all improbable here) never count: each value is its own tokens' minimum
    assert got == pytest.approx({("vendor",): 0.4, ("total",): 0.7, ("due",): 0.95})


def test_a_token_that_spans_a_value_and_punctuation_counts_for_the_value():
    pieces = [b'{"a":"', b"x", b'y","b":[', b"1", b",", b"2", b"]}"]
    probs = [0.1, 0.9, 0.6, 0.5, 0.01, 0.8, 0.02]
    got = leaf_confidence(pieces, [lp(p) for p in probs])
    assert got == pytest.approx({("a",): 0.6, ("b", 0): 0.5, ("b", 1): 0.8})


def test_a_character_split_across_tokens_counts_both_tokens():
    e_acute = "é".encode()
    pieces = [b'{"city":"Caf', e_acute[:1], e_acute[1:], b'"}']
    text, spans = token_offsets(pieces)
    assert text == '{"city":"Café"}'
    assert spans[1] == spans[2] == (12, 13)  # both halves overlap the one character
    got = leaf_confidence(pieces, [lp(0.9), lp(0.3), lp(0.6), lp(0.01)])
    assert got == pytest.approx({("city",): 0.3})


def test_thinking_before_the_answer_is_skipped():
    pieces = [b"<think>", b'{"a":', b"7}", b"</think>", b'{"a":', b"1", b"}"]
    got = leaf_confidence(pieces, [lp(p) for p in (0.5, 0.5, 0.01, 0.5, 0.5, 0.9, 0.5)])
    assert got == pytest.approx({("a",): 0.9})


def test_empty_strings_nested_objects_and_lists_of_objects():
    text = '{"a":"","b":{"c":true},"items":[{"d":1},{"d":-2.5e3}],"e":[]}'
    spans = leaf_spans(text, 0)
    assert {path: text[a:b] for path, (a, b) in spans.items()} == {
        ("a",): '""',  # an empty string is scored by its quotes
        ("b", "c"): "true",
        ("items", 0, "d"): "1",
        ("items", 1, "d"): "-2.5e3",
    }


def test_confidence_is_shaped_like_the_validated_data():
    data = {"vendor": "Acme", "items": [{"qty": 1}, {"qty": 2}], "currency": "EUR"}  # currency: a schema default
    by_path = {("vendor",): 0.91234, ("items", 0, "qty"): 0.5, ("items", 1, "qty"): 0.25}
    expected = {"vendor": 0.9123, "items": [{"qty": 0.5}, {"qty": 0.25}], "currency": None}
    assert confidence_like(data, by_path) == expected
    assert leaves(confidence_like(data, by_path)) == [
        ("vendor", 0.9123),
        ("items[0].qty", 0.5),
        ("items[1].qty", 0.25),
        ("currency", None),
    ]


def test_threshold_reasons_name_the_fields_and_are_recognised():
    reasons = below_reasons({"vendor": 0.9, "items": [{"qty": 0.2}], "total": None}, 0.5)
    assert reasons == ["items[0].qty: confidence 0.2 is below --review-below 0.5"]
    assert all(is_threshold_reason(r) for r in reasons)
    assert below_reasons({"vendor": 0.1}, None) == []


# -- the engine: log-probabilities from the scores before the grammar mask ----------------------------------
def test_logprobs_are_the_raw_model_probabilities_not_the_masked_ones(tiny_model):
    import torch

    from glmv_cli.engine.base import GenerationSettings, Request
    from glmv_cli.engine.local import LocalBackend

    backend = LocalBackend(str(tiny_model), device="cpu", dtype="float32")  # the forward below: a float32 cache
    schema = {
        "type": "object",
        "properties": {"vendor": {"type": ["string", "null"]}, "total": {"type": ["number", "null"]}},
        "required": ["vendor", "total"],
        "additionalProperties": False,
    }
    request = Request(
        prompt="Extract the vendor and total.",
        json_schema=schema,
        settings=GenerationSettings(max_new_tokens=48, logprobs=True),
    )
    gen = backend.generate([request])[0]
    assert gen.token_logprobs and gen.token_bytes and len(gen.token_logprobs) == len(gen.token_bytes)
    ids = gen.token_ids
    assert ids is not None and len(ids) == len(gen.token_logprobs)

    # Teacher-force the prompt plus the answer: the model's own distribution at every answer step.
    lm = backend.loaded
    encoding, _ = backend._encode(request, think=False)
    prompt = encoding["input_ids"]
    full = torch.cat([prompt, torch.tensor([ids])], dim=1)
    with torch.inference_mode():
        logits = lm.model(input_ids=full, attention_mask=torch.ones_like(full)).logits[0].float()
    steps = logits[prompt.shape[1] - 1 : -1]
    raw = torch.log_softmax(steps, dim=-1)[torch.arange(len(ids)), torch.tensor(ids)]
    assert [round(x, 3) for x in gen.token_logprobs] == [round(float(x), 3) for x in raw]

    # What the masked probabilities would have been: the same scores renormalised over the tokens the
    # grammar allowed. They differ (random weights put most mass on disallowed tokens), so a record built
    # from masked probabilities fails the equality above.
    matcher = backend.grammar.matcher(schema)
    masked = []
    for step, token in enumerate(ids):
        allowed = torch.zeros(steps.shape[1], dtype=torch.bool)
        mask = matcher.compute_logit_bias()
        allowed[: len(mask)] = torch.frombuffer(bytearray(mask), dtype=torch.uint8).bool()
        masked.append(float(torch.log_softmax(steps[step].masked_fill(~allowed, float("-inf")), -1)[token]))
        matcher.consume_token(token)
    assert any(m - r > 0.5 for m, r in zip(masked, gen.token_logprobs, strict=True))


# -- the CLI: confidence in every record, review status, counts, CSV, exit codes ----------------------------
def extract(*args: str):
    return runner.invoke(app, ["extract", *args])


@pytest.fixture
def docs(tmp_path) -> Path:
    root = tmp_path / "in"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("*.py", "*.json"))
    return root


def test_closed_early_answers_are_review_everywhere(model_env, docs, tmp_path):
    stats = tmp_path / "stats.json"
    args = [str(docs), "--schema", "receipt", "--max-tokens", "64", "--stats-json", str(stats)]
    result = extract(*args, "-o", str(tmp_path / "p.jsonl"), "-v")
    assert result.exit_code == 0, result.stderr  # review is success
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert records and all(r["status"] == "review" for r in records), [r["error"] for r in records]
    for r in records:
        assert r["review_reasons"][0].startswith("(answer): closed early at the token budget of 64 tokens")
        assert r["data"] is not None and r["warning"] is None
    assert json.loads(stats.read_text())["docs_review"] == len(records)
    assert "documents to review" in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("review ")]
    assert len(lines) == len(records) and all("closed early" in line for line in lines)  # -v: one line each

    csv_run = extract(*args, "-o", str(tmp_path / "p.csv"))  # from the cache: still review
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert {r["status"] for r in rows} == {"review"} and {r["cached"] for r in rows} == {"true"}
    assert all(r["review_reasons"].startswith("(answer): closed early") for r in rows)
    assert csv_run.exit_code == 0

    strict = extract(*args, "--strict", "-o", str(tmp_path / "strict.jsonl"))
    assert strict.exit_code == 3


def test_review_below_counts_and_follows_the_threshold_of_each_run(model_env, docs, tmp_path):
    stats = tmp_path / "stats.json"
    args = [str(docs), "--schema", "vendor, total float", "--max-tokens", "256", "--stats-json", str(stats)]
    first = extract(*args, "--review-below", "0.5")
    assert first.exit_code == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    doubtful = [r for r in records if any(is_threshold_reason(x) for x in r["review_reasons"] or [])]
    assert doubtful  # random weights: improbable values everywhere
    assert all(r["status"] == "review" for r in doubtful)
    assert json.loads(stats.read_text())["docs_review"] == sum(r["status"] == "review" for r in records)

    again = extract(*args)  # cached, no threshold: its reasons are dropped, not replayed
    for r in (json.loads(line) for line in again.stdout.splitlines()):
        assert r["cached"] and not any(is_threshold_reason(x) for x in r["review_reasons"] or [])

    zero = extract(*args, "--review-below", "0")
    assert all(
        not any(is_threshold_reason(x) for x in json.loads(line)["review_reasons"] or [])
        for line in zero.stdout.splitlines()
    )


def test_every_leaf_of_every_invoice_has_a_confidence_and_csv_columns_sit_beside_the_data(model_env, tmp_path):
    corpus = needs_corpus() / "invoices"
    folder = tmp_path / "invoices"
    folder.mkdir()
    for f in sorted(p for p in corpus.iterdir() if p.suffix.lower() in (".pdf", ".png", ".jpg"))[:3]:
        shutil.copy(f, folder)
    out = tmp_path / "p.jsonl"
    result = extract(str(folder), "--schema", "invoice", "--max-tokens", "256", "--confidence", "-o", str(out))
    assert result.exit_code in (0, 3), result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    answered = [r for r in records if r["status"] in ("ok", "review")]
    assert answered
    for r in answered:
        assert _same_shape(r["data"], r["confidence"])
        values = leaves(r["confidence"])
        assert values and all(c is not None and 0.0 <= c <= 1.0 for _, c in values), values

    csv_out = tmp_path / "p.csv"
    extract(str(folder), "--schema", "invoice", "--max-tokens", "256", "--confidence", "-o", str(csv_out))
    header = next(csv.reader(csv_out.open()))
    data_columns = header[header.index("cached") + 1 :]
    assert data_columns[1::2] == [c + ".confidence" for c in data_columns[0::2]]
    for row in csv.DictReader(csv_out.open()):
        if row["status"] != "failed":
            assert 0.0 <= float(row["total.confidence"]) <= 1.0


def _same_shape(data, confidence) -> bool:
    if isinstance(data, dict):
        return (
            isinstance(confidence, dict)
            and data.keys() == confidence.keys()
            and all(_same_shape(v, confidence[k]) for k, v in data.items())
        )
    if isinstance(data, list):
        return (
            isinstance(confidence, list)
            and len(data) == len(confidence)
            and all(_same_shape(a, b) for a, b in zip(data, confidence, strict=True))
        )
    return not isinstance(confidence, (dict, list))
