"""Tell images from PDFs by their first bytes, whatever the file is called."""

from __future__ import annotations

SUPPORTED_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".pdf"})

SNIFF_BYTES = 1024  # PDF readers accept junk before %PDF within the first KiB

_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)
# "BM" alone starts too many text files; the DIB header size makes it a real BMP.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def sniff_kind(head: bytes) -> str | None:
    """Return "image", "pdf" or None for the first bytes of a file."""
    if head.startswith(_IMAGE_MAGIC):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "image"
    if b"%PDF-" in head[:SNIFF_BYTES]:
        return "pdf"
    return None
