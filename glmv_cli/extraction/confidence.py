"""Per-field confidence from the model's own token probabilities, and the `review` rule.

A leaf value's confidence is the lowest probability the model gave any token that overlaps the
value's own characters (a string's content without its quotes; a number, true/false or null as
written). The probabilities are the raw ones, taken before the grammar mask, so a token the
grammar forced is scored by what the model wanted, not by the mask. Keys, quotes and punctuation
lie outside every value and never count. The minimum (rather than a mean) makes one doubtful
token enough to doubt a value, and cannot be raised by the many near-certain tokens around it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

Span = tuple[int, int]  # [start, end) character offsets in the answer text

_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"


def leaf_spans(text: str, start: int) -> dict[tuple, Span]:
    """Walk the JSON value at `start`: every leaf's path (keys and list indices) and its span.

    The standard library's decoder reads each leaf (and gives its end); only the walk over
    objects and arrays is done here. Raises ValueError on text that is not JSON.
    """
    spans: dict[tuple, Span] = {}

    def skip(i: int) -> int:
        while i < len(text) and text[i] in _WHITESPACE:
            i += 1
        return i

    def value(i: int, path: tuple) -> int:
        i = skip(i)
        if i >= len(text):
            raise ValueError("the answer ends inside a JSON value")
        if text[i] == "{":
            i = skip(i + 1)
            if text[i : i + 1] == "}":
                return i + 1
            while True:
                key, i = _DECODER.raw_decode(text, skip(i))
                i = skip(i)
                if text[i : i + 1] != ":":
                    raise ValueError(f"expected ':' at char {i}")
                i = skip(value(i + 1, (*path, key)))
                if text[i : i + 1] == "}":
                    return i + 1
                if text[i : i + 1] != ",":
                    raise ValueError(f"expected ',' or '}}' at char {i}")
                i += 1
        if text[i] == "[":
            i = skip(i + 1)
            if text[i : i + 1] == "]":
                return i + 1
            n = 0
            while True:
                i = skip(value(i, (*path, n)))
                n += 1
                if text[i : i + 1] == "]":
                    return i + 1
                if text[i : i + 1] != ",":
                    raise ValueError(f"expected ',' or ']' at char {i}")
                i += 1
        leaf, end = _DECODER.raw_decode(text, i)
        # A string's own characters are inside its quotes; an empty string is scored by its quotes.
        spans[path] = (i + 1, end - 1) if isinstance(leaf, str) and end - i > 2 else (i, end)
        return end

    value(start, ())
    return spans


def token_offsets(pieces: Sequence[bytes]) -> tuple[str, list[Span]]:
    """The answer text the tokens spell, and each token's character span in it.

    Tokens are bytes: a multi-byte character may be split across tokens, and then every token
    holding part of it overlaps that character.
    """
    raw = b"".join(pieces)
    text = raw.decode("utf-8", errors="surrogateescape")  # one character per undecodable byte
    # byte offset -> character offset, at every character boundary
    char_at: dict[int, int] = {}
    position = 0
    for n, ch in enumerate(text):
        char_at[position] = n
        position += len(ch.encode("utf-8", errors="surrogateescape"))
    char_at[position] = len(text)
    spans = []
    position = 0
    for piece in pieces:
        start, end = position, position + len(piece)
        position = end
        # widen to character boundaries: a token with part of a character overlaps all of it
        while start not in char_at:
            start -= 1
        while end not in char_at:
            end += 1
        spans.append((char_at[start], char_at[end]))
    return text, spans


def leaf_confidence(pieces: Sequence[bytes], logprobs: Sequence[float]) -> dict[tuple, float]:
    """Every leaf path of the JSON answer -> the lowest probability of its own tokens."""
    text, tokens = token_offsets(pieces)
    after = text.rfind("</think>")  # a server's tokens may include the thinking before the answer
    after = 0 if after < 0 else after + len("</think>")
    start = min((i for i in (text.find("{", after), text.find("[", after)) if i >= 0), default=-1)
    if start < 0:
        return {}
    spans = leaf_spans(text, start)
    out = {}
    for path, (a, b) in spans.items():
        own = [lp for (s, e), lp in zip(tokens, logprobs, strict=False) if s < b and e > a]
        if own:
            out[path] = math.exp(min(own))
    return out


def confidence_like(data: Any, by_path: dict[tuple, float], path: tuple = ()) -> Any:
    """A structure shaped like `data` with each leaf's confidence (None where the answer had no such leaf).

    `data` is the validated value; a leaf the model did not write (a default filled in by the
    schema) has no confidence.
    """
    if isinstance(data, dict):
        return {k: confidence_like(v, by_path, (*path, k)) for k, v in data.items()}
    if isinstance(data, list):
        return [confidence_like(v, by_path, (*path, i)) for i, v in enumerate(data)]
    value = by_path.get(path)
    return None if value is None else round(value, 4)


def leaves(confidence: Any, path: str = "") -> list[tuple[str, float | None]]:
    """(dotted path, confidence) of every leaf of a confidence structure; list items as name[i]."""
    if isinstance(confidence, dict):
        return [leaf for k, v in confidence.items() for leaf in leaves(v, f"{path}.{k}" if path else str(k))]
    if isinstance(confidence, list):
        return [leaf for i, v in enumerate(confidence) for leaf in leaves(v, f"{path}[{i}]")]
    return [(path, confidence)]


# -- review ----------------------------------------------------------------------------------------
CLOSED_EARLY = "(answer): closed early at the token budget of {budget} tokens; lists or text may be incomplete"
_BELOW = " is below --review-below "


def below_reasons(confidence: Any, threshold: float | None) -> list[str]:
    """One reason per leaf whose confidence is under the threshold."""
    if threshold is None or confidence is None:
        return []
    doubtful = [(path, c) for path, c in leaves(confidence) if c is not None and c < threshold]
    return [f"{path}: confidence {c:.2g}{_BELOW}{threshold:g}" for path, c in doubtful]


def is_threshold_reason(reason: str) -> bool:
    """A reason that depends on --review-below (recomputed when a cached record is reused)."""
    return _BELOW in reason
