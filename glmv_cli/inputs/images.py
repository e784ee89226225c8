"""Open images safely: pixel cap before decoding, EXIF orientation, any mode to RGB."""

from __future__ import annotations

import io
import math
import threading
import warnings

from PIL import Image, ImageOps, JpegImagePlugin

from glmv_cli.errors import InputError
from glmv_cli.inputs.document import Page
from glmv_cli.inputs.pages import select_pages

# Warning filters are process-wide; serialise our brief change to them across loader threads.
_OPEN_LOCK = threading.Lock()
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
ORIENTATION = 0x0112  # the EXIF orientation tag; 1 is upright
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_image(
    data: bytes, *, pages: list[int] | None, max_pages: int, max_pixels: int, lazy: bool = False
) -> tuple[list[Page], int]:
    """Decode the selected frames of an image (TIFF pages; first frame otherwise).

    `lazy`, for a backend that sends files as they are: a PNG or JPEG whose pixels need no change (one
    RGB frame, upright, within max_pixels) is checked for damage but not decoded (a tenth of the time
    for a PNG page); its page carries the file's bytes, and Pillow decodes the pixels if anything asks.
    """
    if lazy and (img := _as_filed(data, max_pixels)) is not None:
        return [Page(select_pages(pages, 1, max_pages)[0], img, encoded=data)], 1
    img = _open(data, max_pixels)
    with img:
        try:
            # Only TIFF frames are pages; GIF/WebP/PNG frames are animation.
            total = getattr(img, "n_frames", 1) if img.format == "TIFF" else 1
        except Exception:  # a broken IFD chain; Pillow raises many types here
            raise InputError("corrupt TIFF (cannot count its pages)", code="image_corrupt") from None
        numbers = select_pages(pages, total, max_pages)
        filed, size = _one_rgb_frame(img), img.size
        decoded = [Page(n, _decode_frame(img, n, max_pixels)) for n in numbers]
        # The page is the file's pixels as they are (no conversion, orientation or DCT scaling): keep its bytes.
        if filed and img.getexif().get(ORIENTATION, 1) == 1 and decoded[0].image.size == size:
            decoded[0].encoded = data
        return decoded, total


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


def fit_for_vision(
    image: Image.Image, *, max_pixels: int | None = None, patch: int = 28, max_aspect: float = 100.0
) -> Image.Image:
    """An RGB copy a vision processor accepts: within max_pixels, each side >= patch, long/short <= max_aspect.

    Shrinks (keeping the aspect) to fit max_pixels, then pads with white instead of stretching,
    so a 1x3000 strip or a hairline PDF page keeps its content (GLM's processor refuses ratios
    over 200, and sides under one patch).
    """
    img = to_rgb(image)
    size, canvas = _fitted_size(img.width, img.height, max_pixels, patch, max_aspect)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    if canvas == img.size:
        return img
    padded = Image.new("RGB", canvas, "white")
    padded.paste(img, ((canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2))
    return padded


def own_bytes(pages: list[Page], images: list[Image.Image]) -> list[bytes | None]:
    """Per page, its file's own bytes (Page.encoded) where fitting left its image as decoded, else None."""
    return [p.encoded if image is p.image else None for p, image in zip(pages, images, strict=True)]


def _fitted_size(
    width: int, height: int, max_pixels: int | None, patch: int, max_aspect: float
) -> tuple[tuple[int, int], tuple[int, int]]:
    # Shrink until the padded canvas, not just the image, fits max_pixels; each pass floors
    # a side that is over 1 px, so this ends (at 1x1 when max_pixels is below patch**2).
    while True:
        canvas = _padded(width, height, patch, max_aspect)
        area = canvas[0] * canvas[1]
        if not max_pixels or area <= max_pixels or (width, height) == (1, 1):
            return (width, height), canvas
        scale = math.sqrt(max_pixels / area)
        width, height = max(1, int(width * scale)), max(1, int(height * scale))


def _padded(width: int, height: int, patch: int, max_aspect: float) -> tuple[int, int]:
    width, height = max(width, patch), max(height, patch)
    if width > height * max_aspect:
        height = math.ceil(width / max_aspect)
    elif height > width * max_aspect:
        width = math.ceil(height / max_aspect)
    return width, height


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
        raise InputError("corrupt or unsupported image", code="image_corrupt") from None
    if data.startswith(b"\xff\xd8\xff"):  # a huge JPEG can still be decoded small (see _shrink_jpeg)
        try:
            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))  # header only; _decode_frame shrinks it
        except Exception:
            raise InputError("corrupt or unsupported image", code="image_corrupt") from None
    raise InputError(_too_large(_declared_size(data), max_pixels, at_least), code="image_too_large")


def _as_filed(data: bytes, max_pixels: int) -> Image.Image | None:
    """The image, opened and not decoded, when its file's bytes are exactly the page and undamaged; else None.

    Damage: a PNG's chunks must all pass their CRCs up to IEND (Pillow's verify, no inflating); a JPEG
    must end with its end-of-image marker. A PNG that may hold EXIF (which Pillow finds only by decoding)
    and anything else unsure goes the decoding way, which names the exact problem.
    """
    png = data.startswith(_PNG_MAGIC)
    if png and (b"eXIf" in data or b"exif" in data):
        return None
    if not png and not (data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\0").endswith(b"\xff\xd9")):
        return None
    img = _open(data, max_pixels)  # a bomb is refused here as the decoding way refuses it
    plain = _one_rgb_frame(img) and img.width * img.height <= max_pixels
    # A JPEG's EXIF is in its header; a PNG here has none (above).
    if plain and (png or img.getexif().get(ORIENTATION, 1) == 1) and (not png or _png_verifies(data)):
        return img
    img.close()
    return None


def _one_rgb_frame(img: Image.Image) -> bool:
    """A PNG or JPEG of one RGB frame, nothing transparent: upright and unscaled, its file is the page as it is."""
    rgb = img.format in ("PNG", "JPEG") and img.mode == "RGB" and getattr(img, "n_frames", 1) == 1
    return rgb and "transparency" not in img.info


def _png_verifies(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
        return True
    except Exception:  # Pillow reports bad chunks with several exception types
        return False


def _decode_frame(img: Image.Image, number: int, max_pixels: int) -> Image.Image:
    try:
        img.seek(number - 1)
    except Exception:
        raise InputError(f"corrupt {img.format} image (cannot read page {number})", code="image_corrupt") from None
    if img.format == "JPEG" and img.width * img.height > max_pixels:
        _shrink_jpeg(img, max_pixels)
    # img.size comes from the header: refuse before load() allocates the pixels.
    if img.width * img.height > max_pixels:
        raise InputError(_too_large(img.size, max_pixels), code="image_too_large")
    try:
        img.load()  # decode now, so truncated data fails here rather than in the model
        return to_rgb(ImageOps.exif_transpose(img))
    except Exception as exc:
        # Pillow's only sign of a short file is this OSError text ("image file is truncated (...)").
        if isinstance(exc, (OSError, EOFError)) and "truncated" in str(exc):
            raise InputError(f"truncated {img.format} image (the file ends early)", code="file_truncated") from None
        raise InputError(f"corrupt {img.format} image (cannot decode it)", code="image_corrupt") from None


def _shrink_jpeg(img: Image.Image, max_pixels: int) -> None:
    """Have the JPEG decoder itself scale by 1/2, 1/4 or 1/8 (DCT scaling) to fit max_pixels.

    A 20000 x 14000 px scan then decodes straight to 2500 x 1750, never holding the full-size
    pixels; the pages are downscaled for the model later anyway.
    """
    width, height = img.size
    for factor in (2, 4, 8):
        size = (math.ceil(width / factor), math.ceil(height / factor))
        if size[0] * size[1] <= max_pixels:
            img.draft(img.mode, size)
            return


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
