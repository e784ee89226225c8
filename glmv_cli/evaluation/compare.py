"""Compare one document's predicted data with its truth, field by field."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from glmv_cli.evaluation.match import best_pairs
from glmv_cli.evaluation.normalise import normalise, same


@dataclass
class Counts:
    """True positives, false positives (extra or wrong values) and false negatives (missed or wrong)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        total = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / total if total else 1.0


@dataclass
class Comparison:
    """Per-field counts of one document and (confidence, right) for every predicted leaf."""

    scope: set[str] | None = None  # scored field paths; None scores every field
    fields: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    confidence: list[tuple[float, bool]] = field(default_factory=list)

    def total(self) -> Counts:
        out = Counts()
        for counts in self.fields.values():
            out.add(counts)
        return out


def compare_document(pred: Any, truth: Any, confidence: Any = None, scope: set[str] | None = None) -> Comparison:
    """Compare predicted data with truth; list items are paired by best assignment first."""
    out = Comparison(scope)
    _compare(pred, truth, confidence, "", out)
    return out


def _compare(pred: Any, truth: Any, conf: Any, path: str, out: Comparison) -> None:
    if isinstance(pred, dict) or isinstance(truth, dict):
        pred, truth, conf = _as_dict(pred), _as_dict(truth), _as_dict(conf)
        for key in [*truth, *(k for k in pred if k not in truth)]:
            _compare(pred.get(key), truth.get(key), conf.get(key), f"{path}.{key}" if path else key, out)
    elif isinstance(pred, list) or isinstance(truth, list):
        _compare_lists(_as_list(pred), _as_list(truth), _as_list(conf), path, out)
    else:
        _leaf(pred, truth, conf, path, out)


def _compare_lists(pred: list, truth: list, conf: list, path: str, out: Comparison) -> None:
    weights = [[_agreement(p, t, path, out.scope) for p in pred] for t in truth]
    pairs = best_pairs(weights)
    for t, p in pairs:
        _compare(pred[p], truth[t], _at(conf, p), path, out)
    for t in set(range(len(truth))) - {t for t, _ in pairs}:
        _compare(None, truth[t], None, path, out)
    for p in set(range(len(pred))) - {p for _, p in pairs}:
        _compare(pred[p], None, _at(conf, p), path, out)


def _agreement(pred: Any, truth: Any, path: str, scope: set[str] | None) -> int:
    scratch = Comparison(scope)
    _compare(pred, truth, None, path, scratch)
    return scratch.total().tp


def _leaf(pred: Any, truth: Any, conf: Any, path: str, out: Comparison) -> None:
    if out.scope is not None and path not in out.scope:
        return  # the truth format does not label this field: neither right nor wrong
    p, t = normalise(pred), normalise(truth)
    if p is None and t is None:
        return
    counts = out.fields[path]
    right = same(p, t)
    if right:
        counts.tp += 1
    else:
        counts.fp += p is not None  # an extra value, or a wrong one
        counts.fn += t is not None  # a missed value, or a wrong one
    if p is not None and isinstance(conf, int | float) and not isinstance(conf, bool):
        out.confidence.append((float(conf), right))


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _at(values: list, index: int) -> Any:
    return values[index] if index < len(values) else None
