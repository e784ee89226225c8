"""The record every document ends in: ok or review with data, or failed with an error and the raw text."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["ok", "review", "failed", "duplicate"]  # review: data written, but worth a human look


class Timings(BaseModel):
    """Per-document timings in seconds (None when not measured, e.g. cached)."""

    load: float | None = None  # reading, decoding, rendering
    preprocess: float | None = None  # processor: resize, patchify, tokenise
    ttft: float | None = None  # time to first token
    generate: float | None = None  # whole generate call share
    total: float | None = None  # wall time for the document
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    tokens_per_s: float | None = None


class Record(BaseModel):
    """One output record per document (or per page with --per-page)."""

    file: str
    pages: list[int] = Field(default_factory=list)
    page_count: int | None = None  # pages in the source document
    pages_cut: int = 0  # selected pages left out by --max-pages (the warning says which were used)
    status: Status
    data: dict[str, Any] | None = None
    confidence: Any = None  # shaped like data: each leaf's confidence in [0, 1] (None: not measured)
    error: str | None = None
    error_code: str | None = None  # stable machine-readable reason for a failure (errors.ERROR_CODES)
    warning: str | None = None  # about the input, e.g. pages left out by --max-pages
    review_reasons: list[str] | None = None  # why the status is review: "field: why", one per doubt
    raw: str | None = None  # the model's text, kept on failure
    duplicate_of: str | None = None
    cached: bool = False
    sha256: str | None = None
    model: str | None = None
    schema_name: str | None = Field(default=None, serialization_alias="schema")
    timings: Timings = Field(default_factory=Timings)
    # shaped like data: each leaf's {page, box: [x0, y0, x1, y1] in 0-1 of the page, source} or None;
    # left out of the JSON when the document has no evidence at all (no text layer)
    evidence: Any = None
    # set once a person decided fields in `glmv review`: the decided fields' original values, in review_log
    reviewed: bool | None = None
    review_log: list[dict[str, Any]] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The record's JSON form; evidence and the review fields only where they exist."""
        optional = ("evidence", "reviewed", "review_log")
        return self.model_dump(mode="json", by_alias=True, exclude={k for k in optional if getattr(self, k) is None})
