"""load_document: bytes or a path in, a Document of RGB pages out, or an InputError."""

from __future__ import annotations

import hashlib
from pathlib import Path

from glmv_cli.errors import InputError, UsageError
from glmv_cli.inputs.document import Document
from glmv_cli.inputs.images import load_image
from glmv_cli.inputs.pdf import load_pdf
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
) -> Document:
    """Read an image or PDF, typed by content not name; every failure is an InputError."""
    if dpi < 1 or max_pages < 1 or max_pixels < 1:
        raise UsageError("dpi, max_pages and max_pixels must be positive")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, path = bytes(source), name or "-"
    else:
        data, path = _read(Path(source)), name or str(source)
    if not data:
        raise InputError("empty file")
    kind = sniff_kind(data[:SNIFF_BYTES])
    if kind == "pdf":
        found, total = load_pdf(
            data,
            pages=pages,
            dpi=dpi,
            max_pages=max_pages,
            max_pixels=max_pixels,
            password=password,
            text_layer=text_layer,
        )
    elif kind == "image":
        found, total = load_image(data, pages=pages, max_pages=max_pages, max_pixels=max_pixels)
    else:
        raise InputError("not an image or PDF")
    sha256 = hashlib.sha256(data).hexdigest()
    return Document(path=path, sha256=sha256, kind=kind, pages=found, total_pages=total)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"No such file or directory: {path}") from None
    except IsADirectoryError:
        raise InputError(f"is a folder, not a file: {path}") from None
    except PermissionError:
        raise InputError(f"permission denied: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
