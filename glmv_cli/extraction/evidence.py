"""Where each value came from: a box on a page of the document's own text layer.

For a PDF with a text layer, pdfium gives every word with its box (inputs/pdf.py). A value is found
among runs of consecutive words with the normalisation `glmv eval` uses (numbers in either
convention, dates in any common style, text folded), so "1.085,40", "1,085.40" and 1085.4 all
match. Where a value occurs more than once, the occurrence nearest a word of the field's name
wins (the label: "Total" for `total`, "Invoice"/"number" for `invoice_number`). Exact, cheap, no
model: evidence is `{"page", "box": [x0, y0, x1, y1] (0-1 of the page, top-left origin), "source":
"text"}` per leaf, shaped like the record's data, null where nothing matched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from glmv_cli.evaluation.normalise import normalise, same

MAX_WORDS = 12  # the longest run of words a value may span (an address)
Word = tuple[str, float, float, float, float]  # text, x0, y0, x1, y1 (0-1, top-left origin)


class PageWords:
    """One page's words and every run of up to MAX_WORDS of them, normalised once."""

    def __init__(self, number: int, words: Sequence[Word]):
        self.number = number
        self.words = list(words)
        self.runs: list[tuple[int, int, Any]] = []  # (start, end exclusive, normalised text)
        for start in range(len(self.words)):
            for end in range(start + 1, min(start + MAX_WORDS, len(self.words)) + 1):
                norm = normalise(" ".join(w[0] for w in self.words[start:end]))
                if norm is not None:
                    self.runs.append((start, end, norm))

    def box(self, start: int, end: int) -> list[float]:
        chosen = self.words[start:end]
        return [
            round(min(w[1] for w in chosen), 4),
            round(min(w[2] for w in chosen), 4),
            round(max(w[3] for w in chosen), 4),
            round(max(w[4] for w in chosen), 4),
        ]

    def labels(self, field: str) -> list[tuple[float, float]]:
        """Centres of words that spell a part of the field's name (3 letters or more)."""
        parts = [p for p in re.split(r"[_\W]+", field.casefold()) if len(p) >= 3]
        return [
            ((w[1] + w[3]) / 2, (w[2] + w[4]) / 2)
            for w in self.words
            if any(w[0].casefold().strip(":#.").startswith(p[:6]) for p in parts)
        ]


def locate(data: Any, pages: Sequence[PageWords], field: str = "") -> Any:
    """Evidence shaped like `data`: each leaf's {page, box, source} or None."""
    if isinstance(data, dict):
        return {key: locate(value, pages, key) for key, value in data.items()}
    if isinstance(data, list):
        return [locate(item, pages, field) for item in data]
    if data is None or isinstance(data, bool):
        return None
    target = normalise(data)
    if target is None:
        return None
    found = []
    for page in pages:
        for start, end, norm in page.runs:
            if same(norm, target):
                found.append((page, start, end))
    if not found:
        return None
    found = _shortest(found)
    page, start, end = min(found, key=lambda hit: _distance(hit, field))
    return {"page": page.number, "box": page.box(start, end), "source": "text"}


def _shortest(found: list[tuple[PageWords, int, int]]) -> list[tuple[PageWords, int, int]]:
    """Drop runs that contain a shorter match (a value's words with a neighbour that normalises the same)."""
    keep = []
    for hit in found:
        page, start, end = hit
        inner = any(p is page and s >= start and e <= end and (s, e) != (start, end) for p, s, e in found)
        if not inner:
            keep.append(hit)
    return keep


def _distance(hit: tuple[PageWords, int, int], field: str) -> tuple[int, float]:
    """(page order, distance from the value's box to the nearest label word); no label: by position."""
    page, start, end = hit
    x0, y0, x1, y1 = page.box(start, end)
    labels = page.labels(field) if field else []
    if not labels:
        return page.number, start / 1e6
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # Labels sit left of or above their value: a label below or right of it counts double.
    return page.number, min(
        abs(cx - lx) * (1 if lx <= cx else 2) + abs(cy - ly) * (1 if ly <= cy + 0.01 else 2) for lx, ly in labels
    )
