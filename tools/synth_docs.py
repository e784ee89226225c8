"""Synthetic invoices, receipts and UI screenshots with their ground truth, from a seed.

The trained test checkpoint learns from these (tools/train_tiny.py), and the held-out figures are
measured on a folder drawn with another seed. Every document is a list of drawing ops (the same
ops samples/make_samples.py draws), so one layout becomes an image (Pillow) and a PDF with a
real text layer (pdfium); `truth` holds every fact in canonical form, and `target(schema)` turns
it into the answer a schema wants.

    python tools/synth_docs.py OUT_DIR --seed 7 -n 60     # a held-out folder: files + <stem>.truth.json
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "samples"))
from make_samples import BLUE, GREY, RED, Box, Line, Op, Text, draw_image, write_pdf  # noqa: E402

LANGS = ["en", "de", "fr", "es"]
LABELS: dict[str, dict[str, list[str]]] = {
    "en": {
        "invoice": ["INVOICE", "Invoice", "TAX INVOICE"],
        "number": ["Invoice number", "Invoice No.", "Invoice #", "Number"],
        "date": ["Invoice date", "Date", "Issue date", "Date of issue"],
        "due": ["Due date", "Payment due", "Due"],
        "bill_to": ["Bill to", "Customer", "Billed to", "Sold to"],
        "tax_id": ["VAT ID", "Tax ID", "EIN", "VAT No."],
        "currency": ["Currency"],
        "subtotal": ["Subtotal", "Net amount", "Sub-total"],
        "tax": ["Tax", "VAT", "Sales tax", "VAT 20%"],
        "total": ["Total", "Amount due", "Grand total", "TOTAL"],
        "desc": ["Description", "Item"],
        "qty": ["Qty", "Quantity"],
        "unit": ["Unit price", "Price"],
        "amount": ["Amount", "Line total"],
        "receipt": ["Thank you!", "RECEIPT", "Sales receipt"],
        "tip": ["Tip", "Gratuity"],
        "paid": ["Paid by", "Payment", "Tender"],
        "cash": ["Cash"],
        "card": ["Card"],
        "time": ["Time"],
    },
    "de": {
        "invoice": ["RECHNUNG", "Rechnung"],
        "number": ["Rechnungsnummer", "Rechnung Nr.", "Nr."],
        "date": ["Rechnungsdatum", "Datum"],
        "due": ["Zahlbar bis", "Fällig am", "Fälligkeit"],
        "bill_to": ["Rechnungsempfänger", "Kunde", "An"],
        "tax_id": ["USt-IdNr.", "Steuernummer"],
        "currency": ["Währung"],
        "subtotal": ["Zwischensumme", "Nettobetrag", "Netto"],
        "tax": ["MwSt.", "USt.", "MwSt. 19%"],
        "total": ["Gesamtbetrag", "Summe", "Gesamt", "Endbetrag"],
        "desc": ["Beschreibung", "Artikel", "Bezeichnung"],
        "qty": ["Menge", "Anz."],
        "unit": ["Einzelpreis", "Preis"],
        "amount": ["Betrag", "Gesamt"],
        "receipt": ["Vielen Dank!", "KASSENBON", "Beleg"],
        "tip": ["Trinkgeld"],
        "paid": ["Bezahlt mit", "Zahlung"],
        "cash": ["Bar"],
        "card": ["Karte", "EC-Karte"],
        "time": ["Uhrzeit", "Zeit"],
    },
    "fr": {
        "invoice": ["FACTURE", "Facture"],
        "number": ["Facture n°", "N° de facture", "Numéro"],
        "date": ["Date de facture", "Date", "Date d'émission"],
        "due": ["Échéance", "Date d'échéance", "À payer avant"],
        "bill_to": ["Client", "Facturé à", "Destinataire"],
        "tax_id": ["N° TVA", "SIRET"],
        "currency": ["Devise"],
        "subtotal": ["Total HT", "Sous-total"],
        "tax": ["TVA", "TVA 20%"],
        "total": ["Total TTC", "Montant total", "Net à payer"],
        "desc": ["Désignation", "Description"],
        "qty": ["Qté", "Quantité"],
        "unit": ["Prix unitaire", "P.U."],
        "amount": ["Montant", "Total"],
        "receipt": ["Merci de votre visite", "TICKET", "Reçu"],
        "tip": ["Pourboire"],
        "paid": ["Payé par", "Règlement"],
        "cash": ["Espèces"],
        "card": ["Carte bancaire", "CB"],
        "time": ["Heure"],
    },
    "es": {
        "invoice": ["FACTURA", "Factura"],
        "number": ["Número de factura", "Factura nº", "Nº"],
        "date": ["Fecha de factura", "Fecha", "Fecha de emisión"],
        "due": ["Vencimiento", "Fecha de vencimiento"],
        "bill_to": ["Cliente", "Facturar a"],
        "tax_id": ["NIF", "CIF"],
        "currency": ["Moneda"],
        "subtotal": ["Subtotal", "Base imponible"],
        "tax": ["IVA", "IVA 21%"],
        "total": ["Total", "Importe total", "Total a pagar"],
        "desc": ["Descripción", "Concepto"],
        "qty": ["Cant.", "Cantidad"],
        "unit": ["Precio unitario", "Precio"],
        "amount": ["Importe", "Total"],
        "receipt": ["Gracias por su visita", "TICKET", "Recibo"],
        "tip": ["Propina"],
        "paid": ["Pagado con", "Forma de pago"],
        "cash": ["Efectivo"],
        "card": ["Tarjeta"],
        "time": ["Hora"],
    },
}
COMPANY_SUFFIX = {
    "en": ["Ltd.", "Inc.", "LLC", "Co.", "Group", "& Sons", ""],
    "de": ["GmbH", "AG", "KG", "& Co. KG", "e.K.", ""],
    "fr": ["SARL", "SAS", "SA", "& Fils", ""],
    "es": ["S.L.", "S.A.", "y Hermanos", ""],
}
STREET = {
    "en": ["Street", "Road", "Lane", "Avenue", "Way"],
    "de": ["straße", "weg", "gasse", "platz"],
    "fr": ["rue", "avenue", "boulevard", "place"],
    "es": ["Calle", "Avenida", "Plaza", "Paseo"],
}
NOUNS = [
    "widget", "cable", "bolt", "consulting", "design", "hosting", "license", "repair", "paper", "toner",
    "chair", "lamp", "service", "support", "shipping", "training", "audit", "filter", "valve", "sensor",
    "panel", "coffee", "tea", "bread", "salad", "pizza", "soup", "juice", "water", "cake",
]  # fmt: skip
ADJS = ["steel", "premium", "basic", "large", "small", "annual", "monthly", "express", "blue", "organic", "extra"]
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["an", "el", "or", "is", "um", "ex", "al"]
CURRENCIES = [("EUR", "€"), ("USD", "$"), ("GBP", "£"), ("CHF", "CHF ")]
APPS = ["Mail", "Shop", "Bank", "Notes", "Drive", "Chat", "Travel", "Photos", "Admin", "Portal"]
SCREENS = ["Sign in", "Log in", "Create account", "Settings", "Checkout", "Reset password", "Profile", "Search"]
ERRORS = [
    "Incorrect password.",
    "This field is required.",
    "Invalid email address.",
    "Session expired. Please sign in again.",
    "Card declined.",
    "Network error. Try again later.",
]
ELEMENTS = [
    ("Email", "input"), ("Password", "input"), ("Search", "input"), ("Name", "input"),
    ("Sign in", "button"), ("Continue", "button"), ("Save", "button"), ("Cancel", "button"), ("Pay now", "button"),
    ("Forgot password?", "link"), ("Help", "link"), ("Privacy policy", "link"), ("Create an account", "link"),
    ("Remember me", "checkbox"), ("Country", "dropdown"),
]  # fmt: skip
SNIPPETS = [
    "Welcome back", "Enter your details below", "Your order", "Choose a plan", "Last updated today",
    "All changes saved", "No results found", "Two items in your cart", "Secure checkout",
]  # fmt: skip
MONTHS_EN = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def word(rng: random.Random, n: tuple[int, int] = (2, 3)) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*n))).capitalize()


def company(rng: random.Random, lang: str) -> str:
    base = word(rng) if rng.random() < 0.6 else f"{word(rng)} {rng.choice(NOUNS).capitalize()}"
    suffix = rng.choice(COMPANY_SUFFIX[lang])
    return f"{base} {suffix}".strip()


def person(rng: random.Random) -> str:
    return f"{word(rng, (1, 2))} {word(rng)}"


def address(rng: random.Random, lang: str) -> list[str]:
    """Two printed lines (street, postcode + city): the truth joins them with ', '."""
    num, street = rng.randint(1, 250), rng.choice(STREET[lang])
    name = word(rng)
    line1 = {
        "en": f"{num} {name} {street}",
        "de": f"{name}{street} {num}",
        "fr": f"{num} {street} {name}",
        "es": f"{street} {name} {num}",
    }[lang]
    code = str(rng.randint(1000, 99999)).zfill(5)
    return [line1, f"{code} {word(rng)}"]


def money_text(value: float, symbol: str, style: int) -> str:
    """How an amount is printed; the truth is always the plain number."""
    plain = f"{value:,.2f}" if style == 2 and value >= 1000 else f"{value:.2f}"
    if style == 1:
        return f"{symbol.strip()}{plain}" if symbol.strip() in "$£€" else f"{plain} {symbol.strip()}"
    return plain


def plain_number(value: float) -> str:
    return f"{value:.2f}"


def date_text(d: tuple[int, int, int], style: int) -> str:
    y, m, day = d
    if style == 1:
        return f"{day:02d}.{m:02d}.{y}"
    if style == 2:
        return f"{MONTHS_EN[m - 1]} {day}, {y}"
    return f"{y}-{m:02d}-{day:02d}"


def random_date(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(2015, 2026), rng.randint(1, 12), rng.randint(1, 28))


def iso(d: tuple[int, int, int]) -> str:
    return f"{d[0]}-{d[1]:02d}-{d[2]:02d}"


@dataclass
class SynthDoc:
    """One synthetic document: its layout (one op list per page), its facts, and how to draw it."""

    kind: str  # invoice | receipt | screenshot
    lang: str
    ops: list[Op]
    size: tuple[float, float]
    truth: dict[str, Any]  # canonical facts, in the built-in schema's shape
    extra: dict[str, Any] = field(default_factory=dict)  # title, labelled facts (document schema)
    dense: bool = False  # a long, busy invoice (make_invoice)

    def image(self, scale: float) -> Image.Image:
        return draw_image(self.ops, self.size, scale)

    def pdf_bytes(self) -> bytes:
        buffer = io.BytesIO()
        _write_pdf_to(buffer, [self.ops], self.size)
        return buffer.getvalue()


def _write_pdf_to(buffer: io.BytesIO, pages: list[list[Op]], size: tuple[float, float]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.pdf"
        write_pdf(pages, path, size)
        buffer.write(path.read_bytes())


# --- layouts ---------------------------------------------------------------------------------


FOOTER_LABELS = {
    "en": ("Phone", "Bank", "Customer No.", "Page 1 of 1", "Registered in", "Period"),
    "de": ("Tel.", "Bankverbindung", "Kundennr.", "Seite 1 von 1", "Registergericht", "Zeitraum"),
    "fr": ("Tél.", "Banque", "N° client", "Page 1 sur 1", "RCS", "Période"),
    "es": ("Teléfono", "Banco", "N.º cliente", "Página 1 de 1", "Registro Mercantil", "Periodo"),
}


def footer_columns(rng: random.Random, lang: str, vendor: str) -> list[list[str]]:
    """What real invoices print around the facts: contact, bank and register lines full of digits that
    are no field's value (phone numbers, IBANs, customer and contract numbers, a service period)."""
    phone, bank, customer_no, page, register, period = FOOTER_LABELS[lang]
    domain = word(rng).lower()
    digits = "".join(str(rng.randint(0, 9)) for _ in range(18))
    iban = f"{rng.choice(['DE', 'FR', 'ES', 'GB', 'IT'])}{rng.randint(10, 99)} " + " ".join(
        digits[i : i + 4] for i in range(0, 18, 4)
    )
    start, end = random_date(rng), random_date(rng)
    contact = [
        vendor,
        f"{phone} +{rng.randint(1, 49)} {rng.randint(100, 9999)} {rng.randint(100, 999)} {rng.randint(10, 99)}",
        f"info@{domain}.com",
        f"www.{domain}.{rng.choice(['com', 'de', 'fr', 'es'])}",
    ]
    money = [
        f"{bank}: {word(rng)} Bank",
        f"IBAN {iban}",
        f"BIC {word(rng, (2, 2)).upper()}{rng.choice(['DE', 'FR', 'ES'])}{rng.randint(10, 99)}",
    ]
    other = [
        f"{customer_no} {rng.randint(1000, 99999)}",
        f"{register} HRB {rng.randint(1000, 99999)}",
        f"{period} {date_text(start, 1)}-{date_text(end, 1)}",
        f"Contract No. CON{rng.randint(1000, 99999):05d}",
        page,
    ]
    return [contact, money, rng.sample(other, rng.randint(2, len(other)))]


def make_invoice(rng: random.Random, dense: bool = False) -> SynthDoc:
    """An invoice. dense: many line items, a footer of distracting numbers, and a text layer whose order
    is not the reading order (as real PDFs have), for the model to learn to stop on long, busy pages."""
    lang = rng.choice(LANGS)
    lab = {k: rng.choice(v) for k, v in LABELS[lang].items()}
    code, symbol = rng.choice(CURRENCIES)
    money_style = rng.choice([0, 0, 1, 1, 2])
    date_style = rng.choice([0, 0, 0, 1, 2] if lang == "en" else [0, 0, 1])
    vendor, customer = company(rng, lang), (company(rng, lang) if rng.random() < 0.7 else person(rng))
    v_addr, c_addr = address(rng, lang), address(rng, lang)
    tax_id = rng.choice(
        [
            f"{rng.choice(['DE', 'FR', 'ES', 'GB', 'IT'])}{rng.randint(10**8, 10**9 - 1)}",
            f"{rng.randint(10, 99)}-{rng.randint(10**6, 10**7 - 1)}",
            None,
        ]
    )
    number = rng.choice(
        [
            f"INV-{rng.randint(2015, 2026)}-{rng.randint(1, 9999):04d}",
            f"{rng.randint(1000, 999999)}",
            f"{rng.choice(['RE', 'F', 'A', 'FAC'])}{rng.randint(100, 99999)}",
            f"{rng.randint(2015, 2026)}/{rng.randint(1, 999):03d}",
        ]
    )
    issued = random_date(rng)
    due = random_date(rng) if rng.random() < 0.75 else None
    items = []
    for _ in range(rng.randint(5, 14) if dense else rng.randint(1, 4)):
        desc = f"{rng.choice(ADJS).capitalize()} {rng.choice(NOUNS)}"
        if dense and rng.random() < 0.4:
            desc += f" {word(rng)} {rng.randint(10, 9999)}"
        qty = rng.choice([1, 1, 2, 3, 5, 10, 12, 24, rng.randint(1, 200)])
        unit = round(rng.choice([rng.uniform(1, 99), rng.uniform(10, 999), rng.uniform(100, 4999)]), 2)
        items.append((desc, qty, unit, round(qty * unit, 2)))
    subtotal = round(sum(i[3] for i in items), 2)
    rate = rng.choice([0.07, 0.1, 0.19, 0.2, 0.21])
    has_tax = rng.random() < 0.85
    tax = round(subtotal * rate, 2) if has_tax else None
    total = round(subtotal + (tax or 0), 2)

    width, height = rng.choice([(612.0, 792.0), (595.0, 842.0)])
    left = rng.uniform(36, 70)
    right = width - rng.uniform(36, 70)
    size = rng.choice([8.5, 9, 9.5, 10, 11])
    lead = size * rng.uniform(1.3, 1.6)
    ops: list[Op] = []
    y = rng.uniform(55, 90)
    title_right = rng.random() < 0.5
    ops.append(
        Text(
            right if title_right else left, y, lab["invoice"], size * 2, True, "right" if title_right else "left", BLUE
        )
    )
    # vendor block on the other side (or below the title)
    vx, valign = (left, "left") if title_right else (right, "right")
    vy = y
    vendor_lines = [vendor, *v_addr] + ([f"{lab['tax_id']}: {tax_id}"] if tax_id else [])
    for i, line in enumerate(vendor_lines):
        ops.append(
            Text(vx, vy + i * lead, line, size * (1.25 if i == 0 else 1), i == 0, valign, GREY if i else (20, 20, 20))
        )
    y = max(y, vy + len(vendor_lines) * lead) + lead
    facts = [(lab["number"], number), (lab["date"], date_text(issued, date_style))]
    if due:
        facts.append((lab["due"], date_text(due, date_style)))
    show_currency = money_style == 0 or rng.random() < 0.4
    if show_currency:
        facts.append((lab["currency"], code))
    inline = rng.random() < 0.5
    fx = rng.choice([left, width / 2])
    for i, (label, value) in enumerate(facts):
        fy = y + i * lead
        if inline:
            ops.append(Text(fx, fy, f"{label}: {value}", size))
        else:
            ops += [Text(fx, fy, label, size, color=GREY), Text(fx + rng.uniform(110, 160), fy, value, size)]
    # customer block
    cy = y if fx != left else y + (len(facts) + 1) * lead
    cx = width / 2 + 20 if fx == left else left
    cust_lines = [lab["bill_to"], customer, *c_addr]
    for i, line in enumerate(cust_lines):
        ops.append(Text(cx, cy + i * lead, line, size, i <= 1 and i == 0, color=GREY if i == 0 else (20, 20, 20)))
    y = max(y + len(facts) * lead, cy + len(cust_lines) * lead) + 2 * lead
    # item table
    cols = [left, right - 200, right - 110, right]
    ops.append(Line(left, y - size - 2, right, y - size - 2))
    heads = [lab["desc"], lab["qty"], lab["unit"], lab["amount"]]
    for j, h in enumerate(heads):
        ops.append(Text(cols[j], y, h, size, True, "left" if j == 0 else "right"))
    y += lead
    for desc, qty, unit, amount in items:
        cells = [desc, str(qty), money_text(unit, symbol, money_style), money_text(amount, symbol, money_style)]
        for j, c in enumerate(cells):
            ops.append(Text(cols[j], y, c, size, False, "left" if j == 0 else "right"))
        y += lead
    ops.append(Line(left, y - size + 2, right, y - size + 2))
    y += lead * 0.5
    sums = [(lab["subtotal"], subtotal)] + ([(lab["tax"], tax)] if tax is not None else []) + [(lab["total"], total)]
    for label, value in sums:
        bold = label == lab["total"]
        ops += [
            Text(right - 110, y, label, size, bold, "right"),
            Text(right, y, money_text(value, symbol, money_style), size, bold, "right"),
        ]
        y += lead
    if dense:
        columns = footer_columns(rng, lang, vendor)
        fy = max(y + 2 * lead, height - (max(map(len, columns)) + 1) * lead * 0.9 - 30)
        height = max(height, fy + (max(map(len, columns)) + 1) * lead * 0.9 + 30)
        footer: list[Op] = [Line(left, fy - size - 2, right, fy - size - 2, 0.5)]
        for c, lines in enumerate(columns):
            cx = left + c * (right - left) / len(columns)
            footer += [Text(cx, fy + i * lead * 0.9, line, size * 0.8, color=GREY) for i, line in enumerate(lines)]
        ops = footer + ops if rng.random() < 0.5 else ops + footer  # the text layer's order is the ops' order
    truth = {
        "vendor_name": vendor,
        "vendor_address": ", ".join(v_addr),
        "vendor_tax_id": tax_id,
        "customer_name": customer,
        "customer_address": ", ".join(c_addr),
        "invoice_number": number,
        "invoice_date": iso(issued),
        "due_date": iso(due) if due else None,
        "currency": code if show_currency or money_style == 1 else None,  # a plain amount alone names none
        "subtotal": subtotal,
        "tax": tax,
        "total": total,
        "line_items": [{"description": d, "quantity": q, "unit_price": u, "amount": a} for d, q, u, a in items],
    }
    extra = {"title": lab["invoice"], "date": iso(issued), "facts": facts[:3]}
    return SynthDoc("invoice", lang, ops, (width, height), truth, extra, dense)


def make_receipt(rng: random.Random) -> SynthDoc:
    lang = rng.choice(LANGS)
    lab = {k: rng.choice(v) for k, v in LABELS[lang].items()}
    code, symbol = rng.choice(CURRENCIES[:3])
    merchant = company(rng, lang) if rng.random() < 0.5 else word(rng).upper()
    addr = address(rng, lang)
    d = random_date(rng)
    date_style = rng.choice([0, 1, 1])
    t = f"{rng.randint(7, 22):02d}:{rng.randint(0, 59):02d}"
    items = []
    for _ in range(rng.randint(1, 5)):
        name = (
            rng.choice(NOUNS).capitalize()
            if rng.random() < 0.6
            else f"{rng.choice(ADJS).capitalize()} {rng.choice(NOUNS)}"
        )
        qty = rng.choice([1, 1, 1, 2, 3])
        price = round(qty * rng.uniform(0.5, 30), 2)
        items.append((name, qty, price))
    subtotal = round(sum(i[2] for i in items), 2)
    tax = round(subtotal * rng.choice([0.07, 0.1, 0.19]), 2) if rng.random() < 0.7 else None
    tip = round(rng.uniform(0.5, 8), 2) if rng.random() < 0.3 else None
    total = round(subtotal + (tax or 0) + (tip or 0), 2)
    pay = rng.choice(
        [lab["cash"], f"VISA ****{rng.randint(1000, 9999)}", f"{lab['card']} ****{rng.randint(1000, 9999)}", None]
    )
    width = rng.uniform(200, 260)
    size = rng.choice([7.5, 8, 8.5, 9])
    lead = size * rng.uniform(1.3, 1.5)
    mid, left, right = width / 2, 14.0, width - 14
    ops: list[Op] = []
    y = 30.0
    ops.append(Text(mid, y, merchant, size * 1.4, True, "center"))
    y += lead * 1.4
    for line in addr:
        ops.append(Text(mid, y, line, size, False, "center"))
        y += lead
    y += lead * 0.5
    ops.append(Text(left, y, date_text(d, date_style), size))
    ops.append(Text(right, y, t if rng.random() < 0.6 else f"{lab['time']} {t}", size, False, "right"))
    y += lead * 1.5
    for name, qty, price in items:
        label = name if qty == 1 else f"{qty} x {name}"
        ops += [
            Text(left, y, label, size),
            Text(right, y, money_text(price, symbol, rng.choice([0, 1])), size, False, "right"),
        ]
        y += lead
    ops.append(Line(left, y - size, right, y - size, 0.5))
    y += lead * 0.3
    sums = [(lab["subtotal"], subtotal)] + ([(lab["tax"], tax)] if tax is not None else [])
    sums += [(lab["tip"], tip)] if tip is not None else []
    for label, value in [*sums, (lab["total"], total)]:
        bold = label == lab["total"]
        ops += [
            Text(left, y, label, size, bold),
            Text(right, y, money_text(value, symbol, 1 if bold else 0), size, bold, "right"),
        ]
        y += lead
    if pay:
        ops.append(Text(left, y + lead * 0.5, f"{lab['paid']}: {pay}", size))
        y += lead * 1.5
    ops.append(Text(mid, y + lead, lab["receipt"], size, False, "center"))
    height = y + lead * 3
    truth = {
        "merchant": merchant,
        "address": ", ".join(addr),
        "date": iso(d),
        "time": t,
        "currency": code,
        "items": [{"name": n, "quantity": q, "price": p} for n, q, p in items],
        "subtotal": subtotal,
        "tax": tax,
        "tip": tip,
        "total": total,
        "payment_method": pay,
    }
    extra = {"title": merchant, "date": iso(d), "facts": [(lab["total"], money_text(total, symbol, 1))]}
    return SynthDoc("receipt", lang, ops, (width, height), truth, extra)


def make_screenshot(rng: random.Random) -> SynthDoc:
    app = f"{word(rng, (1, 2))} {rng.choice(APPS)}" if rng.random() < 0.6 else rng.choice(APPS)
    title = rng.choice(SCREENS)
    snippets = rng.sample(SNIPPETS, rng.randint(1, 3))
    elements = rng.sample(ELEMENTS, rng.randint(2, 5))
    errors = rng.sample(ERRORS, 1) if rng.random() < 0.4 else []
    width, height = rng.choice([(480.0, 640.0), (640.0, 480.0), (400.0, 700.0)])
    ops: list[Op] = [Box(0, 0, width, 40, fill=rng.choice([(37, 99, 235), (30, 30, 30), (22, 163, 74)]))]
    ops.append(Text(16, 26, app, 14, True, color=(255, 255, 255)))
    y = 80.0
    ops.append(Text(24, y, title, 20, True))
    y += 34
    for s in snippets:
        ops.append(Text(24, y, s, 11, color=GREY))
        y += 22
    for e in errors:
        ops.append(Text(24, y, e, 11, color=RED))
        y += 22
    for label, kind in elements:
        if kind == "input":
            ops += [Box(24, y, width - 24, y + 28, stroke=GREY), Text(32, y + 18, label, 11, color=GREY)]
            y += 40
        elif kind == "button":
            ops += [Box(24, y, 184, y + 30, fill=BLUE), Text(104, y + 20, label, 12, True, "center", (255, 255, 255))]
            y += 42
        elif kind == "checkbox":
            ops += [Box(24, y, 36, y + 12, stroke=GREY), Text(44, y + 11, label, 11)]
            y += 24
        elif kind == "dropdown":
            ops += [Box(24, y, width - 24, y + 28, stroke=GREY), Text(32, y + 18, f"{label} v", 11)]
            y += 40
        else:
            ops.append(Text(24, y + 12, label, 11, color=BLUE))
            y += 24
    truth = {
        "app": app,
        "screen_title": title,
        "visible_text": snippets,
        "elements": [{"label": label, "kind": kind} for label, kind in elements],
        "errors": errors or None,
    }
    extra = {"title": title, "date": None, "facts": []}
    return SynthDoc("screenshot", "en", ops, (width, height), truth, extra)


MAKERS = {"invoice": make_invoice, "receipt": make_receipt, "screenshot": make_screenshot}


def draw(
    rng: random.Random, kinds: tuple[str, ...] = ("invoice", "invoice", "receipt", "screenshot"), dense: float = 0.0
) -> SynthDoc:
    """One document of a kind from `kinds`; a `dense` share of the invoices are dense (drawn only when
    dense > 0, so a seed's documents without it stay what they were)."""
    kind = rng.choice(kinds)
    if kind == "invoice" and dense and rng.random() < dense:
        return make_invoice(rng, dense=True)
    return MAKERS[kind](rng)


# --- answers ---------------------------------------------------------------------------------

SUMMARY = {
    "invoice": "Invoice {n} from {v} to {c} for {t} {cur}.",
    "receipt": "Receipt from {v} for {t} {cur}.",
    "screenshot": "The {title} screen of {v}.",
}


def document_answer(doc: SynthDoc) -> dict[str, Any]:
    t = doc.truth
    if doc.kind == "screenshot":
        summary = SUMMARY["screenshot"].format(title=t["screen_title"], v=t["app"])
    else:
        v = t.get("vendor_name") or t.get("merchant")
        summary = SUMMARY[doc.kind].format(
            n=t.get("invoice_number"), v=v, c=t.get("customer_name"), t=plain_number(t["total"]), cur=t["currency"]
        )
    kv = [{"key": k, "value": v} for k, v in doc.extra["facts"]] or None
    return {
        "title": doc.extra["title"],
        "document_type": doc.kind,
        "date": doc.extra["date"],
        "language": doc.lang,
        "summary": summary,
        "key_values": kv,
    }


# Inline schemas the model learns beside the built-ins: (spec, kinds it applies to, field -> fact).
INLINE = [
    (
        "vendor, total float: grand total, due date",
        ("invoice",),
        {"vendor": "vendor_name", "total": "total", "due": "due_date"},
    ),
    (
        "invoice_number, date, total float",
        ("invoice",),
        {"invoice_number": "invoice_number", "date": "invoice_date", "total": "total"},
    ),
    (
        "merchant, date, total float: amount paid",
        ("receipt",),
        {"merchant": "merchant", "date": "date", "total": "total"},
    ),
    (
        "customer_name, currency, tax float",
        ("invoice",),
        {"customer_name": "customer_name", "currency": "currency", "tax": "tax"},
    ),
    ("app, screen_title", ("screenshot",), {"app": "app", "screen_title": "screen_title"}),
]


def target(doc: SynthDoc, schema: str) -> dict[str, Any]:
    """The answer for `schema` (a built-in name or an INLINE spec) as a dict in field order."""
    if schema == "document":
        return document_answer(doc)
    if schema == doc.kind:
        return doc.truth
    for spec, _, mapping in INLINE:
        if spec == schema:
            return {k: doc.truth.get(v) for k, v in mapping.items()}
    raise KeyError(schema)


def schemas_for(doc: SynthDoc) -> list[str]:
    return [doc.kind, "document"] + [spec for spec, kinds, _ in INLINE if doc.kind in kinds]


def dump_answer(answer: dict[str, Any]) -> str:
    """JSON as glmv's grammar writes it: compact, keys in schema order, numbers as plain decimals."""

    def fmt(value: Any) -> str:
        if isinstance(value, dict):
            return "{" + ",".join(f"{json.dumps(k)}:{fmt(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ",".join(fmt(v) for v in value) + "]"
        if isinstance(value, float):
            return plain_number(value)
        return json.dumps(value, ensure_ascii=False)

    return fmt(answer)


# Free-text questions as `glmv ask` sends them: (kind, question, fact or callable).
QUESTIONS = [
    ("invoice", "What is the total?", "total"),
    ("invoice", "What is the total amount of this invoice?", "total"),
    ("invoice", "Who issued this invoice?", "vendor_name"),
    ("invoice", "What is the invoice number?", "invoice_number"),
    ("invoice", "When was this invoice issued?", "invoice_date"),
    ("invoice", "When is payment due?", "due_date"),
    ("invoice", "Who is the customer?", "customer_name"),
    ("invoice", "Which currency are the amounts in?", "currency"),
    ("receipt", "What was the total?", "total"),
    ("receipt", "Which shop is this receipt from?", "merchant"),
    ("receipt", "What was the tip?", "tip"),
    ("receipt", "When was this bought?", "date"),
    ("receipt", "How was it paid?", "payment_method"),
    ("screenshot", "What is the title of this screen?", "screen_title"),
    ("screenshot", "Which app is this?", "app"),
    ("screenshot", "What error is shown?", "errors"),
]
NOT_SHOWN = "Not shown in the document."


def ask_answer(doc: SynthDoc, fact: str) -> str:
    value = doc.truth.get(fact)
    if value is None:
        return NOT_SHOWN
    if isinstance(value, list):
        return " ".join(value)
    if isinstance(value, float):
        text = plain_number(value)
        return f"{text} {doc.truth['currency']}" if doc.truth.get("currency") else text
    return str(value)


# --- a held-out folder -----------------------------------------------------------------------


def write_folder(
    out: Path,
    seed: int,
    n: int,
    kinds: tuple[str, ...] = ("invoice",),
    forms: tuple[str, ...] = ("pdf", "pdf", "scan", "png", "jpg"),
) -> list[Path]:
    """n documents of `kinds`, in turn as each of `forms` (pdf: with a text layer; scan: an image-only PDF;
    png, jpg), each with <stem>.truth.json."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        doc = draw(rng, kinds)
        form = forms[i % len(forms)]
        stem = f"{doc.kind}-{seed}-{i:04d}" + ("-scan" if form == "scan" else "")
        path = out / f"{stem}.{'pdf' if form == 'scan' else form}"
        if form == "pdf":
            path.write_bytes(doc.pdf_bytes())
        else:
            image = doc.image(rng.uniform(1.6, 2.2))
            if form == "scan":  # an image-only PDF: no text layer
                buffer = io.BytesIO()
                image.save(buffer, format="PDF", resolution=150)
                path.write_bytes(buffer.getvalue())
            else:
                image.save(path, quality=90) if form == "jpg" else image.save(path)
        truth = target(doc, doc.kind)
        (out / f"{stem}.truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--kinds", default="invoice", help="comma-separated: invoice, receipt, screenshot")
    parser.add_argument("--forms", default="pdf,pdf,scan,png,jpg", help="comma-separated, in turn: pdf, scan, png, jpg")
    args = parser.parse_args(argv)
    paths = write_folder(args.out, args.seed, args.n, tuple(args.kinds.split(",")), tuple(args.forms.split(",")))
    print(f"{len(paths)} documents in {args.out}")


if __name__ == "__main__":
    main()
