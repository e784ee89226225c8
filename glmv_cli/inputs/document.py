"""The loaded form of a document: its pages as RGB images, plus the PDF text layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from glmv_cli.inputs.pages import format_page_ranges


@dataclass
class Page:
    """One page (or TIFF frame) of a document, ready for the model."""

    number: int  # 1-based, in the source document
    image: Image.Image  # RGB, EXIF orientation applied
    text: str | None = None  # PDF text layer; None for images or pages without one
    words: list[tuple[str, float, float, float, float]] | None = None  # its words, boxes in 0-1 (top left)
    # The file's own PNG or JPEG bytes when `image` is exactly their decoding (one frame, RGB, no EXIF
    # orientation, no scaling): a remote server is sent them as they are instead of a re-encoding.
    encoded: bytes | None = None


@dataclass
class Document:
    """A document read from disk or stdin, with its selected pages."""

    path: str  # for display; "-" for stdin
    sha256: str  # of the file bytes: the cache key
    kind: str  # "image" or "pdf"
    pages: list[Page] = field(default_factory=list)
    total_pages: int = 0  # pages in the source, before selection
    selected: int = 0  # pages the request (or "all") selects, before the --max-pages cap

    def page_limit_note(self, max_pages: int) -> str | None:
        """A one-line warning when --max-pages dropped selected pages, e.g. "117 pages; used 1-8; raise --max-pages"."""
        if self.selected <= max_pages:
            return None
        if self.selected == self.total_pages:
            what = f"{self.total_pages} pages"
        else:
            what = f"{self.selected} of {self.total_pages} pages selected"
        used = format_page_ranges([p.number for p in self.pages])
        return f"{what}; used {used}; raise --max-pages"
