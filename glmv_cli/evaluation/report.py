"""Aggregate per-document comparisons into the `glmv eval` report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glmv_cli.evaluation.compare import Comparison, Counts, compare_document
from glmv_cli.evaluation.mapping import apply_map, load_map, scope
from glmv_cli.evaluation.sources import read_predictions, read_truth

ANSWERED = ("ok", "review")  # statuses whose data is scored (review: written, flagged for a look)
THRESHOLDS = [round(0.5 + 0.05 * i, 2) for i in range(10)]  # 0.5 .. 0.95
WORST = 5


@dataclass
class FieldScore:
    """Precision, recall and F1 of one field (or of all fields: `*`)."""

    field: str
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float

    @classmethod
    def of(cls, name: str, counts: Counts) -> FieldScore:
        return cls(name, counts.tp, counts.fp, counts.fn, counts.precision, counts.recall, counts.f1)


@dataclass
class DocumentScore:
    """One document's outcome: status ok, review, failed (record failed) or missing (no record)."""

    file: str
    status: str
    f1: float
    tp: int
    fp: int
    fn: int


@dataclass
class ConfidenceRow:
    """At threshold t: share of wrong values with confidence below t, of right values at or above it."""

    threshold: float
    wrong_below: float | None
    right_above: float | None


@dataclass
class Report:
    """Everything `glmv eval` prints."""

    documents: int  # documents with truth
    failed: int  # their record failed: every truth value counts as missed
    missing: int  # no record for them: every truth value counts as missed
    unlabelled: int  # records without truth, not scored
    exact_documents: int
    exact_rate: float
    overall: FieldScore  # micro-averaged over every field value
    fields: list[FieldScore]
    worst: list[DocumentScore]
    confidence: list[ConfidenceRow] | None = None
    # Area under the ROC curve of confidence, right values against wrong ones (0.5: no separation, 1: perfect);
    # None unless both kinds were seen.
    confidence_auc: float | None = None
    right_values: int = 0
    wrong_values: int = 0
    scored_fields: list[str] | None = field(default=None)  # with --map: the only fields scored

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(predictions: Path, truth: Path | dict[str, Any], map_spec: str | None = None) -> Report:
    """Score a JSONL of records against ground truth (a path, or truth by document key, e.g. from
    reviewed_truth), optionally renaming truth keys with a map."""
    records = read_predictions(predictions)
    truths = truth if isinstance(truth, dict) else read_truth(truth)
    fields = load_map(map_spec) if map_spec else None
    scored = scope(fields) if fields else None
    docs: list[DocumentScore] = []
    per_field: dict[str, Counts] = {}
    confidence: list[tuple[float, bool]] = []
    for key, raw_truth in truths.items():
        expected = apply_map(raw_truth, fields) if fields else raw_truth
        record = records.get(key)
        status = "missing" if record is None else record.get("status") if record.get("status") in ANSWERED else "failed"
        data = record.get("data") if status in ANSWERED else None
        result: Comparison = compare_document(data, expected, record and record.get("confidence"), scored)
        for name, counts in result.fields.items():
            per_field.setdefault(name, Counts()).add(counts)
        confidence += result.confidence
        total = result.total()
        docs.append(DocumentScore(record["file"] if record else key, status, total.f1, total.tp, total.fp, total.fn))
    overall = Counts()
    for counts in per_field.values():
        overall.add(counts)
    exact = sum(d.status in ANSWERED and d.fp == 0 and d.fn == 0 for d in docs)
    return Report(
        documents=len(docs),
        failed=sum(d.status == "failed" for d in docs),
        missing=sum(d.status == "missing" for d in docs),
        unlabelled=len(records.keys() - truths.keys()),
        exact_documents=exact,
        exact_rate=exact / len(docs) if docs else 0.0,
        overall=FieldScore.of("*", overall),
        fields=[FieldScore.of(name, per_field[name]) for name in sorted(per_field)],
        worst=sorted(docs, key=lambda d: (d.f1, d.file))[:WORST],
        confidence=_separation(confidence) if confidence else None,
        confidence_auc=roc_auc(confidence),
        right_values=sum(ok for _, ok in confidence),
        wrong_values=sum(not ok for _, ok in confidence),
        scored_fields=sorted(scored) if scored else None,
    )


def roc_auc(pairs: list[tuple[float, bool]]) -> float | None:
    """P(a right value's confidence > a wrong one's), ties counting half: the ROC curve's area."""
    right = sorted(c for c, ok in pairs if ok)
    wrong = sorted(c for c, ok in pairs if not ok)
    if not right or not wrong:
        return None
    import bisect

    wins = sum(
        bisect.bisect_left(wrong, c) + 0.5 * (bisect.bisect_right(wrong, c) - bisect.bisect_left(wrong, c))
        for c in right
    )
    return round(wins / (len(right) * len(wrong)), 4)


def _separation(pairs: list[tuple[float, bool]]) -> list[ConfidenceRow]:
    wrong = [c for c, right in pairs if not right]
    right = [c for c, ok in pairs if ok]
    return [
        ConfidenceRow(
            t,
            sum(c < t for c in wrong) / len(wrong) if wrong else None,
            sum(c >= t for c in right) / len(right) if right else None,
        )
        for t in THRESHOLDS
    ]
