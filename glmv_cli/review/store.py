"""The corrections store: every review decision, saved as it is made, beside the result cache.

A decision is keyed by the document's sha256, the schema's name and a top-level field (a list of line
items is one field: its table is decided as a whole). It holds the value the reviewer settled on and the
value the model gave. Records with decisions applied are what `glmv review --export` writes, what a
later `glmv extract` of the same document and schema serves (unless --refresh), and what `glmv eval
--corrections` takes as truth.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from glmv_cli.cache import default_cache_dir

ACTIONS = ("accept", "edit")


class CorrectionStore:
    """SQLite in WAL mode, one row per decision, committed at once: a killed server loses nothing saved."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or default_cache_dir()
        self.path = self.folder / "corrections.sqlite"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS corrections (sha256 TEXT NOT NULL, schema TEXT NOT NULL,"
                " field TEXT NOT NULL, value TEXT NOT NULL, original TEXT NOT NULL, action TEXT NOT NULL,"
                " file TEXT, decided REAL NOT NULL, PRIMARY KEY (sha256, schema, field))"
            )
            self._db = db
        return self._db

    def exists(self) -> bool:
        return self.path.is_file()

    def save(
        self, sha256: str, schema: str, field: str, value: Any, original: Any, action: str, file: str | None = None
    ) -> None:
        """Record one decision (a later one for the same field replaces it)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        with self._lock:
            self.db.execute(
                "INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sha256, schema, field, json.dumps(value), json.dumps(original), action, file, time.time()),
            )

    def forget(self, sha256: str, schema: str, field: str) -> None:
        with self._lock:
            self.db.execute(
                "DELETE FROM corrections WHERE sha256 = ? AND schema = ? AND field = ?", (sha256, schema, field)
            )

    def decisions(self, sha256: str | None, schema: str | None) -> dict[str, dict[str, Any]]:
        """field -> {value, original, action, decided} for one document and schema."""
        if not sha256 or not schema or (self._db is None and not self.exists()):
            return {}
        with self._lock:
            rows = self.db.execute(
                "SELECT field, value, original, action, decided FROM corrections WHERE sha256 = ? AND schema = ?",
                (sha256, schema),
            ).fetchall()
        return {
            f: {"value": json.loads(v), "original": json.loads(o), "action": a, "decided": d} for f, v, o, a, d in rows
        }

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record (JSON form) with its decisions applied, or unchanged when it has none.

        A reviewed record is `ok` and `reviewed: true`; `review_log` keeps each decided field's original value.
        """
        return apply_decisions(record, self.decisions(record.get("sha256"), record.get("schema")))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def apply_decisions(record: dict[str, Any], decisions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if not decisions:
        return record
    data = dict(record.get("data") or {})
    log = []
    for field, d in sorted(decisions.items()):
        data[field] = d["value"]
        log.append({"field": field, "action": d["action"], "original": d["original"], "value": d["value"]})
    out = {**record, "data": data, "reviewed": True, "review_log": log}
    out.update(status="ok", review_reasons=None, error=None, error_code=None)
    return out


def reviewed_truth(records: list[dict[str, Any]], store: CorrectionStore) -> dict[str, dict[str, Any]]:
    """Truth by document key from what people decided: a record counts once every field of it was decided."""
    from glmv_cli.evaluation.sources import doc_key

    truth = {}
    for record in records:
        decisions = store.decisions(record.get("sha256"), record.get("schema"))
        if decisions and set(record.get("data") or {}) <= set(decisions):
            truth[doc_key(record["file"])] = apply_decisions(record, decisions)["data"]
    return truth
