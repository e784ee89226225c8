"""Evidence from the model (`--evidence model|all`): GLM's own grounding, for values the text layer cannot place.

Images and scans have no text layer, so a value's place on the page comes from the model: asked to
locate something, GLM-4.6V answers `<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>` with coordinates
normalised to 0-1000. One short, unconstrained request per value and page, batched like extraction
(the backend batches them and, where it keeps prompt prefixes, shares the page's prefill). The first
page that gives a well-formed box wins; a malformed or missing box leaves the value's evidence null,
never an error. Entries are `{"page", "box": [x0, y0, x1, y1] (0-1, top-left origin), "source": "model"}`.
"""

from __future__ import annotations

import re
from typing import Any

from glmv_cli.engine.base import GenerationSettings, Request

GROUND_PROMPT = 'Locate the {label} "{value}" in the image and give its bounding box.'
SETTINGS = GenerationSettings(max_new_tokens=40)  # a box is about 20 tokens
DEFAULT_BELOW = 0.9  # --evidence model without --review-below: values under this confidence
_BOX = re.compile(
    r"\[\s*(\d{1,4}(?:\.\d+)?)\s*,\s*(\d{1,4}(?:\.\d+)?)\s*,\s*(\d{1,4}(?:\.\d+)?)\s*,\s*(\d{1,4}(?:\.\d+)?)\s*\]"
)

Path = tuple[Any, ...]


def targets(data: Any, evidence: Any, confidence: Any, below: float | None) -> list[tuple[Path, str, Any]]:
    """(path, field name, value) of every leaf value without evidence, under `below` (None: every one)."""
    out: list[tuple[Path, str, Any]] = []

    def walk(value: Any, ev: Any, conf: Any, path: Path, field: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, _at(ev, k), _at(conf, k), (*path, k), k)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, _at(ev, i), _at(conf, i), (*path, i), field)
        elif value is not None and not isinstance(value, bool) and ev is None:
            doubtful = below is None or not isinstance(conf, (int, float)) or conf < below
            if doubtful:
                out.append((path, field, value))

    walk(data, evidence, confidence, (), "")
    return out


def _at(container: Any, key: Any) -> Any:
    if isinstance(container, dict):
        return container.get(key)
    if isinstance(container, list) and isinstance(key, int) and key < len(container):
        return container[key]
    return None


def request(image: Any, field: str, value: Any) -> Request:
    label = field.replace("_", " ") or "value"
    return Request(images=[image], prompt=GROUND_PROMPT.format(label=label, value=value), settings=SETTINGS)


def parse_box(text: str) -> list[float] | None:
    """The first well-formed box in an answer (markers already stripped), in 0-1; None for anything else."""
    match = _BOX.search(text or "")
    if not match:
        return None
    x1, y1, x2, y2 = (float(g) for g in match.groups())
    if not (0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000):
        return None
    return [round(x1 / 1000, 4), round(y1 / 1000, 4), round(x2 / 1000, 4), round(y2 / 1000, 4)]


def empty_like(data: Any) -> Any:
    """Evidence shaped like data with every leaf null."""
    if isinstance(data, dict):
        return {k: empty_like(v) for k, v in data.items()}
    if isinstance(data, list):
        return [empty_like(v) for v in data]
    return None


def put(evidence: Any, path: Path, entry: dict[str, Any]) -> None:
    node = evidence
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = entry
