"""glmv as Model Context Protocol tools: `extract`, `ask` and `schemas`, for agents (Claude Desktop, IDEs).

Built on the official `mcp` SDK (FastMCP, major version 1). `glmv mcp` serves them over stdio;
`glmv serve` mounts the same server over streamable HTTP at /mcp, behind its API keys.

A client names files in two ways: paths, which must resolve inside a folder the operator allowed
at start-up (--allow-dir; symlinks resolved first, so a link cannot point out), or the bytes
themselves in base64. Schemas are built-in names, inline specs or JSON Schema objects: never a
Python file, which would run code on the server.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

import anyio
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError

from glmv_cli.api import Glmv
from glmv_cli.errors import GlmvError
from glmv_cli.inputs.read import inside, roots_of

MAX_FILE_BYTES = 20 * 1024 * 1024  # per base64 file, as glmv serve takes images
INSTRUCTIONS = (
    "glmv reads documents (invoices, receipts, screenshots, PDFs) with the GLM-4.6V-Flash vision model. "
    "`extract` returns one validated JSON record per document for a schema (see `schemas`); `ask` answers a "
    "question about a document. Give files as paths inside the server's allowed folders or as base64."
)


class Access:
    """Which paths a client may name: those inside the allowed folders, after resolving links."""

    def __init__(self, allow_dirs: list[Path] | None):
        self.roots = roots_of(allow_dirs or [])

    def check(self, path: str) -> Path:
        real = Path(os.path.realpath(path))
        if not inside(real, self.roots):
            where = ", ".join(str(r) for r in self.roots) or "none: send files as base64"
            raise ToolError(f"{path}: outside the folders this server may read ({where})")
        return real


def create_mcp(glmv: Glmv, allow_dirs: list[Path] | None = None, *, http: bool = False) -> FastMCP:
    """The MCP server over one loaded model. With `http`, for glmv serve: stateless JSON responses at /mcp."""
    access = Access(allow_dirs)
    kwargs: dict[str, Any] = {"instructions": INSTRUCTIONS}
    if http:
        from mcp.server.transport_security import TransportSecuritySettings

        # glmv serve's keys guard the endpoint; the Host check would refuse a server bound to a LAN address.
        kwargs |= {
            "streamable_http_path": "/mcp",
            "stateless_http": True,
            "json_response": True,
            "transport_security": TransportSecuritySettings(enable_dns_rebinding_protection=False),
        }
    server = FastMCP("glmv", **kwargs)

    @server.tool()
    async def extract(
        schema: str | dict[str, Any],
        paths: list[str] | None = None,
        files: list[dict[str, str]] | None = None,
        text_hint: str = "auto",
        max_pages: int = 8,
    ) -> list[dict[str, Any]]:
        """Extract one validated JSON record per document.

        schema: a built-in schema name (invoice, receipt, screenshot, document; see the `schemas` tool),
        inline fields such as "vendor, date, total float", or a JSON Schema object.
        paths: files or folders on the server (inside its allowed folders).
        files: documents sent whole, as {"name": "x.pdf", "data": "<base64>"}.
        Each record has file, status (ok, review, failed), data, confidence and, if failed, error and error_code.
        """
        resolved = _schema(schema)
        inputs: list[Any] = [access.check(p) for p in paths or []]
        names = [str(p) for p in inputs]
        for n, item in enumerate(files or []):
            inputs.append(_decoded(item, n))
            names.append(str(item.get("name") or f"file {n + 1}"))
        if not inputs:
            raise ToolError("give paths or files")

        def run() -> list[dict[str, Any]]:
            # The API confines reads to the paths given: a link in an allowed folder that leads out of it
            # is a failed record, never read.
            records = glmv.extract(inputs, resolved, text_hint=text_hint, max_pages=max_pages)
            out = []
            for record in records:
                if record.file.startswith("<input "):  # the sent file's own name
                    record = record.model_copy(update={"file": names[int(record.file[7:-1]) - 1]})
                out.append(record.to_json_dict())
            return out

        return await _blocking(run)

    @server.tool()
    async def ask(
        question: str, path: str | None = None, file: dict[str, str] | None = None, page: int = 1
    ) -> dict[str, Any]:
        """Answer a question about one document (an image, or a PDF's `page`): a path inside the server's
        allowed folders, or a file sent as {"name": "x.png", "data": "<base64>"}."""
        if (path is None) == (file is None):
            raise ToolError("give exactly one of path or file")
        source: Any = access.check(path) if path is not None else _decoded(file or {}, 0)

        def run() -> dict[str, Any]:
            answer = glmv.ask(source, question, page=page)
            return {"answer": answer.text, "finish_reason": answer.finish_reason}

        return await _blocking(run)

    @server.tool()
    def schemas() -> list[dict[str, Any]]:
        """The built-in schemas: each name with its top-level fields (name, type, description)."""
        from glmv_cli.extraction.schemas import builtin_schemas

        return [
            {
                "name": s.name,
                "fields": [{"name": f, "type": t, "description": d} for f, t, d in s.fields() if "." not in f],
            }
            for s in builtin_schemas()
        ]

    return server


def _schema(spec: str | dict[str, Any]) -> Any:
    """A schema a client may name: never a file path (a .py file runs code)."""
    from glmv_cli.extraction.schemas import as_schema

    if isinstance(spec, str) and (spec.strip().endswith((".py", ".json")) or ".py:" in spec or "/" in spec):
        raise ToolError("schema: a built-in name, inline fields or a JSON Schema object, not a file")
    try:
        return as_schema(spec)
    except GlmvError as exc:
        raise ToolError(f"schema: {exc.one_line()}") from None


def _decoded(item: dict[str, str], n: int) -> bytes:
    data = item.get("data") if isinstance(item, dict) else None
    if not isinstance(data, str):
        raise ToolError(f"files[{n}]: needs data (base64)")
    if len(data) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise ToolError(f"files[{n}]: over {MAX_FILE_BYTES // 2**20} MB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(f"files[{n}]: invalid base64") from None


async def _blocking(fn: Any) -> Any:
    """Model work off the event loop; glmv's errors become the tool's error message."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except GlmvError as exc:
        raise ToolError(exc.one_line()) from None
