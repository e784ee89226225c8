"""Page specs ("1-3,5") and choosing which pages of a document to load."""

from __future__ import annotations

from glmv_cli.errors import InputError, UsageError

MAX_PAGE_NUMBER = 100_000  # keeps "1-999999999" from building a huge list


def parse_page_spec(spec: str | None) -> list[int] | None:
    """Parse "1-3,5" into sorted unique 1-based page numbers; None, "" or "all" mean all."""
    if spec is None or not spec.strip() or spec.strip().lower() == "all":
        return None
    numbers: set[int] = set()
    for part in spec.split(","):
        first, sep, last = part.strip().partition("-")
        try:
            lo = int(first)
            hi = int(last) if sep else lo
        except ValueError:
            raise UsageError(f"bad page spec {spec!r}", hint='use page numbers and ranges like "1-3,5"') from None
        if lo < 1 or hi < lo or hi > MAX_PAGE_NUMBER:
            raise UsageError(
                f"bad page range {part.strip()!r} in {spec!r}",
                hint=f"pages count from 1, ranges go low-high, up to {MAX_PAGE_NUMBER}",
            )
        numbers.update(range(lo, hi + 1))
    return sorted(numbers)


def select_pages(pages: list[int] | None, total: int, max_pages: int) -> list[int]:
    """Pages to load: the first `max_pages` of the requested ones that exist, else of all.

    Lenient on purpose: `--pages 1-3` over a folder means "up to the first three" for a
    two-page PDF or a one-page image; only a selection matching no page at all is an error.
    """
    if not pages:
        return list(range(1, min(total, max_pages) + 1))
    present = sorted({n for n in pages if 1 <= n <= total})
    if not present:
        noun = "page" if total == 1 else "pages"
        raise InputError(f"page {pages[0]} out of range (document has {total} {noun})", code="page_out_of_range")
    return present[:max_pages]  # --max-pages bounds an explicit selection too


def count_selected(pages: list[int] | None, total: int) -> int:
    """How many pages a request selects in a document of `total` pages, before --max-pages."""
    return total if not pages else len({n for n in pages if 1 <= n <= total})


def format_page_ranges(numbers: list[int]) -> str:
    """Sorted page numbers as a compact spec, the inverse of parse_page_spec: [1, 2, 3, 5] -> "1-3,5"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
