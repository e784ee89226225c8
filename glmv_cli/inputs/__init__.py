"""Inputs layer: find documents, read them safely, open images and PDFs, hand out RGB pages."""

from glmv_cli.inputs.discover import discover
from glmv_cli.inputs.document import Document, Page
from glmv_cli.inputs.images import fit_for_vision, own_bytes
from glmv_cli.inputs.load import load_document
from glmv_cli.inputs.pages import format_page_ranges, parse_page_spec
from glmv_cli.inputs.read import DEFAULT_MAX_FILE_SIZE, read_file, roots_of
from glmv_cli.inputs.sniff import SUPPORTED_EXTENSIONS, sniff_kind

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "SUPPORTED_EXTENSIONS",
    "Document",
    "Page",
    "discover",
    "fit_for_vision",
    "format_page_ranges",
    "load_document",
    "own_bytes",
    "parse_page_spec",
    "read_file",
    "roots_of",
    "sniff_kind",
]
