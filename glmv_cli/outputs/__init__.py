"""Outputs: record writers (JSONL, JSON, CSV, --out-dir) and run statistics."""

from glmv_cli.outputs.stats import RunStats, percentile
from glmv_cli.outputs.writers import DirWriter, Writer, format_pages, open_writer

__all__ = ["DirWriter", "RunStats", "Writer", "format_pages", "open_writer", "percentile"]
