"""load_document: bytes or a path in, a Document of RGB pages out, or an InputError."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from glmv_cli.errors import InputError, UsageError
from glmv_cli.inputs.document import Document, Page
from glmv_cli.inputs.images import load_image
from glmv_cli.inputs.pages import count_selected
from glmv_cli.inputs.read import DEFAULT_MAX_FILE_SIZE, read_file, too_large
from glmv_cli.inputs.render import default_renderer
from glmv_cli.inputs.sniff import SNIFF_BYTES, sniff_kind


def load_document(
    source: str | Path | bytes,
    *,
    name: str | None = None,
    pages: list[int] | None = None,
    dpi: int = 150,
    max_pages: int = 8,
    password: str | None = None,
    max_pixels: int = 40_000_000,
    text_layer: bool = True,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    roots: Sequence[Path] | None = None,
    render_pdf: Callable[..., tuple[list[Page], int]] | None = None,
    lazy_images: bool = False,
) -> Document:
    """Read an image or PDF, typed by content not name; every failure is an InputError.

    A path is read with read_file (regular files only, at most max_file_size, inside `roots`).
    `render_pdf` takes pdf.render_in_process's keywords; None: the shared crash-isolated worker pool.
    `lazy_images`: an image file that is its page as it is stays undecoded (load_image's `lazy`).
    """
    if dpi < 1 or max_pages < 1 or max_pixels < 1 or max_file_size < 1:
        raise UsageError("dpi, max_pages, max_pixels and max_file_size must be positive")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), name or "-"
        if len(data) > max_file_size:
            raise too_large(len(data), max_file_size)
    else:
        data, path = read_file(Path(source), max_bytes=max_file_size, roots=roots), name or str(source)
    if not data:
        raise InputError("empty file", code="file_empty")
    kind = sniff_kind(data[:SNIFF_BYTES])
    if kind == "pdf":
        found, total = (render_pdf or default_renderer().render)(
            data,
            pages=pages,
            dpi=dpi,
            max_pages=max_pages,
            max_pixels=max_pixels,
            password=password,
            text_layer=text_layer,
        )
    elif kind == "image":
        found, total = load_image(data, pages=pages, max_pages=max_pages, max_pixels=max_pixels, lazy=lazy_images)
    else:
        raise InputError("not an image or PDF", code="unsupported_type")
    sha256 = hashlib.sha256(data).hexdigest()
    selected = count_selected(pages, total)
    return Document(path=path, sha256=sha256, kind=kind, pages=found, total_pages=total, selected=selected)
