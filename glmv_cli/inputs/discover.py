"""Turn the paths a user gives into the list of documents to process."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fnmatch import fnmatch
from pathlib import Path

from glmv_cli.errors import InputError
from glmv_cli.inputs.read import read_head
from glmv_cli.inputs.sniff import SNIFF_BYTES, SUPPORTED_EXTENSIONS, sniff_kind


def discover(
    paths: Sequence[str | Path],
    glob: list[str] | None = None,
    exclude: list[str] | None = None,
    skip: Iterable[str | Path] = frozenset(),
    follow_symlinks: bool = False,
    warnings: list[str] | None = None,
) -> list[Path]:
    """Expand files and folders into documents: argument order, each folder sorted, no repeats.

    Never opens anything but regular files, so loops, dangling links, FIFOs and devices cannot
    hang or crash it. Entries named like documents are kept whatever they are: reading them
    (read_file) turns each into a failed record with a reason, rather than a silent skip.
    A folder that cannot be listed is skipped with a line appended to `warnings`.
    """
    # os.path.realpath, unlike Path.resolve, does not raise on symlink loops.
    never = {os.path.realpath(p) for p in skip}
    seen: set[str] = set()
    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            walked = _walk(given, follow_symlinks, warnings if warnings is not None else [])
            candidates = [(p, p.relative_to(given).as_posix()) for p in walked]
        elif os.path.lexists(given):
            # Named explicitly: kept even if hidden, oddly named or a broken link; reading reports problems.
            candidates = [(given, given.as_posix())]
        else:
            raise InputError(f"No such file or directory: {given}", code="file_unreadable")
        for path, rel in candidates:
            key = os.path.realpath(path)
            if key in seen or key in never or not _wanted(rel, path.name, glob, exclude):
                continue
            seen.add(key)
            found.append(path)
    return found


def _walk(root: Path, follow_symlinks: bool, warnings: list[str]) -> list[Path]:
    documents = []
    visited: set[str] = set()

    def unlisted(exc: OSError) -> None:
        warnings.append(f"cannot list folder {exc.filename}: {exc.strerror or exc}; skipped")

    # Without follow_symlinks os.walk does not descend symlinked folders; with it, a folder
    # already walked (by its real path) is not walked again, so a link loop ends.
    for folder, dirnames, filenames in os.walk(root, onerror=unlisted, followlinks=follow_symlinks):
        real = os.path.realpath(folder)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # same walk, same names, every run
        for name in filenames:
            path = Path(folder, name)
            if not name.startswith(".") and _is_document(path):
                documents.append(path)
    return sorted(documents, key=lambda p: p.relative_to(root).parts)


def _is_document(path: Path) -> bool:
    if path.suffix.lower() in SUPPORTED_EXTENSIONS:
        return True
    try:
        return sniff_kind(read_head(path, SNIFF_BYTES)) is not None
    except InputError:  # not a regular file, or unreadable, and not named like a document: not ours
        return False
    except Exception:  # noqa: BLE001 - a sniffing bug: keep the file, so reading reports it as a record
        return True


def _wanted(rel: str, name: str, glob: list[str] | None, exclude: list[str] | None) -> bool:
    def hit(patterns: list[str]) -> bool:
        return any(fnmatch(rel, p) or fnmatch(name, p) for p in patterns)

    return (not glob or hit(glob)) and not (exclude and hit(exclude))
