"""One error family for everything glmv reports to a user, the exit codes, and per-document error codes."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes, documented in the README and `glmv --help`."""

    OK = 0
    FATAL = 1  # model cannot load, output not writable, internal error
    USAGE = 2  # unknown flag or schema, unreadable schema file
    PARTIAL = 3  # some documents failed; the rest were written
    INTERRUPTED = 130


# Stable `error_code` values of failed records, grouped by the stage that sets them.
# Documented in the README; tests check that every code raised in the package is listed here.
ERROR_CODES: dict[str, str] = {
    # discover / read
    "not_a_regular_file": "a FIFO, socket, device, folder, symlink loop or dangling link",
    "symlink_outside": "a symlink leading out of the folders given (follow with --follow-symlinks)",
    "file_unreadable": "the file cannot be opened or read (permissions, I/O error)",
    "file_empty": "the file has no bytes",
    "file_too_large": "the file is larger than --max-file-size",
    "read_timeout": "reading the file did not finish in time",
    "read_failed": "reading failed for another reason",
    "url_refused": "the URL is not allowed: scheme, credentials, or a non-public address (see --allow-http)",
    # sniff / decode / render
    "unsupported_type": "not an image or PDF (by content, whatever the name)",
    "image_corrupt": "the image cannot be decoded",
    "file_truncated": "the image or PDF ends early",
    "image_too_large": "the image has more pixels than the decoding cap",
    "pdf_corrupt": "the PDF cannot be parsed",
    "pdf_encrypted": "the PDF needs a password (or the password is wrong)",
    "pdf_no_pages": "the PDF has no pages",
    "page_out_of_range": "--pages selects no page of this document",
    "render_crashed": "the PDF renderer crashed on this document",
    "render_timeout": "rendering a page took longer than --render-timeout",
    "render_failed": "rendering failed for another reason",
    "load_failed": "loading failed for another reason",
    # model
    "preprocess_failed": "the model's processor rejected the pages",
    "generation_failed": "the model failed while answering",
    "invalid_output": "the answer does not validate against the schema",
    "remote_failed": "--backend openai: the server failed this request after retries and failover",
    "remote_unavailable": "--backend openai: no --base-url server answered, or none serves the model (the run stops)",
    # after the model
    "cache_failed": "the result cache could not be read or written",
    "write_failed": "the record could not be written to the output",
    "internal_error": "an unexpected error in glmv (a bug: please report it)",
}


class GlmvError(Exception):
    """An error with a one-line message for the user, an optional hint and a stable code."""

    exit_status = ExitStatus.FATAL
    code = "internal_error"

    def __init__(self, message: str, hint: str | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            if code not in ERROR_CODES:
                raise ValueError(f"unknown error code {code!r}")
            self.code = code

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} ({' '.join(self.hint.split())})" if self.hint else text


class UsageError(GlmvError):
    """Bad flags, unknown schema, unreadable schema file."""

    exit_status = ExitStatus.USAGE


class InputError(GlmvError):
    """A document that cannot be read, decoded or rendered (per-file, never fatal to a batch)."""

    code = "load_failed"


class ModelLoadError(GlmvError):
    """The model or its processor cannot be found or loaded."""


class EngineError(GlmvError):
    """Generation failed for a request."""

    code = "generation_failed"


class OutputError(GlmvError):
    """An output file or folder cannot be written."""

    code = "write_failed"
