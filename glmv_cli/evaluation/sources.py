"""Read the two sides of an evaluation: extraction records (JSONL) and ground truth (folder or JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glmv_cli.errors import UsageError

TRUTH_SUFFIX = ".truth.json"


def doc_key(file: str) -> str:
    """Records and truth meet on the input file's stem (`a/b/inv1.pdf` -> `inv1`)."""
    name = Path(file).name
    return name[: -len(TRUTH_SUFFIX)] if name.endswith(TRUTH_SUFFIX) else Path(name).stem


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Records by document key; a duplicate takes the data of the record it duplicates."""
    records: dict[str, dict[str, Any]] = {}
    by_file: dict[str, dict[str, Any]] = {}
    for line_no, record in _jsonl(path):
        if not isinstance(record.get("file"), str):
            raise UsageError(f"{path}:{line_no}: a record needs a 'file' key")
        by_file[record["file"]] = record
        records.setdefault(doc_key(record["file"]), record)  # --per-page records: the first page answers
    for record in records.values():
        original = by_file.get(record.get("duplicate_of") or "")
        if record.get("status") == "duplicate" and original:
            record.update(status=original.get("status"), data=original.get("data"))
            record.setdefault("confidence", original.get("confidence"))
    return records


def read_truth(path: Path) -> dict[str, Any]:
    """Truth by document key, from a folder of `<stem>.truth.json` or a JSONL with a `file` key."""
    if path.is_dir():
        return {doc_key(p.name): _unwrap(_json_file(p)) for p in sorted(path.rglob(f"*{TRUTH_SUFFIX}"))}
    if not path.is_file():
        raise UsageError(f"no truth at {path}", "give a folder of <stem>.truth.json files or a JSONL file")
    truth = {}
    for line_no, row in _jsonl(path):
        if not isinstance(row.get("file"), str):
            raise UsageError(f"{path}:{line_no}: a truth line needs a 'file' key")
        # A glmv record (or any line with a data object) gives its data; else every other key is truth.
        values = row["data"] if isinstance(row.get("data"), dict) else {k: v for k, v in row.items() if k != "file"}
        truth[doc_key(row["file"])] = values
    return truth


def _unwrap(value: Any) -> Any:
    # invoice2data stores one invoice as a list of one object.
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"truth file {path} is not readable JSON: {exc}") from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise UsageError(f"no file {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{line_no}: expected a JSON object")
        yield line_no, row
