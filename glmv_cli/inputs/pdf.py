"""Render PDF pages with pypdfium2, capping pixels before rendering, plus the text layer."""

from __future__ import annotations

import math
import threading

import pypdfium2 as pdfium
from PIL import Image

from glmv_cli.errors import InputError
from glmv_cli.inputs.document import Page
from glmv_cli.inputs.pages import select_pages

# pdfium is not thread-safe: every pypdfium2 call in the process goes through this lock.
PDFIUM_LOCK = threading.Lock()
POINTS_PER_INCH = 72


def load_pdf(
    data: bytes,
    *,
    pages: list[int] | None,
    dpi: int,
    max_pages: int,
    max_pixels: int,
    password: str | None,
    text_layer: bool,
) -> tuple[list[Page], int]:
    """Render the selected pages of a PDF; returns them with the document's page count."""
    with PDFIUM_LOCK:
        pdf = _open(data, password)
        try:
            total = len(pdf)
            if total == 0:
                raise InputError("PDF has no pages")
            pdf.init_forms()  # draw filled-in form fields: their values are often the data
            numbers = select_pages(pages, total, max_pages)
            scale = dpi / POINTS_PER_INCH
            return [_page(pdf, n, scale, max_pixels, text_layer) for n in numbers], total
        except pdfium.PdfiumError:  # e.g. a form environment pdfium cannot set up
            raise InputError("corrupt PDF (cannot prepare it for rendering)") from None
        finally:
            pdf.close()


def capped_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """The largest scale <= `scale` at which a width x height page stays within max_pixels."""
    # pdfium rounds each side up, so bound (w*s + 1) * (h*s + 1) <= max_pixels: a quadratic.
    a, b, c = width * height, width + height, 1 - max_pixels
    return min(scale, (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))


def _open(data: bytes, password: str | None) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(data, password=password or None)
    except pdfium.PdfiumError as exc:
        code = exc.err_code
    if code == pdfium.raw.FPDF_ERR_PASSWORD:
        raise InputError("wrong password" if password else "PDF is encrypted; pass --password")
    if code == pdfium.raw.FPDF_ERR_SECURITY:
        raise InputError("PDF uses an unsupported encryption scheme")
    raise InputError("corrupt or truncated PDF")


def _page(pdf: pdfium.PdfDocument, number: int, scale: float, max_pixels: int, text: bool) -> Page:
    try:
        page = pdf[number - 1]
    except pdfium.PdfiumError:
        raise InputError(f"corrupt PDF (cannot read page {number})") from None
    try:
        width, height = page.get_size()  # already swapped for /Rotate 90 and 270
        if not (width > 0 and height > 0):
            raise InputError(f"PDF page {number} has no area")
        image = _render(page, capped_scale(width, height, scale, max_pixels))
        return Page(number, image, _text(page) if text else None)
    except pdfium.PdfiumError:
        raise InputError(f"corrupt PDF (cannot render page {number})") from None
    finally:
        page.close()


def _render(page: pdfium.PdfPage, scale: float) -> Image.Image:
    bitmap = page.render(scale=scale, may_draw_forms=True)  # honours /Rotate
    try:
        # convert() copies, so the image outlives the pdfium buffer it may share.
        return bitmap.to_pil().convert("RGB")
    finally:
        bitmap.close()


def _text(page: pdfium.PdfPage) -> str | None:
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_bounded()
    finally:
        textpage.close()
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()  # pdfium ends lines in CRLF
    return text or None
