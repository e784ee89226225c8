"""Model text -> validated data: strip markers, parse JSON, validate with the Pydantic model."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from glmv_cli.engine.text import split_thinking


def extract_json(text: str) -> Any:
    """The first JSON value in the text (constrained output is pure JSON; free text may wrap it)."""
    _, text = split_thinking(text)
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        start = text.find("{")
        if start < 0:
            raise
        value, _ = json.JSONDecoder().raw_decode(text[start:])
        return value


def validate(text: str, model: type[BaseModel]) -> tuple[dict[str, Any] | None, str | None]:
    """(data, None) when the text holds a valid object, else (None, a one-line reason)."""
    try:
        value = extract_json(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON: {exc.msg} at char {exc.pos}" if text.strip() else "empty answer"
    try:
        obj = model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()[:5]
        )
        return None, f"schema validation failed: {problems}"
    return obj.model_dump(mode="json"), None
