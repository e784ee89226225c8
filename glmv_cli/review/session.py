"""A review session: the records of one results file, their queue, their schema's fields, and decisions.

Everything the page shows and every decision it sends goes through here; the web app (review/app.py)
is a thin layer of routes over it, and `glmv review --export` uses it without any server.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from glmv_cli.errors import UsageError
from glmv_cli.extraction.schemas import ResolvedSchema, resolve_schema
from glmv_cli.records import Record
from glmv_cli.review.store import CorrectionStore, apply_decisions


class DecisionError(ValueError):
    """A value the schema refuses; its message is one line for the page."""


@dataclass
class Field:
    name: str
    kind: str  # "scalar" or "table" (a list of objects: line items)
    spec: dict[str, Any]  # the JSON Schema of the value (a table: of one row), null branch removed
    columns: list[tuple[str, dict[str, Any]]]  # a table's columns and their JSON Schema
    nullable: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "spec": self.spec,
            "nullable": self.nullable,
            "columns": [{"name": n, "spec": s} for n, s in self.columns],
        }


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records of a `glmv extract` JSONL (or JSON array) file, as JSON objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not glmv's JSONL or JSON: {exc.msg} (line {exc.lineno})") from None
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("file"), str)]
    if not rows:
        raise UsageError(f"no records in {path}", "give the -o file of `glmv extract`")
    return rows


def to_record(row: dict[str, Any]) -> Record:
    """A record's JSON form back into a Record (its `schema` key is the model's schema_name)."""
    return Record.model_validate({k: v for k, v in row.items() if k != "schema"} | {"schema_name": row.get("schema")})


def _strip_null(spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    options = spec.get("anyOf")
    if not options:
        return spec, False
    kept = [o for o in options if o.get("type") != "null"]
    extra = {k: v for k, v in spec.items() if k not in ("anyOf", "default")}
    return ({**kept[0], **extra} if len(kept) == 1 else spec), len(kept) < len(options)


def _deref(root: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return root.get("$defs", {}).get(ref.split("/")[-1], spec)
    return spec


def schema_fields(schema: ResolvedSchema) -> list[Field]:
    root = schema.json_schema()
    out = []
    for name, prop in (root.get("properties") or {}).items():
        spec, nullable = _strip_null(_deref(root, prop))
        items = _deref(root, spec.get("items") or {}) if spec.get("type") == "array" else {}
        if items.get("properties"):
            columns = [(n, _strip_null(_deref(root, s))[0]) for n, s in items["properties"].items()]
            out.append(Field(name, "table", items, columns, nullable))
        else:
            out.append(Field(name, "scalar", spec, [], nullable))
    return out


def min_confidence(value: Any) -> float | None:
    """The lowest leaf confidence under a (nested) confidence value."""
    if isinstance(value, dict):
        found = [min_confidence(v) for v in value.values()]
    elif isinstance(value, list):
        found = [min_confidence(v) for v in value]
    else:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    found = [f for f in found if f is not None]
    return min(found) if found else None


class ReviewSession:
    """The records of one results file, in review order, with one schema and one corrections store."""

    def __init__(
        self,
        results: Path,
        store: CorrectionStore,
        schema: str | None = None,
        dpi: int = 150,
        threshold: float = 0.9,
    ):
        self.results = results
        self.rows = read_results(results)
        self.store = store
        self.dpi = dpi
        self.threshold = threshold
        carried = next((r.get("schema") for r in self.rows if r.get("schema")), None)
        name = schema or carried
        if not name:
            raise UsageError(f"the records in {results} name no schema", "give --schema")
        try:
            self.schema = resolve_schema(name)
        except UsageError as exc:
            raise UsageError(f"cannot load schema {name!r} of these records: {exc.message}", "give --schema") from None
        self.schema_key = carried or name  # decisions are kept under the name the records carry
        self.fields = schema_fields(self.schema)
        self._adapters = {
            f: TypeAdapter(self.schema.model.model_fields[f].annotation)
            for f in (x.name for x in self.fields)
            if f in self.schema.model.model_fields
        }
        self.order = self._queue()
        self._pages: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()

    # -- the queue --------------------------------------------------------------------------------
    def _queue(self) -> list[int]:
        """Record indexes to check first: review, then failed with raw text, then by lowest confidence."""

        def rank(i: int) -> tuple[int, float, int]:
            r = self.rows[i]
            group = {"review": 0, "ok": 2}.get(r.get("status"), 3)
            if r.get("status") == "failed" and r.get("raw"):
                group = 1
            low = min_confidence(r.get("confidence"))
            return group, 1.0 if low is None else low, i

        return sorted((i for i, r in enumerate(self.rows) if r.get("status") != "duplicate"), key=rank)

    def queue(self) -> list[dict[str, Any]]:
        out = []
        for pos, i in enumerate(self.order):
            r = self.rows[i]
            decided = self.store.decisions(r.get("sha256"), self.schema_key)
            out.append(
                {
                    "pos": pos,
                    "file": r["file"],
                    "status": r.get("status"),
                    "min_confidence": min_confidence(r.get("confidence")),
                    "decided": len(decided),
                    "fields": len(self.fields),
                }
            )
        return out

    # -- one document ----------------------------------------------------------------------------
    def row(self, pos: int) -> dict[str, Any]:
        if not 0 <= pos < len(self.order):
            raise KeyError(pos)
        return self.rows[self.order[pos]]

    def document(self, pos: int) -> dict[str, Any]:
        r = self.row(pos)
        decisions = self.store.decisions(r.get("sha256"), self.schema_key)
        data = r.get("data") or {}
        confidence = r.get("confidence") or {}
        evidence = r.get("evidence") or {}
        fields = []
        for f in self.fields:
            d = decisions.get(f.name)
            fields.append(
                {
                    **f.to_json(),
                    "value": d["value"] if d else data.get(f.name),
                    "original": data.get(f.name),
                    "confidence": confidence.get(f.name) if isinstance(confidence, dict) else None,
                    "min_confidence": min_confidence(confidence.get(f.name)) if isinstance(confidence, dict) else None,
                    "evidence": evidence.get(f.name) if isinstance(evidence, dict) else None,
                    "decision": d["action"] if d else None,
                }
            )
        return {
            "pos": pos,
            "count": len(self.order),
            "file": r["file"],
            "status": r.get("status"),
            "error": r.get("error"),
            "raw": r.get("raw") if r.get("status") == "failed" else None,
            "review_reasons": r.get("review_reasons"),
            "pages": r.get("pages") or [1],
            "fields": fields,
            "threshold": self.threshold,
            "schema": self.schema_key,
        }

    def page_png(self, pos: int, page: int) -> bytes:
        """The page as glmv renders it for the run (PDF pages at the run's dpi), as PNG; kept in memory."""
        from glmv_cli.inputs import load_document

        r = self.row(pos)
        key = (pos, page)
        with self._lock:
            if key in self._pages:
                return self._pages[key]
        doc = load_document(Path(r["file"]), pages=[page], dpi=self.dpi, max_pages=1, text_layer=False)
        buf = io.BytesIO()
        doc.pages[0].image.save(buf, format="PNG")
        with self._lock:
            if len(self._pages) > 64:
                self._pages.clear()
            self._pages[key] = buf.getvalue()
            return self._pages[key]

    # -- decisions -------------------------------------------------------------------------------
    def check(self, field: str, value: Any) -> Any:
        """The value in its JSON form if the schema takes it, else DecisionError with one line."""
        adapter = self._adapters.get(field)
        if adapter is None:
            raise DecisionError(f"no field {field!r} in schema {self.schema.name}")
        try:
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise DecisionError(f"{field}{'.' + where if where else ''}: {first['msg']}") from None

    def decide(self, pos: int, field: str, value: Any, action: str) -> dict[str, Any]:
        r = self.row(pos)
        if not r.get("sha256"):
            raise DecisionError("this record has no document hash: it cannot be reviewed")
        clean = self.check(field, value)
        original = (r.get("data") or {}).get(field)
        self.store.save(r["sha256"], self.schema_key, field, clean, original, action, r["file"])
        return {"field": field, "value": clean, "decision": action}

    def accept_confident(self, pos: int, threshold: float | None = None) -> list[str]:
        """Accept every undecided field whose lowest confidence is at or above the threshold."""
        limit = self.threshold if threshold is None else threshold
        doc = self.document(pos)
        accepted = []
        for f in doc["fields"]:
            low = f["min_confidence"]
            if f["decision"] is None and low is not None and low >= limit:
                self.decide(pos, f["name"], f["original"], "accept")
                accepted.append(f["name"])
        return accepted

    def undo(self, pos: int, field: str) -> None:
        r = self.row(pos)
        self.store.forget(r.get("sha256") or "", self.schema_key, field)

    # -- export ----------------------------------------------------------------------------------
    def corrected(self) -> list[dict[str, Any]]:
        """Every record of the file, in file order, with its decisions applied."""
        return [apply_decisions(r, self.store.decisions(r.get("sha256"), self.schema_key)) for r in self.rows]
