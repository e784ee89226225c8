"""`--map` files: rename a truth format's keys to schema fields, shipped ones usable by name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from glmv_cli.errors import UsageError

MAPS_DIR = Path(__file__).parent / "maps"
_SEGMENT = re.compile(r"\[[^\]]*\]|[^.\[\]]+")


def shipped_maps() -> list[str]:
    """Names of the maps that ship with glmv."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.json"))


def load_map(spec: str) -> dict[str, Any]:
    """A map by shipped name (`sroie`) or path; checked, `_`-prefixed keys (comments) dropped."""
    path = Path(spec)
    if not path.is_file():
        path = MAPS_DIR / f"{spec}.json"
    if not path.is_file():
        raise UsageError(f"no map {spec!r}", f"give a JSON file or one of: {', '.join(shipped_maps())}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"map {spec} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"map {spec} must be a JSON object of truth path -> schema field")
    fields = {k: v for k, v in raw.items() if not k.startswith("_")}
    for key, target in fields.items():
        if not (isinstance(target, str) or _is_list_target(target)):
            raise UsageError(f"map {spec}: {key!r} must map to a field name or to {{'field': ..., 'items': {{...}}}}")
    return fields


def scope(fields: dict[str, Any]) -> set[str]:
    """The schema field paths a map labels: only these are scored."""
    out = set()
    for target in fields.values():
        if isinstance(target, str):
            out.add(target)
        else:
            out.update(f"{target['field']}.{item}" for item in target["items"].values())
    return out


def apply_map(truth: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Truth re-keyed by the map's schema fields; values the truth lacks are left out."""
    out: dict[str, Any] = {}
    for path, target in fields.items():
        if isinstance(target, str):
            value = _scalar(lookup(truth, path))
            if value is not None:
                _put(out, target, value)
            continue
        items = lookup(truth, path)
        items = [items] if isinstance(items, dict) else items or []
        rows = []
        for item in items:
            row: dict[str, Any] = {}
            for item_path, item_field in target["items"].items():
                value = _scalar(lookup(item, item_path))
                if value is not None:
                    _put(row, item_field, value)
            if row:
                rows.append(row)
        if rows:
            _put(out, target["field"], rows)
    return out


def lookup(node: Any, path: str) -> Any:
    """Follow a dotted path: keys, list indices, `*` (every item) and `[key=value]` (first item that has it)."""
    found = [node]
    spread = False
    for segment in _SEGMENT.findall(path):
        nxt = []
        for value in found:
            nxt.extend(_step(value, segment))
        found = nxt
        spread |= segment == "*"
    if spread:
        return found
    return found[0] if found else None


def _step(value: Any, segment: str) -> list[Any]:
    if segment == "*":
        return list(value.values() if isinstance(value, dict) else value if isinstance(value, list) else [])
    if segment.startswith("["):
        key, _, wanted = segment[1:-1].partition("=")
        items = value if isinstance(value, list) else [value]
        return [item for item in items if str(lookup(item, key)) == wanted][:1]
    if isinstance(value, dict):
        return [value[segment]] if segment in value else []
    if isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
        return [value[int(segment)]]
    return []


def _scalar(value: Any) -> Any:
    # xmltodict keeps an element with attributes as {"@attr": ..., "#text": ...}; Google gives dates as parts.
    if isinstance(value, dict):
        if "#text" in value:
            return value["#text"]
        if {"year", "month", "day"} <= value.keys():
            return f"{value['year']:04d}-{value['month']:02d}-{value['day']:02d}"
        return None
    if isinstance(value, list):
        parts = [str(_scalar(v)) for v in value if _scalar(v) not in (None, "")]
        return " ".join(parts) or None
    return value


def _put(out: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        out = out.setdefault(key, {})
    out[last] = value


def _is_list_target(target: Any) -> bool:
    return (
        isinstance(target, dict)
        and isinstance(target.get("field"), str)
        and isinstance(target.get("items"), dict)
        and all(isinstance(v, str) for v in target["items"].values())
    )
