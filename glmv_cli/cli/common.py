"""Shared CLI pieces: model options, the stderr console, and turning errors into exit codes."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from glmv_cli.errors import ExitStatus, GlmvError

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", envvar="GLMV_MODEL", help="Hub id or local folder of a GLM-4.6V checkpoint.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="auto (bf16 on GPUs of compute capability 8.0+, else fp16; fp32 on CPU), bfloat16, float16, float32."
    ),
]
QuantOpt = Annotated[str, typer.Option(help="auto, none, 8bit, 4bit. auto: 4bit on GPUs under 40 GB, none otherwise.")]
RevisionOpt = Annotated[str | None, typer.Option(help="Hub revision (branch, tag or commit).")]
ThinkOpt = Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason before answering.")]
TEXT_HINT_MODES = ("auto", "on", "off")
TextHintOpt = Annotated[str, typer.Option(help="Give the model a PDF's text layer: auto (when it has one), on, off.")]
DpiOpt = Annotated[int, typer.Option(min=36, max=600, help="PDF render resolution.")]
PasswordOpt = Annotated[str | None, typer.Option(envvar="GLMV_PDF_PASSWORD", help="Password for encrypted PDFs.")]

# The remote backend: an OpenAI-compatible server (vLLM, SGLang, `glmv serve`) instead of a local model.
BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        envvar="GLMV_BACKEND",
        help="local (transformers on this machine), openai (an OpenAI-compatible server at --base-url), or vllm "
        "(glmv starts vllm serve, runs the job through it, and stops it).",
    ),
]
BaseUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--base-url",
        envvar="GLMV_BASE_URL",
        help="With --backend openai: a server's API root, e.g. http://host:8000/v1 (repeatable; env comma-separated).",
    ),
]
ApiKeyOpt = Annotated[
    str | None, typer.Option("--api-key", envvar="GLMV_API_KEY", help="With --backend openai: the bearer token.")
]
RemoteModelOpt = Annotated[
    str | None,
    typer.Option("--remote-model", help="With --backend openai: the served model name (default: the first listed)."),
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option(min=1, help="With --backend openai: requests in flight (default 32, enough to keep vLLM busy)."),
]
RequestTimeoutOpt = Annotated[
    float,
    typer.Option(min=0.1, help="With --backend openai: seconds to wait for an answer before retrying elsewhere."),
]


def debug_enabled() -> bool:
    return os.environ.get("GLMV_DEBUG", "") not in ("", "0")


def fail(message: str, status: int = ExitStatus.FATAL) -> None:
    """Print one line to stderr and exit."""
    sys.stderr.write(f"glmv: error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(int(status))


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a GlmvError, Ctrl-C or a crash into one stderr line and an honest exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GlmvError as exc:
            if debug_enabled():
                traceback.print_exc()
            fail(exc.one_line(), exc.exit_status)
        except KeyboardInterrupt:
            fail("interrupted", ExitStatus.INTERRUPTED)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(int(ExitStatus.FATAL)) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug_enabled():
                traceback.print_exc()
            text = " ".join(str(exc).split())
            fail(f"internal error: {type(exc).__name__}: {text} (set GLMV_DEBUG=1 for the traceback)")

    return wrapper


AllowDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--allow-dir",
        exists=True,
        file_okay=False,
        help="A folder whose files MCP clients may name by path (repeatable); others send files as base64.",
    ),
]

VllmCommandOpt = Annotated[
    str | None,
    typer.Option(
        "--vllm-command", envvar="GLMV_VLLM_COMMAND", help="With --backend vllm: the vllm executable (its environment)."
    ),
]
GpuMemoryOpt = Annotated[
    float | None,
    typer.Option(min=0.05, max=1.0, help="With --backend vllm: the GPU memory share vLLM may take (its default: 0.9)."),
]
