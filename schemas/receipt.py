"""Built-in schema: a till or restaurant receipt."""

import datetime

from pydantic import BaseModel, ConfigDict, Field

MONEY = {"ge": -1e9, "le": 1e9}


class Receipt(BaseModel):
    """A point-of-sale receipt: where, when, what was bought and how it was paid. Use null for anything not shown."""

    model_config = ConfigDict(extra="forbid")

    class Item(BaseModel):
        """One purchased line on the receipt."""

        model_config = ConfigDict(extra="forbid")

        name: str | None = Field(
            None,
            max_length=120,
            description="Item name as printed; null if unreadable.",
        )
        quantity: float | None = Field(
            None,
            ge=0,
            le=1e6,
            description="Number of units; null if not printed (usually means 1).",
        )
        price: float | None = Field(
            None,
            **MONEY,
            description="Amount charged for the line (quantity x unit price); null if not shown.",
        )

    merchant: str | None = Field(None, max_length=120, description="Shop or restaurant name; null if absent.")
    address: str | None = Field(
        None,
        max_length=200,
        description="Merchant's address on one line, parts separated by commas; null if absent.",
    )
    date: datetime.date | None = Field(None, description="Date of purchase, as YYYY-MM-DD; null if absent.")
    time: str | None = Field(
        None,
        max_length=8,
        description="Time of purchase as 24-hour HH:MM; null if absent.",
    )
    currency: str | None = Field(
        None,
        max_length=3,
        description="ISO 4217 code of the amounts' currency, e.g. USD, EUR; null if unclear.",
    )
    items: list[Item] | None = Field(None, max_length=50, description="Purchased lines in order; null if none.")
    subtotal: float | None = Field(None, **MONEY, description="Total before tax and tip; null if absent.")
    tax: float | None = Field(None, **MONEY, description="Tax amount; null if absent.")
    tip: float | None = Field(None, ge=0, le=1e9, description="Tip or gratuity amount; null if absent.")
    total: float | None = Field(
        None,
        **MONEY,
        description="Final amount paid, including tax and tip; null if absent.",
    )
    payment_method: str | None = Field(
        None,
        max_length=60,
        description="How it was paid as printed, e.g. cash, VISA ****1234; null if absent.",
    )


SCHEMA = Receipt
