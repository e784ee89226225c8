"""The extraction prompt, built from the schema: field names, types and descriptions."""

from __future__ import annotations

from glmv_cli.extraction.schemas import ResolvedSchema

# Bump when the wording changes: it is part of every cache key.
PROMPT_VERSION = "1"
TEXT_HINT_CHARS = 6000

SYSTEM = (
    "You extract structured data from documents. Answer with one JSON object and nothing else. "
    "Copy values exactly as they appear in the document. If a field is not present, use null: "
    "never guess or invent a value."
)


def build_prompt(schema: ResolvedSchema, *, pages: int = 1, text_hint: str | None = None) -> str:
    """The user prompt for one document (its page images come with the request)."""
    doc = "document" if pages == 1 else f"{pages}-page document (pages in order)"
    lines = [f"Extract the following fields from this {doc}."]
    description = (schema.model.__doc__ or "").strip()
    if description and not description.startswith(("A base class", "Usage docs")):
        lines.append(f"The document: {description.splitlines()[0]}")
    lines.append("Fields:")
    for name, type_text, desc in schema.fields():
        lines.append(f"- {name} ({type_text})" + (f": {desc}" if desc else ""))
    lines.append("Dates as YYYY-MM-DD. Numbers as plain numbers: no currency symbols, no thousands separators.")
    if text_hint:
        hint = text_hint[:TEXT_HINT_CHARS]
        lines.append("The document's embedded text layer, which may help with exact spelling and numbers:")
        lines.append(f"<<<\n{hint}\n>>>")
    lines.append("Answer with the JSON object only.")
    return "\n".join(lines)


def repair_prompt(original: str, answer: str, error: str) -> str:
    """A second attempt that shows the model what was wrong with its first answer."""
    return (
        f"{original}\n\nYour previous answer was:\n{answer}\n"
        f"It failed validation: {error}\nReturn a corrected JSON object."
    )
