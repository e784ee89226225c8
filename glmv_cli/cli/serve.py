"""`glmv serve`: an OpenAI-compatible chat-completions server over the local model."""

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from glmv_cli import DEFAULT_MODEL
from glmv_cli.cli.common import AllowDirOpt, DeviceOpt, DtypeOpt, ModelOpt, QuantOpt, RevisionOpt, handle_errors
from glmv_cli.errors import UsageError


@handle_errors
def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the server to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[
        list[str] | None, typer.Option("--api-key", help="Accept `Authorization: Bearer KEY` (repeatable).")
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="File of API keys, one per line.")
    ] = None,
    rate_limit: Annotated[
        int, typer.Option(min=0, help="Requests per minute per key (per client address without keys); 0: no limit.")
    ] = 0,
    max_request_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body, in MB (413 above).")] = 20.0,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0.0, help="How long the first waiting request waits for others to batch with.")
    ] = 10.0,
    max_batch: Annotated[int | None, typer.Option(min=1, help="Most requests decoding at once (default: 32).")] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model name in /v1/models and responses (default: the model id's last part).")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not answer repeated greedy requests from the cache.")
    ] = False,
    allow_urls: Annotated[
        bool, typer.Option("--allow-urls/--no-urls", help="Fetch https image URLs (public addresses only).")
    ] = True,
    allow_http: Annotated[bool, typer.Option(help="Also fetch plain http image URLs.")] = False,
    prefix_cache_mb: Annotated[
        int, typer.Option(min=0, help="Memory for kept prompt prefixes (page images) that follow-up questions reuse.")
    ] = 1024,
    mcp: Annotated[
        bool, typer.Option("--mcp/--no-mcp", help="Serve glmv's MCP tools (extract, ask, schemas) at /mcp.")
    ] = True,
    allow_dir: AllowDirOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = "auto",
    revision: RevisionOpt = None,
) -> None:
    """Serve the model with an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health) and MCP (/mcp)."""
    from glmv_cli.cache import ResultCache
    from glmv_cli.engine.factory import create_backend
    from glmv_cli.serve.app import ServeConfig
    from glmv_cli.serve.auth import read_keys
    from glmv_cli.serve.messages import InputPolicy
    from glmv_cli.serve.server import run_server

    try:
        keys = read_keys(api_key or [], api_key_file, os.environ.get("GLMV_API_KEYS"))
    except OSError as exc:
        raise UsageError(f"cannot read --api-key-file: {exc.strerror or exc}") from None
    if not keys:
        sys.stderr.write(
            "glmv serve: warning: no API keys (--api-key, --api-key-file, GLMV_API_KEYS): "
            "anyone who can reach this port can use the model\n"
        )
    name = served_model_name or model.rstrip("/").split("/")[-1]
    started = time.perf_counter()
    backend = create_backend(
        model,
        device=device,
        dtype=dtype,
        quant=quant,
        revision=revision,
        batch_size=max_batch,
        prefix_cache_mb=prefix_cache_mb,
    )
    backend.max_image_pixels()  # loads the model now: /health answers only once it is ready
    sys.stderr.write(f"glmv serve: model loaded in {time.perf_counter() - started:.1f}s\n")
    config = ServeConfig(
        served_model_name=name,
        api_keys=keys,
        rate_limit=rate_limit,
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        batch_wait_s=batch_wait_ms / 1000,
        max_batch=max_batch,
        cache=None if no_cache else ResultCache(),
        inputs=InputPolicy(allow_urls=allow_urls, allow_http=allow_http),
        mcp=mcp,
        allow_dirs=allow_dir or [],
    )
    try:
        run_server(backend, config, host, port)
    finally:
        backend.close()
