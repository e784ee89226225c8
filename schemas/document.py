"""Built-in schema: any document, described generically."""

import datetime

from pydantic import BaseModel, ConfigDict, Field


class Document(BaseModel):
    """A generic document: what it is, when, in which language, what it says, and its key facts."""

    model_config = ConfigDict(extra="forbid")

    class KeyValue(BaseModel):
        """One labelled fact from the document."""

        model_config = ConfigDict(extra="forbid")

        key: str | None = Field(
            None,
            max_length=80,
            description="The label or name of the fact; null if unlabelled.",
        )
        value: str | None = Field(
            None,
            max_length=200,
            description="The fact's value as written; null if empty.",
        )

    title: str | None = Field(
        None,
        max_length=200,
        description="The document's title or main heading; null if none.",
    )
    document_type: str | None = Field(
        None,
        max_length=60,
        description="Kind of document in a few lowercase words, e.g. report, letter, contract.",
    )
    date: datetime.date | None = Field(
        None,
        description="The document's own date (issue or publication), as YYYY-MM-DD; null if absent.",
    )
    language: str | None = Field(
        None,
        max_length=8,
        description="ISO 639-1 code of the main language, e.g. en, de, fr; null if unclear.",
    )
    summary: str | None = Field(
        None,
        max_length=500,
        description="Two or three sentences on what the document says; null if it is blank.",
    )
    key_values: list[KeyValue] | None = Field(
        None,
        max_length=30,
        description="The most important labelled facts (figures, names, dates); null if none.",
    )


SCHEMA = Document
