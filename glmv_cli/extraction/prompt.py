"""The extraction prompt, built from the schema: field names, types and descriptions."""

from __future__ import annotations

from glmv_cli.extraction.schemas import ResolvedSchema

# Bump when the wording changes: it is part of every cache key.
PROMPT_VERSION = "1"
TEXT_HINT_CHARS = 6000
TEXT_HINT_MIN_CHARS = 20  # `auto`: below this a text layer is noise (scanned page, stray marks)

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
        lines += _hint_lines(text_hint)
    lines.append("Answer with the JSON object only.")
    return "\n".join(lines)


def pick_text_hint(texts: list[str | None], mode: str) -> str | None:
    """The pages' text layers joined, as --text-hint MODE gives them to the model (None: no hint)."""
    if mode == "off":
        return None
    text = "\n\n".join(t for t in texts if t)
    if mode == "auto" and len(text.strip()) < TEXT_HINT_MIN_CHARS:
        return None
    return text or None


def question_prompt(question: str, text_hint: str | None = None) -> str:
    """`glmv ask`'s prompt: the question, after the document's text layer when it has one."""
    return "\n".join([*_hint_lines(text_hint), question]) if text_hint else question


def _hint_lines(text_hint: str) -> list[str]:
    return [
        "The document's embedded text layer, which may help with exact spelling and numbers:",
        f"<<<\n{text_hint[:TEXT_HINT_CHARS]}\n>>>",
    ]


def repair_prompt(original: str, answer: str, error: str) -> str:
    """A second attempt that shows the model what was wrong with its first answer."""
    return (
        f"{original}\n\nYour previous answer was:\n{answer}\n"
        f"It failed validation: {error}\nReturn a corrected JSON object."
    )
