"""Canonical forms for comparing values: numbers from currency strings, ISO dates, folded text."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

NUMBER_TOLERANCE = 0.005  # half a cent: amounts printed with two decimals compare equal

_SYMBOL = re.compile(r"[$€£¥₹₩]")
# A currency code only before or after the digits, never inside a word: "INV-100" is not -100.
_CODE = re.compile(r"^(?:[A-Z]{3}|RM|Rp|kr)(?=[\s\d])|(?<=[\s\d])(?:[A-Z]{3}|RM|Rp|kr)$")
_DIGITS = re.compile(r"\d(?:[\d.,' \u00a0]*\d)?")
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}  # noqa: SIM905
_YMD = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[T ].*)?")
_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})")  # Factur-X format 102
_NUMERIC = re.compile(r"(\d{1,2})([-/.])(\d{1,2})\2(\d{4}|\d{2})")
_DAY_MONTH = re.compile(r"(\d{1,2})(?:st|nd|rd|th)?\s+([A-Za-z]{3,})\.?,?\s+(\d{4})")
_MONTH_DAY = re.compile(r"([A-Za-z]{3,})\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})")


def normalise(value: Any) -> tuple[str, Any] | None:
    """(kind, canonical value) for a leaf, or None when it is empty."""
    if value is None or isinstance(value, list | dict) and not value:
        return None
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if not isinstance(value, str):
        return ("text", json.dumps(value, sort_keys=True))
    text = value.strip()
    if not text:
        return None
    if (date := parse_date(text)) is not None:
        return ("date", date)
    if (number := parse_number(text)) is not None:
        return ("number", number)
    return ("text", " ".join(text.casefold().split()))


def same(a: tuple[str, Any] | None, b: tuple[str, Any] | None) -> bool:
    """Whether two normalised leaves are equal (numbers within NUMBER_TOLERANCE)."""
    if a is None or b is None or a[0] != b[0]:
        return False
    if a[0] == "number":
        return abs(a[1] - b[1]) <= NUMBER_TOLERANCE
    return a[1] == b[1]


def parse_number(text: str) -> float | None:
    """A number from '1.234,56', '1,234.56', '$ 12.00', '12,5', '(3.00)'; None if it is not one."""
    body = _CODE.sub("", _SYMBOL.sub("", text).strip()).strip()
    negative = body.startswith(("-", "−")) or body.startswith("(") and body.endswith(")")
    body = body.strip("-−+() ")
    if not _DIGITS.fullmatch(body):
        return None
    body = re.sub(r"['\s]", "", body)
    decimal = _decimal_separator(body)
    thousands = {",", "."} - {decimal}
    for sep in thousands:
        body = body.replace(sep, "")
    if decimal:
        body = body.replace(decimal, ".")
    try:
        number = float(body)
    except ValueError:
        return None
    return -number if negative else number


def _decimal_separator(body: str) -> str | None:
    dot, comma = body.rfind("."), body.rfind(",")
    if dot >= 0 and comma >= 0:
        return "." if dot > comma else ","
    sep = "." if dot >= 0 else "," if comma >= 0 else None
    if sep is None or body.count(sep) > 1:
        return None
    whole, _, frac = body.partition(sep)
    # A lone separator before exactly three digits groups thousands ("1,234", "1.234"), unless the whole part is 0.
    return None if len(frac) == 3 and whole != "0" else sep


def parse_date(text: str) -> str | None:
    """ISO date from 2024-01-31, 20240131, 31/01/2024, 01/31/2024, 31.01.2024, 'Jan 31, 2024', '31 Jan 2024'."""
    if m := _YMD.fullmatch(text):
        return _iso(m[1], m[2], m[3])
    if m := _COMPACT.fullmatch(text):
        return _iso(m[1], m[2], m[3])
    if m := _NUMERIC.fullmatch(text):
        first, sep, second, year = int(m[1]), m[2], int(m[3]), m[4]
        # Month first only when it cannot be day first (01/31/2024); dotted dates are always day first.
        month_first = sep != "." and second > 12 >= first
        return _iso(year, first, second) if month_first else _iso(year, second, first)
    if m := _DAY_MONTH.fullmatch(text):
        return _iso(m[3], _MONTHS.get(m[2][:3].lower(), 0), m[1])
    if m := _MONTH_DAY.fullmatch(text):
        return _iso(m[3], _MONTHS.get(m[1][:3].lower(), 0), m[2])
    return None


def _iso(year: Any, month: Any, day: Any) -> str | None:
    year = int(year)
    if year < 100:
        year += 2000 if year < 70 else 1900
    try:
        return datetime.date(year, int(month), int(day)).isoformat()
    except ValueError:
        return None
