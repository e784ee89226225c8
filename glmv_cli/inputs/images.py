"""Open images safely: pixel cap before decoding, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import io
import threading
import warnings

from PIL import Image, ImageOps

from glmv_cli.errors import InputError
from glmv_cli.inputs.document import Page
from glmv_cli.inputs.pages import select_pages

# Warning filters are process-wide; serialise our brief change to them across loader threads.
_OPEN_LOCK = threading.Lock()
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


def load_image(data: bytes, *, pages: list[int] | None, max_pages: int, max_pixels: int) -> tuple[list[Page], int]:
    """Decode the selected frames of an image (TIFF pages; first frame otherwise)."""
    img = _open(data, max_pixels)
    with img:
        try:
            # Only TIFF frames are pages; GIF/WebP/PNG frames are animation.
            total = getattr(img, "n_frames", 1) if img.format == "TIFF" else 1
        except Exception:  # a broken IFD chain; Pillow raises many types here
            raise InputError("corrupt TIFF (cannot count its pages)") from None
        numbers = select_pages(pages, total, max_pages)
        return [Page(n, _decode_frame(img, n, max_pixels)) for n in numbers], total


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha over white, high bit depths scaled, not clipped."""
    if img.mode in _HIGH_DEPTH_MODES:
        img = _to_8bit(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", img.size, "white")
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img if img.mode == "RGB" else img.convert("RGB")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # over twice Pillow's MAX_IMAGE_PIXELS
        at_least = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    except Image.DecompressionBombWarning:  # over Pillow's MAX_IMAGE_PIXELS
        at_least = Image.MAX_IMAGE_PIXELS or 0
    except Exception:  # Pillow signals a bad header with many exception types
        raise InputError("corrupt or unsupported image") from None
    raise InputError(_too_large(_declared_size(data), max_pixels, at_least))


def _decode_frame(img: Image.Image, number: int, max_pixels: int) -> Image.Image:
    try:
        img.seek(number - 1)
    except Exception:
        raise InputError(f"corrupt {img.format} image (cannot read page {number})") from None
    # img.size comes from the header: refuse before load() allocates the pixels.
    if img.width * img.height > max_pixels:
        raise InputError(_too_large(img.size, max_pixels))
    try:
        img.load()  # decode now, so truncated data fails here rather than in the model
        return to_rgb(ImageOps.exif_transpose(img))
    except Exception:
        raise InputError(f"corrupt or truncated {img.format} image") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    # Pillow's own convert("L") clips 16-bit and float values, turning most of them white.
    lo, hi = img.getextrema()
    if img.mode == "F" or lo < 0 or hi > 65535:
        scale = 255 / (hi - lo) if hi > lo else 0.0
        offset = -lo * scale
    else:
        scale, offset = (255 / 65535 if hi > 255 else 1.0), 0.5  # point() truncates: round
    wide = img if img.mode == "F" else img.convert("I")
    return wide.point(lambda v: v * scale + offset).convert("L")


def _declared_size(data: bytes) -> tuple[int, int] | None:
    # Pillow's bomb check raises before handing out the image, so read the header again
    # through the format plugins directly, only to name the size in the message.
    Image.init()
    for factory, accept in Image.OPEN.values():
        try:
            verdict = accept(data[:16]) if accept else True
            if verdict and not isinstance(verdict, str):
                return factory(io.BytesIO(data), "").size
        except Exception:
            continue
    return None


def _too_large(size: tuple[int, int] | None, max_pixels: int, at_least: int = 0) -> str:
    dims = f"{size[0]}x{size[1]} px" if size else f"over {at_least / 1e6:.0f} MP"
    return f"image too large: {dims} (limit {max_pixels / 1e6:g} MP)"
