"""Inputs layer: find documents, open images and PDFs safely, hand out RGB pages."""

from glmv_cli.inputs.discover import discover
from glmv_cli.inputs.document import Document, Page
from glmv_cli.inputs.load import load_document
from glmv_cli.inputs.pages import parse_page_spec
from glmv_cli.inputs.sniff import SUPPORTED_EXTENSIONS, sniff_kind

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Document",
    "Page",
    "discover",
    "load_document",
    "parse_page_spec",
    "sniff_kind",
]
