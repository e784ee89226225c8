"""`glmv mcp`: glmv's tools (extract, ask, schemas) for agents, over the Model Context Protocol on stdio."""

from __future__ import annotations

from glmv_cli import DEFAULT_MODEL
from glmv_cli.cli.common import (
    AllowDirOpt,
    ApiKeyOpt,
    BackendOpt,
    BaseUrlOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    QuantOpt,
    RemoteModelOpt,
    RevisionOpt,
    handle_errors,
)
from glmv_cli.errors import ModelLoadError


@handle_errors
def mcp(
    allow_dir: AllowDirOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = "auto",
    revision: RevisionOpt = None,
    backend_name: BackendOpt = "local",
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    remote_model: RemoteModelOpt = None,
) -> None:
    """Serve the MCP tools extract, ask and schemas on stdin/stdout (for Claude Desktop, IDEs, any MCP host).

    The model loads on the first call. Clients name files by path only inside --allow-dir folders,
    or send them as base64.
    """
    try:
        from glmv_cli.mcp_tools import create_mcp
    except ImportError as exc:
        raise ModelLoadError("glmv mcp needs the `mcp` package: pip install 'glmv[serve]'") from exc
    from glmv_cli.api import Glmv

    glmv = Glmv(
        model,
        backend=backend_name,
        device=device,
        dtype=dtype,
        quant=quant,
        revision=revision,
        base_url=base_url,
        api_key=api_key,
        remote_model=remote_model,
    )
    try:
        create_mcp(glmv, allow_dir).run("stdio")
    finally:
        glmv.close()
