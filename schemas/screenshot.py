"""Built-in schema: a screenshot of an application or web page."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Text = Annotated[str, Field(max_length=200)]
ElementKind = Literal["button", "link", "input", "checkbox", "radio", "dropdown", "tab", "menu", "other"]


class Screenshot(BaseModel):
    """A screenshot of a user interface: which app and screen, its text, its controls and its error messages."""

    model_config = ConfigDict(extra="forbid")

    class Element(BaseModel):
        """One control the user can act on."""

        model_config = ConfigDict(extra="forbid")

        label: str | None = Field(
            None,
            max_length=120,
            description="The control's visible label or placeholder; null if it has none.",
        )
        kind: ElementKind | None = Field(None, description="What sort of control it is; null if unclear.")

    app: str | None = Field(
        None,
        max_length=80,
        description="Application or website name shown; null if not identifiable.",
    )
    screen_title: str | None = Field(
        None,
        max_length=120,
        description="Title or heading of the current screen or dialog; null if none.",
    )
    visible_text: list[Text] | None = Field(
        None,
        max_length=30,
        description="The main visible text snippets, top to bottom, one per entry; null if none.",
    )
    elements: list[Element] | None = Field(
        None,
        max_length=40,
        description="Buttons, links, inputs and other controls, top to bottom; null if none.",
    )
    errors: list[Text] | None = Field(
        None,
        max_length=10,
        description="Error or warning messages shown, verbatim; null if there are none.",
    )


SCHEMA = Screenshot
