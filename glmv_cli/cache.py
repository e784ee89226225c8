"""Content-addressed result store: SQLite in the user cache folder, safe for concurrent runs."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def default_cache_dir() -> Path:
    override = os.environ.get("GLMV_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("glmv"))


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the compact, key-sorted JSON of everything that changes an answer."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """Maps cache keys to finished records; WAL mode lets several runs share one file."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or default_cache_dir()
        self.path = self.folder / "results.sqlite"
        self.hits = 0
        self.misses = 0
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            _set_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, record TEXT NOT NULL,"
                " file TEXT, created REAL NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, finished REAL,"
                " hits INTEGER, misses INTEGER)"
            )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db = db
        return self._db

    def get(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, record: dict[str, Any], file: str | None = None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO results (key, record, file, created) VALUES (?, ?, ?, ?)",
            (key, json.dumps(record, separators=(",", ":")), file, time.time()),
        )

    def finish_run(self) -> None:
        """Remember this run's hit rate for `glmv cache info`."""
        if self._db is not None or self.hits or self.misses:
            self.db.execute(
                "INSERT INTO runs (finished, hits, misses) VALUES (?, ?, ?)", (time.time(), self.hits, self.misses)
            )

    def info(self) -> dict[str, Any]:
        entries = self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        last = self.db.execute("SELECT finished, hits, misses FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        size = sum(p.stat().st_size for p in self.folder.glob("results.sqlite*") if p.is_file())
        info: dict[str, Any] = {"path": str(self.path), "entries": entries, "size_bytes": size}
        if last:
            total = last[1] + last[2]
            info["last_run"] = {
                "finished": last[0],
                "hits": last[1],
                "misses": last[2],
                "hit_rate": round(last[1] / total, 4) if total else None,
            }
        return info

    def clear(self) -> int:
        removed = self.db.execute("DELETE FROM results").rowcount
        self.db.execute("DELETE FROM runs")
        self.db.execute("VACUUM")
        return removed

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _set_wal(db: sqlite3.Connection, wait_s: float = 30.0) -> None:
    """Turn on WAL mode, waiting out another process doing the same: switching the journal mode takes
    an exclusive lock that SQLite's busy timeout does not wait for (seen as 'database is locked' when
    several runs open a new cache at once)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
