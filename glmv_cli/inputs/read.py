"""Read a document's bytes without ever blocking, reading unbounded, or leaving the folders given."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from glmv_cli.errors import InputError

DEFAULT_MAX_FILE_SIZE = 256 * 1024**2
# O_NONBLOCK: opening a FIFO with no writer, or a tty, must not wait. O_NOCTTY: never adopt a terminal.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1024**2


def read_file(path: str | Path, *, max_bytes: int, roots: Sequence[Path] | None = None) -> bytes:
    """The bytes of a regular file of at most max_bytes, inside `roots` when given; else an InputError."""
    size = _stat_regular(path, roots).st_size
    if size > max_bytes:
        raise too_large(size, max_bytes)
    fd = _open_regular(path)
    try:
        data = _read_at_most(fd, max_bytes + 1, size)  # +1: a file that grew past the limit shows it
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise _too_large(f"file grew past {_human(max_bytes)} while being read", max_bytes)
    if not data:
        raise InputError("empty file", code="file_empty")
    return data


def read_head(path: str | Path, size: int) -> bytes:
    """The first `size` bytes of a regular file (for sniffing); InputError for anything else."""
    _stat_regular(path, None)
    fd = _open_regular(path)
    try:
        return _read_at_most(fd, size, size)
    finally:
        os.close(fd)


def roots_of(paths: Sequence[str | Path]) -> list[Path]:
    """The fully resolved form of each path a user named, for read_file's `roots`."""
    return [Path(os.path.realpath(p)) for p in paths]


def inside(real: Path, roots: Sequence[Path]) -> bool:
    """Whether a resolved path is one of `roots` or in one of their folders (all resolved, as roots_of gives).

    Hash lookups of the path's folders: is_relative_to against every root cost 1,024 pathlib comparisons
    for 32 files named one by one (a glob's files).
    """
    return not {real, *real.parents}.isdisjoint(roots)


def _stat_regular(path: str | Path, roots: Sequence[Path] | None) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    # Checked before the type, so a link out to /dev/zero is named for where it leads, and never opened.
    if roots is not None:
        real = Path(os.path.realpath(path))  # realpath, unlike Path.resolve, never raises on loops
        if not inside(real, roots):
            raise InputError(
                f"symlink leads outside the folders given, to {real}",
                hint="pass --follow-symlinks to read it",
                code="symlink_outside",
            )
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    return st


def _open_regular(path: str | Path) -> int:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped for something else since the stat
            raise _not_regular(mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_at_most(fd: int, limit: int, expected: int) -> bytes:
    # One read of the expected size usually gets the whole file, with no copy to join.
    chunks: list[bytes] = []
    total, want = 0, min(limit, expected + 1)
    try:
        while total < limit:
            chunk = os.read(fd, min(limit - total, want))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            want = _CHUNK
    except BlockingIOError:  # a regular file in name only (some /proc and FUSE files)
        raise InputError("reading the file would block", code="read_failed") from None
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror or exc}", code="file_unreadable") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _os_error(path: str | Path, exc: OSError) -> InputError:
    if exc.errno == errno.ELOOP:
        return InputError("symlink loop, not a regular file", code="not_a_regular_file")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
        return InputError("dangling symlink (its target does not exist)", code="not_a_regular_file")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return InputError(f"No such file or directory: {path}", code="file_unreadable")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputError("permission denied", code="file_unreadable")
    return InputError(f"cannot open the file: {exc.strerror or exc}", code="file_unreadable")


def _not_regular(mode: int) -> InputError:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return InputError(f"{kind}, not a regular file", code="not_a_regular_file")


def too_large(size: int, max_bytes: int) -> InputError:
    """The file_too_large error for `size` bytes, e.g. "file is 300 MB (limit 256 MB)"."""
    return _too_large(f"file is {_human(size)}", max_bytes)


def _too_large(what: str, max_bytes: int) -> InputError:
    return InputError(f"{what} (limit {_human(max_bytes)})", hint="raise --max-file-size", code="file_too_large")


def _human(size: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"
