"""Render PDF pages with pypdfium2 in this process, capping pixels before rendering, plus the text layer.

Not crash-isolated: glmv renders through `render.PdfRenderer`, whose worker processes call
these functions. Use `render_in_process` directly only where a crash may take the process down.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import pypdfium2 as pdfium
from PIL import Image

from glmv_cli.errors import InputError
from glmv_cli.inputs.document import Page
from glmv_cli.inputs.pages import select_pages

# pdfium is not thread-safe: every pypdfium2 call from threads of one process goes through this lock.
PDFIUM_LOCK = threading.Lock()
POINTS_PER_INCH = 72

PageHook = Callable[[int], object]  # called with the page number before each page (tests: crash, hang)
Word = tuple[str, float, float, float, float]  # text, x0, y0, x1, y1 in 0-1 of the page, origin top left


class RgbPage(NamedTuple):
    """A rendered page as packed RGB bytes: what crosses from a worker process, without copies."""

    number: int
    size: tuple[int, int]
    pixels: bytes | memoryview  # width * height * 3 bytes, rows top to bottom
    text: str | None
    words: list[Word] | None = None  # the text layer's words with their boxes (evidence)

    def to_page(self) -> Page:
        """The page as a Pillow image (a copy, so it outlives the buffer)."""
        return Page(self.number, Image.frombytes("RGB", self.size, self.pixels), self.text, self.words)


def render_in_process(
    data: bytes,
    *,
    pages: list[int] | None,
    dpi: int,
    max_pages: int,
    max_pixels: int,
    password: str | None,
    text_layer: bool,
    hook: PageHook | None = None,
) -> tuple[list[Page], int]:
    """Render the selected pages of a PDF here; returns them with the document's page count."""
    with PDFIUM_LOCK, open_pdf(data, password) as pdf:
        total = len(pdf)
        found = []
        for number in select_pages(pages, total, max_pages):
            if hook is not None:
                hook(number)
            found.append(render_rgb(pdf, number, dpi=dpi, max_pixels=max_pixels, text_layer=text_layer).to_page())
        return found, total


@contextmanager
def open_pdf(data: bytes, password: str | None) -> Iterator[pdfium.PdfDocument]:
    """Open a PDF with at least one page and its forms ready to draw; closes it on exit."""
    pdf = _load(data, password)
    try:
        if len(pdf) == 0:
            raise InputError("PDF has no pages", code="pdf_no_pages")
        try:
            pdf.init_forms()  # draw filled-in form fields: their values are often the data
        except pdfium.PdfiumError:
            raise InputError("corrupt PDF (cannot prepare it for rendering)", code="pdf_corrupt") from None
        yield pdf
    finally:
        pdf.close()


def render_rgb(pdf: pdfium.PdfDocument, number: int, *, dpi: int, max_pixels: int, text_layer: bool) -> RgbPage:
    """Render 1-based page `number` at `dpi`, scaled down to fit max_pixels, with its text layer."""
    try:
        page = pdf[number - 1]
    except pdfium.PdfiumError:
        raise InputError(f"corrupt PDF (cannot read page {number})", code="pdf_corrupt") from None
    try:
        width, height = page.get_size()  # already swapped for /Rotate 90 and 270
        if not (width > 0 and height > 0):
            raise InputError(f"PDF page {number} has no area", code="pdf_corrupt")
        scale = capped_scale(width, height, dpi / POINTS_PER_INCH, max_pixels)
        # Packed RGB straight from pdfium (honouring /Rotate): the same pixels as BGR then swapped.
        bitmap = page.render(scale=scale, may_draw_forms=True, rev_byteorder=True)
        try:
            size, pixels = (bitmap.width, bitmap.height), memoryview(bitmap.buffer).cast("B")
        finally:
            bitmap.close()  # the buffer belongs to Python and outlives the pdfium bitmap
        if not text_layer:
            return RgbPage(number, size, pixels, None)
        return RgbPage(number, size, pixels, _text(page), _words(page, width, height))
    except pdfium.PdfiumError:
        raise InputError(f"corrupt PDF (cannot render page {number})", code="pdf_corrupt") from None
    finally:
        page.close()


def capped_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """The largest scale <= `scale` at which a width x height page stays within max_pixels."""
    # pdfium rounds each side up, so bound (w*s + 1) * (h*s + 1) <= max_pixels: a quadratic.
    a, b, c = width * height, width + height, 1 - max_pixels
    return min(scale, (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def _load(data: bytes, password: str | None) -> pdfium.PdfDocument:
    # The raw call, because pypdfium2 reads FPDF_GetLastError for a document without pages too,
    # when it still holds an earlier document's error (stale in a worker that rendered others).
    secret = (password + "\0").encode() if password else None
    raw = pdfium.raw.FPDF_LoadMemDocument64(data, len(data), secret)
    if raw:
        return pdfium.PdfDocument(raw)  # `data` must outlive it: open_pdf holds it
    code = pdfium.raw.FPDF_GetLastError()
    if code == pdfium.raw.FPDF_ERR_PASSWORD:
        message = "wrong password" if password else "PDF is encrypted; pass --password"
        raise InputError(message, code="pdf_encrypted")
    if code == pdfium.raw.FPDF_ERR_SECURITY:
        raise InputError("PDF uses an unsupported encryption scheme", code="pdf_encrypted")
    # From memory, pdfium says FPDF_ERR_FORMAT for a cut-off file too; FPDF_ERR_FILE (it could not
    # read the bytes) is the only case it calls truncation, so the message keeps both readings.
    if code == pdfium.raw.FPDF_ERR_FILE:
        raise InputError("truncated PDF (pdfium cannot read it to the end)", code="file_truncated")
    raise InputError("corrupt or truncated PDF", code="pdf_corrupt")


def _words(page: pdfium.PdfPage, width: float, height: float) -> list[Word] | None:
    """The text layer's words (runs of non-space characters), each with its box in 0-1 of the page,
    origin top left (pdfium's boxes are in points from the bottom left). None without a text layer."""
    import pypdfium2.raw as raw

    textpage = page.get_textpage()
    try:
        words: list[Word] = []
        current: list[str] = []
        box = [1.0, 1.0, 0.0, 0.0]
        for i in range(textpage.count_chars()):
            char = chr(raw.FPDFText_GetUnicode(textpage.raw, i))
            if char.isspace() or not char.isprintable():
                if current:
                    words.append(("".join(current), *box))
                current, box = [], [1.0, 1.0, 0.0, 0.0]
                continue
            left, bottom, right, top = textpage.get_charbox(i)
            current.append(char)
            box = [
                min(box[0], _unit(left / width)),
                min(box[1], _unit(1 - top / height)),
                max(box[2], _unit(right / width)),
                max(box[3], _unit(1 - bottom / height)),
            ]
        if current:
            words.append(("".join(current), *box))
    finally:
        textpage.close()
    return words or None


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value))


def _text(page: pdfium.PdfPage) -> str | None:
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_bounded()
    finally:
        textpage.close()
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()  # pdfium ends lines in CRLF
    return text or None
