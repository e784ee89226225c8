"""Make the sample documents in samples/ and their <stem>.truth.json files.

Deterministic: the same Pillow and pdfium give the same bytes. Run from anywhere:
    python samples/make_samples.py
Each layout is described once, in PDF points from the top-left corner, and drawn by both the
Pillow renderer (images) and the pdfium renderer (PDFs with a real text layer).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
LETTER = (612.0, 792.0)
BLACK, GREY, BLUE, RED = (20, 20, 20), (110, 110, 110), (37, 99, 235), (185, 28, 28)


@dataclass(frozen=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    size: float = 10
    bold: bool = False
    align: str = "left"  # left | right | center: which end of the text sits at x
    color: tuple[int, int, int] = BLACK


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    width: float = 0.75
    color: tuple[int, int, int] = GREY


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float
    fill: tuple[int, int, int] | None = None
    stroke: tuple[int, int, int] | None = None
    width: float = 1.0


Op = Text | Line | Box


# --- renderers -----------------------------------------------------------------------------


def draw_image(ops: list[Op], size: tuple[float, float], scale: float, background=(255, 255, 255)) -> Image.Image:
    """Rasterise ops with Pillow's default font (Pillow's stroke stands in for bold)."""
    image = Image.new("RGB", (round(size[0] * scale), round(size[1] * scale)), background)
    draw = ImageDraw.Draw(image)
    for op in ops:
        if isinstance(op, Box):
            box = [op.x1 * scale, op.y1 * scale, op.x2 * scale, op.y2 * scale]
            draw.rectangle(box, fill=op.fill, outline=op.stroke, width=max(1, round(op.width * scale)))
        elif isinstance(op, Line):
            xy = [op.x1 * scale, op.y1 * scale, op.x2 * scale, op.y2 * scale]
            draw.line(xy, fill=op.color, width=max(1, round(op.width * scale)))
        else:
            px = round(op.size * scale)
            font = ImageFont.load_default(size=px)
            anchor = {"left": "ls", "right": "rs", "center": "ms"}[op.align]
            x, y = op.x * scale, op.y * scale
            if op.bold and px < 28:  # faux bold: a stroke clogs small text, a 1 px double strike does not
                draw.text((x + 1, y), op.text, font=font, fill=op.color, anchor=anchor)
            draw.text((x, y), op.text, font=font, fill=op.color, anchor=anchor, stroke_width=int(op.bold and px >= 28))
    return image


def _pdf_text(doc: pdfium.PdfDocument, op: Text, height: float):
    font = b"Helvetica-Bold" if op.bold else b"Helvetica"
    obj = pdfium_c.FPDFPageObj_NewTextObj(doc.raw, font, op.size)
    wide = ctypes.create_string_buffer((op.text + "\0").encode("utf-16-le"))
    pdfium_c.FPDFText_SetText(obj, ctypes.cast(wide, ctypes.POINTER(ctypes.c_ushort)))
    pdfium_c.FPDFPageObj_SetFillColor(obj, *op.color, 255)
    left, bottom, right, top = (ctypes.c_float() for _ in range(4))
    pdfium_c.FPDFPageObj_GetBounds(obj, left, bottom, right, top)
    width = right.value - left.value
    x = {"left": op.x, "right": op.x - width, "center": op.x - width / 2}[op.align]
    pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, x, height - op.y)
    return obj


def _pdf_path(op: Line | Box, height: float):
    if isinstance(op, Line):
        obj = pdfium_c.FPDFPageObj_CreateNewPath(op.x1, height - op.y1)
        pdfium_c.FPDFPath_LineTo(obj, op.x2, height - op.y2)
        pdfium_c.FPDFPageObj_SetStrokeColor(obj, *op.color, 255)
        pdfium_c.FPDFPageObj_SetStrokeWidth(obj, op.width)
        pdfium_c.FPDFPath_SetDrawMode(obj, pdfium_c.FPDF_FILLMODE_NONE, True)
        return obj
    obj = pdfium_c.FPDFPageObj_CreateNewRect(op.x1, height - op.y2, op.x2 - op.x1, op.y2 - op.y1)
    if op.fill:
        pdfium_c.FPDFPageObj_SetFillColor(obj, *op.fill, 255)
    if op.stroke:
        pdfium_c.FPDFPageObj_SetStrokeColor(obj, *op.stroke, 255)
        pdfium_c.FPDFPageObj_SetStrokeWidth(obj, op.width)
    fill_mode = pdfium_c.FPDF_FILLMODE_WINDING if op.fill else pdfium_c.FPDF_FILLMODE_NONE
    pdfium_c.FPDFPath_SetDrawMode(obj, fill_mode, bool(op.stroke))
    return obj


def write_pdf(pages: list[list[Op]], path: Path, size: tuple[float, float] = LETTER) -> None:
    """One PDF page per op list, text as real Helvetica text objects (extractable)."""
    doc = pdfium.PdfDocument.new()
    for ops in pages:
        page = doc.new_page(*size)
        for op in ops:
            obj = _pdf_text(doc, op, size[1]) if isinstance(op, Text) else _pdf_path(op, size[1])
            pdfium_c.FPDFPage_InsertObject(page.raw, obj)  # the page owns it from here
        pdfium_c.FPDFPage_GenerateContent(page.raw)
        page.close()
    buffer = io.BytesIO()
    doc.save(buffer, version=17)
    doc.close()
    path.write_bytes(_pin_volatile(buffer.getvalue()))


def _pin_volatile(data: bytes) -> bytes:
    """pdfium stamps the clock and a random /ID; replace both in place (same length: xref stays valid)."""
    data = re.sub(rb"/CreationDate\(D:\d{14}", b"/CreationDate(D:20240401000000", data, count=1)
    head, sep, trailer = data.rpartition(b"trailer")
    digest = hashlib.md5(head).hexdigest().upper().encode()  # the usual /ID recipe: a hash of the file
    return head + sep + re.sub(rb"/ID\s*\[<[0-9A-Fa-f]+><[0-9A-Fa-f]+>\]", b"/ID[<%s><%s>]" % (digest, digest), trailer)


def write_truth(stem: str, truth: dict) -> None:
    text = json.dumps(truth, indent=2, ensure_ascii=False) + "\n"
    (HERE / f"{stem}.truth.json").write_text(text, encoding="utf-8")


# --- invoice -------------------------------------------------------------------------------

INVOICE_ITEMS = [
    ("Steel widget, 40 mm", 120, 2.50),
    ("Brass fitting kit", 15, 18.00),
    ("Assembly labour (hours)", 6, 65.00),
    ("Express shipping", 1, 45.00),
]
INVOICE_TRUTH = {
    "vendor_name": "Acme Widgets Ltd.",
    "vendor_address": "12 Foundry Lane, Springfield, IL 62701, USA",
    "vendor_tax_id": "47-1234567",
    "customer_name": "Globex Corporation",
    "customer_address": "500 Market Street, Suite 200, Shelbyville, IL 62565, USA",
    "invoice_number": "INV-2024-0042",
    "invoice_date": "2024-03-15",
    "due_date": "2024-04-14",
    "currency": "USD",
    "subtotal": 1005.00,
    "tax": 80.40,
    "total": 1085.40,
    "line_items": [
        {"description": d, "quantity": q, "unit_price": p, "amount": round(q * p, 2)} for d, q, p in INVOICE_ITEMS
    ],
}


def money(value: float) -> str:
    return f"${value:,.2f}"


def invoice_ops() -> list[Op]:
    ops: list[Op] = [
        Text(50, 70, "ACME WIDGETS LTD.", 20, bold=True),
        Text(50, 90, "12 Foundry Lane", 9.5, color=GREY),
        Text(50, 103, "Springfield, IL 62701, USA", 9.5, color=GREY),
        Text(50, 116, "Tax ID (EIN): 47-1234567", 9.5, color=GREY),
        Text(562, 70, "INVOICE", 24, bold=True, align="right", color=BLUE),
    ]
    facts = [
        ("Invoice number", "INV-2024-0042"),
        ("Invoice date", "March 15, 2024"),
        ("Due date", "April 14, 2024"),
        ("Currency", "USD"),
    ]
    for i, (label, value) in enumerate(facts):
        y = 96 + i * 14
        ops += [Text(390, y, label, 9.5, color=GREY), Text(562, y, value, 9.5, align="right")]
    ops += [
        Line(50, 160, 562, 160),
        Text(50, 185, "BILL TO", 9, bold=True, color=GREY),
        Text(50, 201, "Globex Corporation", 11, bold=True),
        Text(50, 215, "500 Market Street, Suite 200", 10),
        Text(50, 229, "Shelbyville, IL 62565, USA", 10),
        Box(50, 258, 562, 280, fill=(229, 236, 246)),
        Text(58, 273, "Description", 10, bold=True),
        Text(360, 273, "Qty", 10, bold=True, align="right"),
        Text(455, 273, "Unit price", 10, bold=True, align="right"),
        Text(554, 273, "Amount", 10, bold=True, align="right"),
    ]
    for i, item in enumerate(INVOICE_TRUTH["line_items"]):
        y = 298 + i * 22
        ops += [
            Text(58, y, item["description"], 10),
            Text(360, y, str(item["quantity"]), 10, align="right"),
            Text(455, y, money(item["unit_price"]), 10, align="right"),
            Text(554, y, money(item["amount"]), 10, align="right"),
            Line(50, y + 8, 562, y + 8, 0.5, (200, 200, 200)),
        ]
    ops += [
        Text(455, 405, "Subtotal", 10, align="right"),
        Text(554, 405, money(INVOICE_TRUTH["subtotal"]), 10, align="right"),
        Text(455, 423, "Sales tax (8%)", 10, align="right"),
        Text(554, 423, money(INVOICE_TRUTH["tax"]), 10, align="right"),
        Line(370, 433, 562, 433, 1, BLACK),
        Text(455, 450, "Total due", 12, bold=True, align="right"),
        Text(554, 450, money(INVOICE_TRUTH["total"]), 12, bold=True, align="right"),
        Text(50, 520, "Payment terms: net 30 days. Please quote the invoice number with your payment.", 9),
        Text(50, 534, "Bank transfer to First Springfield Bank, account 0042 7781 19, routing 071000013.", 9),
        Text(306, 740, "Thank you for your business!", 10, align="center", color=GREY),
    ]
    return ops


# --- receipt -------------------------------------------------------------------------------

RECEIPT_ITEMS = [
    ("Flat White", 2, 8.40),
    ("Croissant", 1, 3.50),
    ("Avocado Toast", 1, 11.90),
    ("Sparkling Water", 1, 2.80),
]
RECEIPT_TRUTH = {
    "merchant": "Blue Door Cafe",
    "address": "48 Harbor Street, Portland, ME 04101",
    "date": "2024-05-03",
    "time": "08:47",
    "currency": "USD",
    "items": [{"name": n, "quantity": q, "price": p} for n, q, p in RECEIPT_ITEMS],
    "subtotal": 26.60,
    "tax": 1.93,
    "tip": 4.00,
    "total": 32.53,
    "payment_method": "VISA **** 4242",
}


def receipt_ops() -> list[Op]:
    """A 216 x 400 pt till slip (3 inches wide)."""
    ops: list[Op] = [
        Text(108, 30, "Blue Door Cafe", 15, bold=True, align="center"),
        Text(108, 46, "48 Harbor Street", 8.5, align="center"),
        Text(108, 57, "Portland, ME 04101", 8.5, align="center"),
        Text(108, 68, "Tel (207) 555-0148", 8.5, align="center"),
        Text(14, 90, "05/03/2024", 8.5),
        Text(202, 90, "08:47", 8.5, align="right"),
        Text(14, 102, "Order #117", 8.5),
        Text(202, 102, "Table 4", 8.5, align="right"),
        Line(14, 110, 202, 110, 0.6, BLACK),
    ]
    for i, item in enumerate(RECEIPT_TRUTH["items"]):
        y = 126 + i * 14
        ops += [
            Text(14, y, f"{item['quantity']} x {item['name']}", 9),
            Text(202, y, f"{item['price']:.2f}", 9, align="right"),
        ]
    ops += [Line(14, 184, 202, 184, 0.6, BLACK)]
    totals = [
        ("Subtotal", RECEIPT_TRUTH["subtotal"]),
        ("Sales tax 7.25%", RECEIPT_TRUTH["tax"]),
        ("Tip", RECEIPT_TRUTH["tip"]),
    ]
    for i, (label, value) in enumerate(totals):
        ops += [Text(14, 200 + i * 13, label, 9), Text(202, 200 + i * 13, f"{value:.2f}", 9, align="right")]
    ops += [
        Text(14, 250, "TOTAL", 12, bold=True),
        Text(202, 250, f"${RECEIPT_TRUTH['total']:.2f}", 12, bold=True, align="right"),
        Text(14, 272, "VISA **** 4242", 9),
        Text(202, 272, "APPROVED", 9, align="right"),
        Text(14, 285, "Auth 083615", 8.5),
        Line(14, 300, 202, 300, 0.6, BLACK),
        Text(108, 320, "Thank you! Come again.", 9, align="center"),
        Text(108, 334, "bluedoorcafe.example", 8, align="center"),
    ]
    return ops


def receipt_photo() -> Image.Image:
    """The slip on an off-white, noisy table, slightly rotated and soft, like a phone photo."""
    rng = random.Random(20240503)
    slip = draw_image(receipt_ops(), (216, 350), 2.0, background=(250, 248, 240))
    width, height = 720, 960
    noise = Image.frombytes("L", (width // 4, height // 4), rng.randbytes(width * height // 16))
    noise = noise.resize((width, height), Image.Resampling.BILINEAR).point(lambda v: 208 + v // 12)
    table = Image.merge("RGB", [noise.point(lambda v: v + 8), noise.point(lambda v: v + 4), noise])
    mask = Image.new("L", slip.size, 255)
    angle = -2.0
    slip, mask = (im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) for im in (slip, mask))
    shadow = Image.new("RGB", slip.size, (150, 146, 138))
    offset = ((width - slip.width) // 2, (height - slip.height) // 2)
    table.paste(shadow, (offset[0] + 6, offset[1] + 8), mask.filter(ImageFilter.GaussianBlur(6)))
    table.paste(slip, offset, mask)
    grain = Image.frombytes("L", (width, height), rng.randbytes(width * height)).point(lambda v: v // 16)
    photo = ImageChops.subtract(table, Image.merge("RGB", [grain] * 3))  # sensor noise
    return photo.filter(ImageFilter.GaussianBlur(0.6))


# --- screenshot ----------------------------------------------------------------------------

SCREENSHOT_TRUTH = {
    "app": "Northwind Portal",
    "screen_title": "Sign in to your account",
    "visible_text": [
        "Northwind Portal",
        "Help",
        "Contact",
        "Sign in to your account",
        "Incorrect email or password. Please try again.",
        "Email",
        "j.doe@example.com",
        "Password",
        "Remember me",
        "Forgot password?",
        "Sign in",
        "New here? Create an account",
    ],
    "elements": [
        {"label": "Help", "kind": "link"},
        {"label": "Contact", "kind": "link"},
        {"label": "Email", "kind": "input"},
        {"label": "Password", "kind": "input"},
        {"label": "Remember me", "kind": "checkbox"},
        {"label": "Forgot password?", "kind": "link"},
        {"label": "Sign in", "kind": "button"},
        {"label": "Create an account", "kind": "link"},
    ],
    "errors": ["Incorrect email or password. Please try again."],
}


def screenshot_ops() -> list[Op]:
    """A 1280 x 800 px login page (units are pixels here)."""
    card = (440, 150, 840, 650)
    return [
        Box(0, 0, 1280, 800, fill=(243, 244, 246)),
        Box(0, 0, 1280, 64, fill=(30, 41, 59)),
        Text(32, 41, "Northwind Portal", 22, bold=True, color=(255, 255, 255)),
        Text(1170, 39, "Help", 16, align="right", color=(203, 213, 225)),
        Text(1248, 39, "Contact", 16, align="right", color=(203, 213, 225)),
        Box(*card, fill=(255, 255, 255), stroke=(209, 213, 219)),
        Text(640, 208, "Sign in to your account", 26, bold=True, align="center"),
        Box(472, 236, 808, 284, fill=(254, 226, 226), stroke=(248, 113, 113)),
        Text(488, 266, "Incorrect email or password. Please try again.", 15, color=RED),
        Text(472, 322, "Email", 15, bold=True),
        Box(472, 332, 808, 376, fill=(255, 255, 255), stroke=(156, 163, 175)),
        Text(486, 360, "j.doe@example.com", 16),
        Text(472, 412, "Password", 15, bold=True),
        Box(472, 422, 808, 466, fill=(255, 255, 255), stroke=(248, 113, 113), width=2),
        Text(486, 452, "**********", 16, color=GREY),
        Box(472, 488, 490, 506, fill=(255, 255, 255), stroke=(107, 114, 128)),
        Text(500, 503, "Remember me", 15),
        Text(808, 503, "Forgot password?", 15, align="right", color=BLUE),
        Box(472, 530, 808, 578, fill=BLUE),
        Text(640, 560, "Sign in", 18, bold=True, align="center", color=(255, 255, 255)),
        Text(640, 620, "New here? Create an account", 15, align="center", color=BLUE),
        Text(640, 770, "© 2024 Northwind Traders", 13, align="center", color=GREY),
    ]


# --- three-page report ---------------------------------------------------------------------

REPORT_TRUTH = {
    "title": "Quarterly Operations Report",
    "document_type": "report",
    "date": "2024-04-10",
    "language": "en",
    "summary": (
        "Harbor Logistics reports its first quarter of 2024: shipments rose 6% to 48,215 with a 96.4% "
        "on-time rate and revenue of $12.8 million. It expects moderate growth in Q2 and names fuel "
        "prices and port congestion as the main risks."
    ),
    "key_values": [
        {"key": "Company", "value": "Harbor Logistics Inc."},
        {"key": "Period", "value": "Q1 2024"},
        {"key": "Shipments handled", "value": "48,215"},
        {"key": "On-time delivery rate", "value": "96.4%"},
        {"key": "Revenue", "value": "$12.8 million"},
        {"key": "Operating costs", "value": "$10.1 million"},
        {"key": "Warehouse utilisation", "value": "87%"},
        {"key": "Average transit time", "value": "2.3 days"},
    ],
}


def paragraph(lines: list[str], y: float, size: float = 11, leading: float = 16) -> list[Op]:
    return [Text(72, y + i * leading, line, size) for i, line in enumerate(lines)]


def report_pages() -> list[list[Op]]:
    def footer(n: int) -> list[Op]:
        return [
            Line(72, 740, 540, 740),
            Text(72, 755, "Harbor Logistics Inc. - Quarterly Operations Report Q1 2024", 8, color=GREY),
            Text(540, 755, f"Page {n} of 3", 8, align="right", color=GREY),
        ]

    page1 = [
        Text(72, 110, "Quarterly Operations Report", 24, bold=True),
        Text(72, 136, "Harbor Logistics Inc. - Q1 2024", 14, color=GREY),
        Text(72, 170, "Prepared by: Operations Analytics Team", 10),
        Text(72, 184, "Date: April 10, 2024", 10),
        Line(72, 200, 540, 200, 1, BLACK),
        Text(72, 236, "1. Summary", 14, bold=True),
        *paragraph(
            [
                "The first quarter of 2024 was the strongest opening quarter in the company's history.",
                "Shipments handled rose 6% year on year to 48,215, while the on-time delivery rate",
                "improved to 96.4%. Revenue reached $12.8 million against operating costs of",
                "$10.1 million. The new cross-dock facility in Tacoma opened on schedule in February",
                "and already handles one fifth of regional volume.",
            ],
            262,
        ),
        *footer(1),
    ]
    figures = [
        ("Shipments handled", "48,215"),
        ("On-time delivery rate", "96.4%"),
        ("Revenue", "$12.8 million"),
        ("Operating costs", "$10.1 million"),
        ("Warehouse utilisation", "87%"),
        ("Average transit time", "2.3 days"),
    ]
    page2: list[Op] = [Text(72, 100, "2. Key figures", 14, bold=True), Box(72, 116, 540, 136, fill=(229, 236, 246))]
    page2 += [Text(80, 130, "Measure", 10, bold=True), Text(532, 130, "Q1 2024", 10, bold=True, align="right")]
    for i, (label, value) in enumerate(figures):
        y = 156 + i * 22
        page2 += [Text(80, y, label, 10), Text(532, y, value, 10, align="right"), Line(72, y + 8, 540, y + 8, 0.5)]
    page2 += paragraph(
        [
            "Volumes grew fastest on the Seattle-Anchorage lane (+14%). Warehouse utilisation stayed",
            "below the 90% threshold that triggers overflow storage costs.",
        ],
        310,
    )
    page2 += footer(2)
    page3 = [
        Text(72, 100, "3. Outlook", 14, bold=True),
        *paragraph(
            [
                "We expect moderate growth of 3 to 5% in the second quarter, driven by new retail",
                "contracts that start in May. Hiring for the Tacoma facility will continue.",
            ],
            126,
        ),
        Text(72, 190, "4. Risks", 14, bold=True),
        *paragraph(
            [
                "Fuel prices remain the largest cost risk. Congestion at the Port of Seattle could",
                "delay inbound containers during the peak season.",
            ],
            216,
        ),
        *footer(3),
    ]
    return [page1, page2, page3]


def main() -> None:
    scale = 1000 / LETTER[0]
    draw_image(invoice_ops(), LETTER, scale).save(HERE / "invoice-acme.png", optimize=True)
    write_pdf([invoice_ops()], HERE / "invoice-acme.pdf")
    write_truth("invoice-acme", INVOICE_TRUTH)
    receipt_photo().save(HERE / "receipt-cafe.jpg", quality=80, optimize=True)
    write_truth("receipt-cafe", RECEIPT_TRUTH)
    draw_image(screenshot_ops(), (1280, 800), 1.0).save(HERE / "screenshot-login.png", optimize=True)
    write_truth("screenshot-login", SCREENSHOT_TRUTH)
    write_pdf(report_pages(), HERE / "report-3pages.pdf")
    write_truth("report-3pages", REPORT_TRUTH)
    for path in sorted(HERE.iterdir()):
        if path.suffix != ".py":
            print(f"{path.name:32} {path.stat().st_size:>8,} bytes")


if __name__ == "__main__":
    main()
