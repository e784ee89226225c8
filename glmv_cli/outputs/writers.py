"""Record writers: JSONL, JSON and CSV to a stream or an atomically replaced file, and --out-dir."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

from glmv_cli.errors import OutputError, UsageError
from glmv_cli.records import Record
from glmv_cli.schema_walk import non_null

FORMATS = ("jsonl", "json", "csv")
RECORD_COLUMNS = ("file", "pages", "status", "error_code", "error", "warning", "review_reasons", "cached")
CONFIDENCE_SUFFIX = ".confidence"  # --confidence: beside each data column, that value's confidence


def open_writer(
    fmt: str | None,
    path: Path | None,
    stream: TextIO,
    columns_schema: dict[str, Any] | None = None,
    explode: str | None = None,
    append: bool = False,
    confidence: bool = False,
    evidence: bool = False,
) -> Writer:
    """A writer for `fmt` (or the path's extension, else jsonl) to `path`, or to `stream` if None.

    With a path the file appears only on a successful close (temp file + os.replace), except
    JSONL with append=True, which appends line by line to the file (created if missing).
    confidence: CSV gets a `<column>.confidence` column beside each data column (JSON always has it).
    evidence: CSV gets `<column>.page` and `<column>.box` ("x0 y0 x1 y1", 0-1 of the page) beside each.
    """
    if fmt is None:
        suffix = path.suffix.lower().lstrip(".") if path else ""
        fmt = suffix if suffix in FORMATS else "jsonl"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UsageError(f"Unknown output format {fmt!r}", hint=f"choose {', '.join(FORMATS)}")
    if append and fmt != "jsonl":
        raise UsageError(f"Cannot append to a {fmt.upper()} file", hint="resume needs JSONL output")
    if explode and fmt != "csv":
        raise UsageError("--explode works only with CSV output")
    sink = _open_sink(path, stream, append)
    if fmt != "csv":
        return JsonlWriter(sink) if fmt == "jsonl" else JsonWriter(sink)
    try:
        return CsvWriter(sink, columns_schema, explode, confidence=confidence, evidence=evidence)
    except BaseException:  # a bad --explode must not leave a temp file behind
        sink.discard()
        raise


class _Sink:
    """Text destination: a caller's stream, a temp file renamed over `path`, or an appended file."""

    def __init__(self, stream: TextIO, path: Path | None = None, temp: Path | None = None):
        self.stream, self.path, self.temp = stream, path, temp
        self.done = False

    def write(self, text: str, flush: bool = False) -> None:
        try:
            self.stream.write(text)
            if flush:
                self.stream.flush()
        except OSError as exc:
            if self.path is None:
                raise  # the caller's stream (stdout): a closed pipe is the CLI's business
            raise OutputError(f"Cannot write {self.path}: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        if self.path is None:
            self.stream.flush()
            return
        try:
            self.stream.close()
            if self.temp is not None:
                os.replace(self.temp, self.path)
        except OSError as exc:
            self.discard()
            raise OutputError(f"Cannot write {self.path}: {exc.strerror or exc}") from exc

    def discard(self) -> None:
        self.done = True
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            self.stream.close()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def _open_sink(path: Path | None, stream: TextIO, append: bool) -> _Sink:
    if path is None:
        return _Sink(stream)
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: it is a folder")
    try:
        if not append:
            return _temp_sink(path)
        needs_newline = _ends_without_newline(path)
        handle = path.open("a", encoding="utf-8", newline="")
        if needs_newline:  # a line cut short by a crash must not swallow the next record
            handle.write("\n")
        return _Sink(handle, path)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}") from exc


def _temp_sink(path: Path) -> _Sink:
    """A temp file beside `path` (same filesystem, so os.replace is atomic), named with our pid."""
    _remove_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    _copy_mode(Path(name), path)
    return _Sink(os.fdopen(fd, "w", encoding="utf-8", newline=""), path, Path(name))


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files that killed runs (kill -9, power loss) left beside `path`."""
    for temp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = temp.name[len(path.name) + 2 :].partition(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                temp.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _ends_without_newline(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _copy_mode(temp: Path, path: Path) -> None:
    """Give the temp file the old file's mode, or the usual umask mode (mkstemp makes 0600)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    with contextlib.suppress(OSError):  # best effort: some filesystems refuse chmod
        temp.chmod(mode)


class Writer:
    """Base writer: a context manager that closes on success and aborts on any exception."""

    def __init__(self, sink: _Sink):
        self.sink = sink

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output; with a path, put the file in place."""
        if self.sink.done:
            return
        try:
            self.finish()
        except BaseException:
            self.abort()
            raise
        self.sink.commit()

    def finish(self) -> None:
        """Write whatever waits for the end (JSON array, buffered CSV rows)."""

    def abort(self) -> None:
        """Drop the output; with a path, delete the temp file and leave any old file as it was."""
        self.sink.discard()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class JsonlWriter(Writer):
    """One compact JSON object per line, flushed per line so pipes and resume see it at once."""

    def write(self, record: Record) -> None:
        line = json.dumps(record.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
        self.sink.write(line + "\n", flush=True)


class JsonWriter(Writer):
    """One JSON array of all records, written at close."""

    def __init__(self, sink: _Sink):
        super().__init__(sink)
        self.records: list[dict[str, Any]] = []

    def write(self, record: Record) -> None:
        self.records.append(record.to_json_dict())

    def finish(self) -> None:
        self.sink.write(json.dumps(self.records, ensure_ascii=False, indent=2) + "\n")


class CsvWriter(Writer):
    """One row per record (or per item of the `explode` list): record columns, then data columns.

    Data columns follow the schema's property order, nested objects flattened to dotted names.
    Lists that are not exploded, of objects or of scalars, are JSON-encoded in one cell, so
    nothing is lost and the cell parses back with json.loads. None is an empty cell, booleans
    are true/false. Without a schema the columns are the union of the data keys, written at close.
    With `confidence`, each data column is followed by `<column>.confidence`, read from the
    record's confidence structure the same way (a list column's cell is the list of confidences);
    with `evidence`, by `<column>.page` and `<column>.box` from the record's evidence.
    """

    def __init__(
        self,
        sink: _Sink,
        schema: dict[str, Any] | None,
        explode: str | None = None,
        confidence: bool = False,
        evidence: bool = False,
    ):
        super().__init__(sink)
        self.explode = explode
        self.sides = ([_CONFIDENCE] if confidence else []) + (list(_EVIDENCE) if evidence else [])
        self.buffer: list[dict[str, str]] | None = None
        if schema is None:
            if explode:
                raise UsageError("--explode needs a schema to know the item columns")
            self.buffer = []
            self.columns: list[str] = list(RECORD_COLUMNS)
            return
        doc_columns = _flat_columns(schema, schema, seen=_direct_refs(schema))
        self.item_columns: list[str] = []
        if explode:
            if explode not in doc_columns:
                lists = [c for c in doc_columns if _is_array(schema, _property(schema, c))]
                raise UsageError(
                    f"Cannot explode {explode!r}: no such list field",
                    hint=f"list fields: {', '.join(lists) or 'none'}",
                )
            node = _property(schema, explode)
            if not _is_array(schema, node):
                raise UsageError(f"Cannot explode {explode!r}: it is not a list")
            item = non_null(schema, non_null(schema, node).get("items", {}))
            sub = _flat_columns(schema, item, f"{explode}.") if "properties" in item else []
            self.item_columns = sub or [explode]
            i = doc_columns.index(explode)
            doc_columns[i : i + 1] = self.item_columns
        self.columns = list(RECORD_COLUMNS) + [name for c in doc_columns for name in self._with_sides(_data_column(c))]
        self.data_columns = doc_columns
        self._write_line(self.columns)

    def _write_line(self, values: list[str]) -> None:
        text = io.StringIO()
        # With "\n" lines the csv module leaves a bare "\r" unquoted, which readers then reject.
        quoting = csv.QUOTE_ALL if any("\r" in v for v in values) else csv.QUOTE_MINIMAL
        csv.writer(text, lineterminator="\n", quoting=quoting).writerow(values)
        self.sink.write(text.getvalue(), flush=True)

    def write(self, record: Record) -> None:
        base = {
            "file": record.file,
            "pages": format_pages(record.pages),
            "status": record.status,
            "error_code": record.error_code or "",
            "error": record.error or "",
            "warning": record.warning or "",
            "review_reasons": "; ".join(record.review_reasons or []),
            "cached": _cell(record.cached),
        }
        data = record.data or {}
        sides = [(suffix, _structure(record, attr), pick) for suffix, attr, pick in self.sides]
        if self.buffer is not None:
            flat = _flatten_data(data)
            for key in flat:
                for name in self._with_sides(_data_column(key)):
                    if name not in self.columns:
                        self.columns.append(name)
            row = {_data_column(k): v for k, v in flat.items()}
            for suffix, structure, pick in sides:
                row |= {_data_column(k) + suffix: _cell(pick(_lookup(structure, k))) for k in flat}
            self.buffer.append(base | row)
            return
        columns = [c for c in self.data_columns if c not in self.item_columns]
        doc = {_data_column(c): _cell(_lookup(data, c)) for c in columns}
        for suffix, structure, pick in sides:
            doc |= {_data_column(c) + suffix: _cell(pick(_lookup(structure, c))) for c in columns}
        rows: list[dict[str, str]] = [{}]
        if self.explode:
            items = _lookup(data, self.explode) or []
            along = [(suffix, _lookup(structure, self.explode) or [], pick) for suffix, structure, pick in sides]
            rows = [self._item_row(item, [(s, _at(v, n), p) for s, v, p in along]) for n, item in enumerate(items)]
            rows = rows or [{}]
        for item_row in rows:
            row = base | doc | item_row
            self._write_line([row.get(c, "") for c in self.columns])

    def _with_sides(self, column: str) -> list[str]:
        return [column] + [column + suffix for suffix, _, _ in self.sides]

    def _item_row(self, item: Any, sides: list[tuple[str, Any, Any]]) -> dict[str, str]:
        """One exploded item's cells, with its side cells (confidence, evidence) when asked for."""
        if self.item_columns == [self.explode]:
            row = {self.explode: _cell(item)}
            return row | {self.explode + suffix: _cell(pick(value)) for suffix, value, pick in sides}
        prefix = f"{self.explode}."
        item = item if isinstance(item, dict) else {}
        row = {c: _cell(_lookup(item, c[len(prefix) :])) for c in self.item_columns}
        for suffix, value, pick in sides:
            value = value if isinstance(value, dict) else {}
            row |= {c + suffix: _cell(pick(_lookup(value, c[len(prefix) :]))) for c in self.item_columns}
        return row

    def finish(self) -> None:
        if self.buffer is not None:
            self._write_line(self.columns)
            for row in self.buffer:
                self._write_line([row.get(c, "") for c in self.columns])


def _structure(record: Record, attr: str) -> dict[str, Any]:
    value = getattr(record, attr)
    return value if isinstance(value, dict) else {}


def _evidence_part(key: str) -> Any:
    """The page or the box of an evidence leaf (a list column: the list of them); a box as "x0 y0 x1 y1"."""

    def pick(leaf: Any) -> Any:
        if isinstance(leaf, list):
            return [pick(x) for x in leaf]
        if not isinstance(leaf, dict) or "source" not in leaf:
            return None
        value = leaf.get(key)
        return " ".join(f"{v:g}" for v in value) if key == "box" and isinstance(value, list) else value

    return pick


# Side columns beside each data column: (suffix, the record's structure shaped like data, leaf -> cell value).
_CONFIDENCE = (CONFIDENCE_SUFFIX, "confidence", lambda leaf: leaf)
_EVIDENCE = ((".page", "evidence", _evidence_part("page")), (".box", "evidence", _evidence_part("box")))


class DirWriter:
    """--out-dir: one `<input name>.json` record per document, mirroring the input tree."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Cannot create {out_dir}: {exc.strerror or exc}") from exc

    def target(self, rel_path: Path) -> Path:
        """Where the record for the input at `rel_path` (relative to its root) goes."""
        if rel_path.is_absolute() or ".." in rel_path.parts:
            raise ValueError(f"rel_path must stay inside the output folder: {rel_path}")
        return self.out_dir / rel_path.with_name(rel_path.name + ".json")

    def write(self, record: Record, rel_path: Path) -> Path:
        """Write one record atomically; returns the file written."""
        target = self.target(rel_path)
        text = json.dumps(record.to_json_dict(), ensure_ascii=False, indent=2) + "\n"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            sink = _temp_sink(target)
        except OSError as exc:
            raise OutputError(f"Cannot write {target}: {exc.strerror or exc}") from exc
        try:
            sink.write(text)
        except BaseException:
            sink.discard()
            raise
        sink.commit()
        return target

    def close(self) -> None:
        """Nothing to finish: every file is complete once written."""

    def abort(self) -> None:
        """Files already written stay; they are complete records."""

    def __enter__(self) -> DirWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def format_pages(pages: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3;5'; runs of consecutive pages become ranges."""
    runs: list[list[int]] = []
    for page in pages:
        if runs and page == runs[-1][-1] + 1:
            runs[-1].append(page)
        else:
            runs.append([page])
    return ";".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _at(items: Any, n: int) -> Any:
    return items[n] if isinstance(items, list) and n < len(items) else None


def _data_column(name: str) -> str:
    """A data field called like a record column gets a 'data.' prefix so no header repeats."""
    return f"data.{name}" if name in RECORD_COLUMNS else name


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _flatten_data(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten_data(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = _cell(value)
    return out


def _is_array(root: dict[str, Any], node: dict[str, Any] | None) -> bool:
    if node is None:
        return False
    kind = non_null(root, node).get("type")
    return kind == "array" or (isinstance(kind, list) and "array" in kind)


def _property(root: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = root
    for part in dotted.split("."):
        node = non_null(root, node or {}).get("properties", {}).get(part)
    return node


def _flat_columns(
    root: dict[str, Any], node: dict[str, Any], prefix: str = "", seen: frozenset[str] = frozenset()
) -> list[str]:
    """Dotted leaf names in schema order; objects with properties are expanded, lists are leaves."""
    columns: list[str] = []
    for key, sub in non_null(root, node).get("properties", {}).items():
        target = non_null(root, sub)
        refs = _direct_refs(sub)
        if "properties" in target and target.get("type", "object") == "object" and not refs & seen:
            columns += _flat_columns(root, target, f"{prefix}{key}.", seen | refs)
        else:  # scalars, lists, and a recursive model's second appearance: one cell each
            columns.append(f"{prefix}{key}")
    return columns


def _direct_refs(node: Any) -> frozenset[str]:
    """$refs a property points at directly or through anyOf/oneOf."""
    if not isinstance(node, dict):
        return frozenset()
    refs = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
    for child in [*node.get("anyOf", []), *node.get("oneOf", [])]:
        refs |= _direct_refs(child)
    return frozenset(refs)
