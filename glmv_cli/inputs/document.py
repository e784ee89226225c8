"""The loaded form of a document: its pages as RGB images, plus the PDF text layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Page:
    """One page (or TIFF frame) of a document, ready for the model."""

    number: int  # 1-based, in the source document
    image: Image.Image  # RGB, EXIF orientation applied
    text: str | None = None  # PDF text layer; None for images or pages without one


@dataclass
class Document:
    """A document read from disk or stdin, with its selected pages."""

    path: str  # for display; "-" for stdin
    sha256: str  # of the file bytes: the cache key
    kind: str  # "image" or "pdf"
    pages: list[Page] = field(default_factory=list)
    total_pages: int = 0  # pages in the source, before selection
