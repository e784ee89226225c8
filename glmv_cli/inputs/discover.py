"""Turn the paths a user gives into the list of documents to process."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

from glmv_cli.errors import InputError
from glmv_cli.inputs.sniff import SNIFF_BYTES, SUPPORTED_EXTENSIONS, sniff_kind


def discover(
    paths: Sequence[str | Path],
    glob: list[str] | None = None,
    exclude: list[str] | None = None,
    skip: Iterable[Path] = frozenset(),
) -> list[Path]:
    """Expand files and folders into documents: argument order, each folder sorted, no repeats."""
    never = {Path(p).resolve() for p in skip}
    seen: set[Path] = set()
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            candidates = [(p, p.relative_to(given).as_posix()) for p in _walk(given)]
        elif given.exists():
            # Named explicitly: kept even if hidden or oddly named; loading reports problems.
            candidates = [(given, given.as_posix())]
        else:
            raise InputError(f"No such file or directory: {given}")
        for path, rel in candidates:
            key = path.resolve()
            if key in seen or key in never or not _wanted(rel, path.name, glob, exclude):
                continue
            seen.add(key)
            found.append(path)
    return found


def _walk(root: Path) -> list[Path]:
    documents = []
    # os.walk does not follow symlinked folders, so a link loop cannot trap us.
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(folder, name)
            if not name.startswith(".") and _is_document(path):
                documents.append(path)
    return sorted(documents, key=lambda p: p.relative_to(root).parts)


def _is_document(path: Path) -> bool:
    if path.suffix.lower() in SUPPORTED_EXTENSIONS:
        return True
    try:
        with path.open("rb") as fh:
            return sniff_kind(fh.read(SNIFF_BYTES)) is not None
    except OSError:  # unreadable and not named like a document: not ours to report
        return False


def _wanted(rel: str, name: str, glob: list[str] | None, exclude: list[str] | None) -> bool:
    def hit(patterns: list[str]) -> bool:
        return any(fnmatch(rel, p) or fnmatch(name, p) for p in patterns)

    return (not glob or hit(glob)) and not (exclude and hit(exclude))
