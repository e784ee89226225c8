"""Human output on stderr: the progress bar, per-document lines and the statistics table."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from glmv_cli.records import Record


def stderr_console() -> Console:
    """Colour and live display only on a terminal; plain lines in pipes and cron."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


class ProgressView:
    """A Rich progress bar on a terminal; nothing (or one line per document with -v) otherwise."""

    def __init__(self, console: Console, total: int, verbose: bool = False, quiet: bool = False):
        self.console = console
        self.verbose = verbose and not quiet
        self.pages = 0
        self.failed = 0
        self.review = 0
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        if self.live:
            self.progress = Progress(
                TextColumn("[bold]extract"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(
                    "docs | {task.fields[pages]} pages | [yellow]{task.fields[review]} review[/] "
                    "| [red]{task.fields[failed]} failed[/]"
                ),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[current]}", style="dim"),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("extract", total=total, pages=0, review=0, failed=0, current="")

    def __enter__(self) -> ProgressView:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress:
            self.progress.stop()

    def update(self, record: Record) -> None:
        self.pages += len(record.pages)
        self.failed += record.status == "failed"
        self.review += record.status == "review"
        if self.progress:
            name = record.file if len(record.file) < 40 else "..." + record.file[-37:]
            counts = {"pages": self.pages, "review": self.review, "failed": self.failed}
            self.progress.update(self.task, advance=1, current=name, **counts)
        if self.verbose:
            self.console.print(document_line(record), markup=False)


def document_line(record: Record) -> str:
    """One line per document for -v: status, file, time, and the reason for a failure or a review."""
    took = record.timings.total
    when = "cached" if record.cached else (f"{took:.2f}s" if took is not None else "-")
    line = f"{record.status:9} {record.file} ({when})"
    if record.status == "failed" and record.error:
        line += f": [{record.error_code}] {record.error}"
    elif record.status == "review" and record.review_reasons:
        line += ": " + "; ".join(record.review_reasons)
        if record.warning:
            line += f"; warning: {record.warning}"
    elif record.warning:
        line += f": warning: {record.warning}"
    elif record.status == "duplicate":
        line += f": same content as {record.duplicate_of}"
    return line


def _s(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def stats_table(summary: dict[str, Any]) -> Table:
    table = Table(title="glmv extract", show_header=False, box=None, pad_edge=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("documents ok", str(summary["docs_ok"])),
        ("documents to review", str(summary["docs_review"])),
        ("documents failed", str(summary["docs_failed"])),
        ("duplicates", str(summary["docs_duplicate"])),
        ("from cache", str(summary["docs_cached"])),
        ("over --max-pages", str(summary["docs_page_limited"])),
        ("pages", str(summary["pages"])),
        ("wall time", _s(summary["wall_s"])),
        ("documents / min", _s(summary["docs_per_min"], "", 1)),
        ("latency p50 / p90", f"{_s(summary['latency_p50_s'])} / {_s(summary['latency_p90_s'])}"),
        ("latency p99 / max", f"{_s(summary['latency_p99_s'])} / {_s(summary['latency_max_s'])}"),
        ("time to first token p50", _s(summary["ttft_p50_s"], "s", 3)),
        ("decode tokens/s (per doc, mean)", _s(summary["decode_tokens_per_s_mean"], "", 1)),
        ("output tokens", str(summary["output_tokens"])),
        ("model load", _s(summary["model_load_s"]) if summary["model_load_s"] else "not loaded"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    return table


def print_stats(console: Console, summary: dict[str, Any]) -> None:
    console.print(stats_table(summary))
    sys.stderr.flush()
