"""Built-in schema: a commercial invoice with its line items."""

import datetime

from pydantic import BaseModel, ConfigDict, Field

MONEY = {"ge": -1e9, "le": 1e9}


class Invoice(BaseModel):
    """An invoice: who bills whom, when, for what, and how much. Use null for anything not shown."""

    model_config = ConfigDict(extra="forbid")

    class LineItem(BaseModel):
        """One row of the invoice's item table."""

        model_config = ConfigDict(extra="forbid")

        description: str | None = Field(
            None,
            max_length=200,
            description="What was sold, as written on the row; null if blank.",
        )
        quantity: float | None = Field(
            None,
            ge=0,
            le=1e6,
            description="Number of units on the row; null if not shown.",
        )
        unit_price: float | None = Field(
            None,
            **MONEY,
            description="Price of one unit, as a plain number; null if not shown.",
        )
        amount: float | None = Field(
            None,
            **MONEY,
            description="Row total (quantity x unit price) as printed; null if not shown.",
        )

    vendor_name: str | None = Field(
        None,
        max_length=120,
        description="Name of the company or person issuing the invoice; null if absent.",
    )
    vendor_address: str | None = Field(
        None,
        max_length=200,
        description="Vendor's postal address on one line, parts separated by commas; null if absent.",
    )
    vendor_tax_id: str | None = Field(
        None,
        max_length=40,
        description="Vendor's VAT, GST, EIN or other tax number exactly as printed; null if absent.",
    )
    customer_name: str | None = Field(
        None,
        max_length=120,
        description="Name of the billed customer (bill to / sold to); null if absent.",
    )
    customer_address: str | None = Field(
        None,
        max_length=200,
        description="Customer's billing address on one line, parts separated by commas; null if absent.",
    )
    invoice_number: str | None = Field(
        None,
        max_length=60,
        description="The invoice's number or id exactly as printed; null if absent.",
    )
    invoice_date: datetime.date | None = Field(
        None, description="Date the invoice was issued, as YYYY-MM-DD; null if absent."
    )
    due_date: datetime.date | None = Field(None, description="Date payment is due, as YYYY-MM-DD; null if not stated.")
    currency: str | None = Field(
        None,
        max_length=3,
        description="ISO 4217 code of the amounts' currency, e.g. USD, EUR, GBP; null if unclear.",
    )
    subtotal: float | None = Field(
        None,
        **MONEY,
        description="Total before tax, as a plain number without currency symbol; null if absent.",
    )
    tax: float | None = Field(
        None,
        **MONEY,
        description="Total tax (VAT, GST, sales tax) amount; null if absent.",
    )
    total: float | None = Field(None, **MONEY, description="Grand total to pay, including tax; null if absent.")
    line_items: list[LineItem] | None = Field(
        None,
        max_length=50,
        description="Rows of the item table in order; null if there is no table.",
    )


SCHEMA = Invoice
