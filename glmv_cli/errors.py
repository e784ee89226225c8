"""One error family for everything glmv reports to a user, plus the exit codes."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes, documented in the README and `glmv --help`."""

    OK = 0
    FATAL = 1  # model cannot load, output not writable, internal error
    USAGE = 2  # unknown flag or schema, unreadable schema file
    PARTIAL = 3  # some documents failed; the rest were written
    INTERRUPTED = 130


class GlmvError(Exception):
    """An error with a one-line message for the user and an optional hint."""

    exit_status = ExitStatus.FATAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} ({' '.join(self.hint.split())})" if self.hint else text


class UsageError(GlmvError):
    """Bad flags, unknown schema, unreadable schema file."""

    exit_status = ExitStatus.USAGE


class InputError(GlmvError):
    """A document that cannot be read, decoded or rendered (per-file, never fatal to a batch)."""


class ModelLoadError(GlmvError):
    """The model or its processor cannot be found or loaded."""


class EngineError(GlmvError):
    """Generation failed for a request."""


class OutputError(GlmvError):
    """An output file or folder cannot be written."""
