"""Tests for glmv_cli.inputs: page specs, safe image and PDF loading, fitting pages for the model."""

from __future__ import annotations

import ast
import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image, ImageFile

from glmv_cli.errors import ERROR_CODES, InputError, UsageError
from glmv_cli.inputs import (
    SUPPORTED_EXTENSIONS,
    Document,
    discover,
    fit_for_vision,
    format_page_ranges,
    load_document,
    own_bytes,
    parse_page_spec,
    sniff_kind,
)
from glmv_cli.inputs.images import to_rgb
from glmv_cli.inputs.pages import count_selected, select_pages
from glmv_cli.inputs.pdf import capped_scale
from tests.conftest import SAMPLES

CORPUS = Path(__file__).parents[2] / "shared" / "corpus"
NASTY = CORPUS / "nasty"
# pdfium repairs malformed_plumber_issue-932.pdf, so it loads; every other defect is refused.
NASTY_LOADS = {
    "16bit_sharp_Flag_of_the_Netherlands-16bit.png",
    "cmyk_pillow_pil_sample_cmyk.jpg",
    "exif6_textract_patient_intake_form_sample.jpg",
    "multiframe_exif6_textract_multi_page_tiff.tiff",
    "malformed_plumber_issue-932.pdf",
}
PASSWORDS = {  # from corpus/SOURCES.md, confirmed by opening the files
    "encrypted_pdfium_pw-test_user.pdf": "test_user",
    "encrypted_plumber_pw-test.pdf": "test",
}


def needs_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip("shared corpus not present")


def image_bytes(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def blank_pdf(*sizes: tuple[float, float], rotate: int = 0) -> bytes:
    pdf = pdfium.PdfDocument.new()
    for width, height in sizes:
        page = pdf.new_page(width, height)
        page.set_rotation(rotate)
        page.close()
    buf = io.BytesIO()
    pdf.save(buf)
    pdf.close()
    return buf.getvalue()


def text_pdf() -> bytes:
    """A one-page PDF with two lines of Helvetica text (pdfium extracts them with CRLF)."""
    content = b"BT /F1 12 Tf 10 70 Td (Hello) Tj 0 -20 Td (World) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def assert_one_line(exc: InputError) -> None:
    assert exc.code in ERROR_CODES and exc.code != "load_failed", exc.code
    text = exc.one_line()
    assert text and "\n" not in text and len(text) < 200
    assert "Traceback" not in text and "Pdfium" not in text and "PIL" not in text


# ---- page specs -------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1-3,5", [1, 2, 3, 5]),
        (" 2 , 1 ", [1, 2]),
        ("5,1-2,2", [1, 2, 5]),
        ("3-3", [3]),
        (None, None),
        ("", None),
        ("all", None),
        ("ALL", None),
    ],
)
def test_parse_page_spec(spec, expected):
    assert parse_page_spec(spec) == expected


@pytest.mark.parametrize("spec", ["0", "3-1", "a", "1-", "-2", "1,,2", "1-2-3", "999999999"])
def test_parse_page_spec_rejects(spec):
    with pytest.raises(UsageError):
        parse_page_spec(spec)


def test_select_pages_caps_explicit_selections_too():
    assert select_pages(None, 117, 8) == list(range(1, 9))
    assert select_pages(list(range(1, 100_001)), 117, 8) == list(range(1, 9))  # --pages 1-100000
    assert select_pages([2, 5, 9, 200], 10, 2) == [2, 5]
    with pytest.raises(InputError, match=r"page 3 out of range \(document has 2 pages\)") as info:
        select_pages([3], 2, 8)
    assert info.value.code == "page_out_of_range"
    assert (count_selected(None, 117), count_selected(list(range(1, 21)), 117), count_selected([5, 200], 10)) == (
        117,
        20,
        1,
    )


def test_format_page_ranges_inverts_parse_page_spec():
    assert format_page_ranges([1, 2, 3, 5]) == "1-3,5"
    assert format_page_ranges([4]) == "4"
    assert format_page_ranges([]) == ""
    assert parse_page_spec(format_page_ranges([1, 2, 4, 6, 7, 8])) == [1, 2, 4, 6, 7, 8]


def test_page_limit_note():
    data = blank_pdf(*[(72, 72)] * 12)
    doc = load_document(data, dpi=10, max_pages=8)
    assert (doc.total_pages, doc.selected, len(doc.pages)) == (12, 12, 8)
    assert doc.page_limit_note(8) == "12 pages; used 1-8; raise --max-pages"
    doc = load_document(data, dpi=10, max_pages=3, pages=[2, 4, 5, 6, 11])
    assert [p.number for p in doc.pages] == [2, 4, 5]
    assert doc.page_limit_note(3) == "5 of 12 pages selected; used 2,4-5; raise --max-pages"
    assert load_document(data, dpi=10, max_pages=20).page_limit_note(20) is None
    assert Document(path="-", sha256="", kind="image", total_pages=1, selected=1).page_limit_note(8) is None


# ---- sniffing and images ----------------------------------------------------


def test_sniff_kind():
    assert sniff_kind(b"\x89PNG\r\n\x1a\n....") == "image"
    assert sniff_kind(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image"
    assert sniff_kind(b"%PDF-1.7\n") == "pdf"
    assert sniff_kind(b"garbage line\n" * 10 + b"%PDF-1.4\n") == "pdf"
    assert sniff_kind(b"BMW annual report, plain text") is None
    assert sniff_kind(b"{}") is None
    assert ".pdf" in SUPPORTED_EXTENSIONS and ".json" not in SUPPORTED_EXTENSIONS


@pytest.mark.parametrize(
    ("fmt", "suffix"),
    [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tiff"), ("BMP", ".bmp"), ("GIF", ".gif")],
)
def test_each_image_kind_loads(tmp_path, fmt, suffix):
    path = tmp_path / f"doc{suffix}"
    data = image_bytes(Image.new("RGB", (30, 20), (200, 30, 30)), fmt)
    path.write_bytes(data)
    doc = load_document(path)
    assert (doc.kind, doc.total_pages, doc.path) == ("image", 1, str(path))
    assert doc.sha256 == hashlib.sha256(data).hexdigest()
    [page] = doc.pages
    assert (page.number, page.image.mode, page.image.size, page.text) == (1, "RGB", (30, 20), None)
    red, green, _ = page.image.getpixel((15, 10))
    assert red > 150 and green < 80


def test_content_decides_not_extension(tmp_path):
    path = tmp_path / "really_a.jpg"
    path.write_bytes(image_bytes(Image.new("RGB", (5, 5)), "PNG"))
    assert load_document(path).pages[0].image.size == (5, 5)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all")
    with pytest.raises(InputError, match="not an image or PDF") as info:
        load_document(notes)
    assert info.value.code == "unsupported_type"


def test_bytes_source_and_display_name():
    data = image_bytes(Image.new("RGB", (4, 4)), "PNG")
    assert load_document(data).path == "-"
    assert load_document(data, name="scan.png").path == "scan.png"
    with pytest.raises(InputError, match="empty file") as info:
        load_document(b"")
    assert info.value.code == "file_empty"


def test_exif_orientation_applied(tmp_path):
    # Left half red, right half blue; orientation 6 = turn 90 degrees clockwise to view.
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    image = load_document(path).pages[0].image
    assert image.size == (20, 40)
    assert image.getpixel((10, 5))[0] > 200  # the old left edge is now the top
    assert image.getpixel((10, 35))[2] > 200


def test_a_page_keeps_its_files_bytes_only_when_it_is_them_as_decoded(tmp_path):
    """Page.encoded (what a remote server is sent as is): an upright RGB PNG or JPEG, one frame, not
    scaled; anything glmv converts, turns, flattens or shrinks is re-encoded from its pixels instead."""
    rgb = Image.new("RGB", (40, 20), (200, 10, 10))
    for fmt in ("PNG", "JPEG"):
        data = image_bytes(rgb, fmt)
        page = load_document(data).pages[0]
        assert page.encoded == data, fmt
        assert own_bytes([page], [page.image]) == [data]
        assert own_bytes([page], [fit_for_vision(page.image, max_pixels=28 * 28)]) == [None]  # shrunk: re-encode
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = io.BytesIO()
    rgb.save(turned, "JPEG", exif=exif)
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    for data in (
        turned.getvalue(),
        image_bytes(clear, "PNG"),
        image_bytes(Image.new("L", (4, 4)), "PNG"),
        image_bytes(Image.new("CMYK", (8, 8)), "JPEG"),
        image_bytes(rgb, "WEBP"),
        image_bytes(rgb, "GIF"),
    ):
        assert load_document(data).pages[0].encoded is None
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 800), (0, 0, 255)).save(big)
    shrunk = load_document(big, max_pixels=300_000).pages[0]  # decoded at 1/2 or less by the JPEG decoder
    assert shrunk.image.size != (1200, 800) and shrunk.encoded is None
    assert load_document(SAMPLES / "invoice-acme.pdf").pages[0].encoded is None  # a rendered page


def test_lazy_images_skip_decoding_only_what_is_sent_as_it_is(monkeypatch):
    """load_document(lazy_images=True), for a backend that sends the file's bytes: an intact upright RGB
    PNG or JPEG is not decoded (its pixels come when asked, and equal the eager ones); a damaged file
    still fails at loading with the decoding way's exact error, and anything else is decoded as before."""
    rgb = Image.new("RGB", (40, 20), (200, 10, 10))
    rgb.putpixel((3, 4), (1, 2, 3))
    decoded = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda img: decoded.append(img) or load(img))
    for fmt in ("PNG", "JPEG"):
        data = image_bytes(rgb, fmt)
        decoded.clear()
        page = load_document(data, lazy_images=True).pages[0]
        assert page.encoded == data and page.image.mode == "RGB" and page.image.size == (40, 20)
        assert decoded == [], f"{fmt} decoded although sent as it is"
        assert page.image.tobytes() == load_document(data).pages[0].image.tobytes(), fmt
    png = image_bytes(rgb, "PNG")
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF  # inside IDAT: its CRC no longer matches
    for bad, code in ((png[: len(png) // 2], "file_truncated"), (bytes(flipped), "image_corrupt")):
        with pytest.raises(InputError) as lazy:
            load_document(bad, lazy_images=True)
        with pytest.raises(InputError) as eager:
            load_document(bad)
        assert lazy.value.code == eager.value.code
        assert lazy.value.code in (code, "image_corrupt")
    jpeg = image_bytes(rgb, "JPEG")
    with pytest.raises(InputError) as cut:
        load_document(jpeg[: len(jpeg) - 40], lazy_images=True)  # no end marker: decoded, so it fails here
    assert cut.value.code == "file_truncated"
    grey = load_document(image_bytes(Image.new("L", (4, 4)), "PNG"), lazy_images=True).pages[0]
    assert grey.encoded is None and grey.image.mode == "RGB"
    with pytest.raises(InputError):
        load_document(png, lazy_images=True, pages=[2])  # page selection is checked the same way


def test_cmyk_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    red, green, blue = load_document(path).pages[0].image.getpixel((4, 4))
    assert red > 200 and green < 60 and blue < 60


def test_16bit_is_scaled_not_clipped():
    data = image_bytes(Image.new("I;16", (4, 4), 32768), "PNG")
    assert load_document(data).pages[0].image.getpixel((0, 0)) == (128, 128, 128)
    floats = Image.new("F", (2, 1))
    floats.putpixel((1, 0), 0.5)
    assert to_rgb(floats).getpixel((1, 0)) == (255, 255, 255)
    assert to_rgb(floats).getpixel((0, 0)) == (0, 0, 0)


def test_alpha_is_composited_on_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    data = image_bytes(palette, "PNG", transparency=1)
    image = load_document(data).pages[0].image
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)
    clear = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert load_document(image_bytes(clear, "PNG")).pages[0].image.getpixel((0, 0)) == (255,) * 3
    grey = Image.new("LA", (2, 2), (0, 0))
    assert to_rgb(grey).getpixel((1, 1)) == (255, 255, 255)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_multiframe_tiff_pages(tmp_path):
    frames = [Image.new("RGB", (10 + i, 10), (i * 60, 0, 0)) for i in range(3)]
    path = tmp_path / "scan.tif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    doc = load_document(path)
    assert doc.total_pages == 3
    assert [(p.number, p.image.width) for p in doc.pages] == [(1, 10), (2, 11), (3, 12)]
    assert [p.number for p in load_document(path, pages=[3]).pages] == [3]
    assert len(load_document(path, max_pages=2).pages) == 2
    assert [p.number for p in load_document(path, pages=[2, 4]).pages] == [2]  # missing pages are skipped
    with pytest.raises(InputError, match=r"page 4 out of range \(document has 3 pages\)") as info:
        load_document(path, pages=[4])
    assert info.value.code == "page_out_of_range"


def test_image_pixel_cap_and_truncation(tmp_path):
    data = image_bytes(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(InputError, match=r"image too large: 100x100 px \(limit 0.005 MP\)") as info:
        load_document(data, max_pixels=5000)
    assert info.value.code == "image_too_large"
    noisy = Image.effect_noise((64, 64), 50).convert("RGB")
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        full = image_bytes(noisy, fmt)
        with pytest.raises(InputError, match=f"truncated {fmt} image") as info:
            load_document(full[: len(full) // 2])
        assert info.value.code == "file_truncated"
        assert_one_line(info.value)
    with pytest.raises(InputError) as info:
        load_document(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)
    assert info.value.code == "image_corrupt"


# ---- fitting pages for the vision processor ------------------------------------

EXTREME_SIZES = [(1, 1), (1, 3000), (3000, 1), (5000, 20), (27, 27), (20, 2800), (4000, 3000)]


def check_fitted(image: Image.Image, max_pixels: int | None = None) -> None:
    long, short = max(image.size), min(image.size)
    assert image.mode == "RGB" and short >= 28 and long / short <= 100
    assert max_pixels is None or image.width * image.height <= max_pixels


@pytest.mark.parametrize("size", EXTREME_SIZES)
def test_fit_for_vision_shapes(size):
    image = Image.new("L", size, 0)
    fitted = fit_for_vision(image)
    check_fitted(fitted)
    if min(size) >= 28 and max(size) / min(size) <= 100:
        assert fitted.size == size  # a normal page is left alone
    # The content is kept whole, padded with white rather than stretched.
    dark = sum(fitted.convert("L").histogram()[:128])
    assert dark == size[0] * size[1]
    check_fitted(fit_for_vision(image, max_pixels=100_000), max_pixels=100_000)


def test_fit_for_vision_downscales_within_max_pixels():
    fitted = fit_for_vision(Image.new("RGB", (4000, 3000), "red"), max_pixels=1_000_000)
    assert 0.98e6 < fitted.width * fitted.height <= 1e6 and abs(fitted.width / fitted.height - 4 / 3) < 0.01
    strip = fit_for_vision(Image.new("RGB", (1, 100_000)), max_pixels=50_000)  # padding counts too
    check_fitted(strip, max_pixels=50_000)
    tiny = fit_for_vision(Image.new("RGB", (500, 500)), max_pixels=100)  # below one patch: patch wins
    assert tiny.size == (28, 28)
    assert fit_for_vision(Image.new("RGB", (1, 1)), patch=14, max_aspect=2.0).size == (14, 14)
    assert fit_for_vision(Image.new("RGB", (100, 10)), patch=1, max_aspect=2.0).size == (100, 50)


def test_glm_processor_accepts_fitted_images(tiny_model):
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_model)
    with pytest.raises(ValueError, match="aspect ratio"):
        processor(images=[Image.new("RGB", (1, 3000))])
    for size in EXTREME_SIZES:
        out = processor(images=[fit_for_vision(Image.new("RGB", size))])
        assert out["image_grid_thw"][0][0] == 1


# ---- PDFs -------------------------------------------------------------------


def test_pdf_pages_selection_and_max_pages():
    data = blank_pdf(*[(72, 144)] * 5)
    doc = load_document(data, dpi=72, max_pages=3)
    assert (doc.kind, doc.total_pages) == ("pdf", 5)
    assert [p.number for p in doc.pages] == [1, 2, 3]
    assert doc.pages[0].image.size == (72, 144) and doc.pages[0].image.mode == "RGB"
    assert doc.pages[0].text is None  # blank page: no text layer
    assert [p.number for p in load_document(data, pages=[2, 5], dpi=72).pages] == [2, 5]
    with pytest.raises(InputError, match=r"page 6 out of range \(document has 5 pages\)"):
        load_document(data, pages=[6])


def test_pdf_rotation_and_dpi():
    doc = load_document(blank_pdf((200, 100), rotate=90), dpi=144)
    assert doc.pages[0].image.size == (200, 400)


def test_pdf_pixel_cap_before_render():
    huge = blank_pdf((14400, 14400))  # 200 in square: 900 MP at 150 dpi
    image = load_document(huge, max_pixels=1_000_000).pages[0].image
    assert 990_000 < image.width * image.height <= 1_000_000
    scale = capped_scale(14400, 14400, 150 / 72, 40_000_000)
    assert (int(14400 * scale) + 1) ** 2 <= 40_000_000 < (14400 * scale + 2) ** 2
    assert capped_scale(612, 792, 150 / 72, 40_000_000) == 150 / 72


def test_pdf_text_layer():
    data = text_pdf()
    assert load_document(data).pages[0].text == "Hello\nWorld"
    assert load_document(data, text_layer=False).pages[0].text is None
    assert load_document(b"%junk before header\n" + data).pages[0].text == "Hello\nWorld"


def test_bad_pdfs_raise_input_error():
    for data in (b"%PDF-1.4\n", b"%PDF-1.4\nthis is not a pdf body\n", text_pdf()[:120]):
        with pytest.raises(InputError) as info:
            load_document(data)
        assert_one_line(info.value)


def test_pdf_loads_from_threads():
    data = text_pdf()
    with ThreadPoolExecutor(4) as pool:
        docs = list(pool.map(lambda _: load_document(data), range(16)))
    assert {d.pages[0].text for d in docs} == {"Hello\nWorld"}


# ---- the shared corpus --------------------------------------------------------


def test_nasty_files_load_or_fail_cleanly():
    needs_corpus()
    for path in sorted(NASTY.iterdir()):
        if path.name in NASTY_LOADS:
            doc = load_document(path)
            assert doc.pages and all(p.image.mode == "RGB" for p in doc.pages)
            continue
        with pytest.raises(InputError) as info:
            load_document(path)
        assert_one_line(info.value)


def test_nasty_specifics(monkeypatch):
    needs_corpus()
    assert load_document(NASTY / "exif6_textract_patient_intake_form_sample.jpg").pages[0].image.size == (
        3024,
        4032,
    )  # stored 4032x3024, EXIF orientation 6
    tiff = load_document(NASTY / "multiframe_exif6_textract_multi_page_tiff.tiff")
    assert tiff.total_pages == 2 and tiff.pages[0].image.size == (1000, 1333)
    flag = load_document(NASTY / "16bit_sharp_Flag_of_the_Netherlands-16bit.png").pages[0].image
    assert flag.getpixel((450, 50))[0] > 150 and flag.getpixel((450, 550))[2] > 100

    def never_decode(self):
        raise AssertionError("a bomb must be refused from its header, never decoded")

    Image.init()  # Pillow imports its plugins on first need, and one (Palm) decodes an image as it loads
    with monkeypatch.context() as m:
        m.setattr(Image.Image, "load", never_decode)
        with pytest.raises(InputError, match=r"image too large: 65536x65536 px \(limit 40 MP\)"):
            load_document(NASTY / "huge_sharp_65536x65536.png")
    with pytest.raises(InputError, match="image too large"):
        load_document(NASTY / "bomb_pillow_decompression_bomb.gif")
    with pytest.raises(InputError, match="empty file"):
        load_document(NASTY / "empty_plumber_0bytes.pdf")


@pytest.mark.parametrize(("name", "password"), sorted(PASSWORDS.items()))
def test_encrypted_pdfs(name, password):
    needs_corpus()
    with pytest.raises(InputError, match="PDF is encrypted; pass --password"):
        load_document(NASTY / name)
    with pytest.raises(InputError, match="wrong password"):
        load_document(NASTY / name, password="not-it")
    doc = load_document(NASTY / name, password=password, dpi=50)
    assert doc.total_pages >= 1 and doc.pages


def test_whole_corpus_loads():
    needs_corpus()
    for path in discover([CORPUS]):
        try:
            load_document(path, password=PASSWORDS.get(path.name))
        except InputError:
            assert path.parent == NASTY and path.name not in NASTY_LOADS


def test_every_input_error_has_a_known_code():
    # Each InputError raised by the inputs layer names a documented code, so records can carry it.
    for source in sorted(Path(load_document.__code__.co_filename).parent.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "InputError":
                code = next((k.value for k in node.keywords if k.arg == "code"), None)
                assert code is not None, f"{source.name}:{node.lineno} InputError without code="
                if isinstance(code, ast.Constant):  # else passed on from a worker, checked when raised
                    assert code.value in ERROR_CODES, f"{source.name}:{node.lineno} unknown code {code.value!r}"


def test_a_jpeg_over_the_pixel_cap_is_decoded_small(monkeypatch):
    """DCT scaling: the decoder never holds the full-size pixels, even past Pillow's bomb limit."""
    import io

    from PIL import Image

    from glmv_cli.inputs.images import load_image

    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), "red").save(buf, "JPEG")
    pages, _ = load_image(buf.getvalue(), pages=None, max_pages=1, max_pixels=600_000)
    assert pages[0].image.size == (1000, 500)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)  # the header alone trips Pillow's bomb check
    pages, _ = load_image(buf.getvalue(), pages=None, max_pages=1, max_pixels=200_000)
    assert pages[0].image.size == (500, 250)
    with pytest.raises(InputError) as err:  # 1/8 is the decoder's smallest scale
        load_image(buf.getvalue(), pages=None, max_pages=1, max_pixels=20_000)
    assert err.value.code == "image_too_large"
