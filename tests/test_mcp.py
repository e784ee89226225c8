"""glmv's MCP tools, driven by the official SDK's own client over both transports: `glmv mcp` on stdio,
and `glmv serve` at /mcp behind its keys. The trained checkpoint answers, so values are checked."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import ROOT, glmv_serve

pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402

pytestmark = pytest.mark.xdist_group("trained-model")
TRAINED = ROOT / "models" / "glmv-tiny-trained"
KEY = "sk-test-mcp"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    """An allowed folder with two held-out text-layer invoices, and a secret file beside it."""
    sys.path.insert(0, str(ROOT / "tools"))
    import synth_docs

    root = tmp_path_factory.mktemp("mcp")
    synth_docs.write_folder(root / "allowed", 20261207, 2, ("invoice",), forms=("pdf",))
    (root / "secret.png").write_bytes((ROOT / "samples" / "invoice-acme.png").read_bytes())
    (root / "allowed" / "link.png").symlink_to(root / "secret.png")
    return root


async def _exercise(session: ClientSession, docs: Path) -> None:
    await session.initialize()
    assert {t.name for t in (await session.list_tools()).tools} == {"extract", "ask", "schemas"}

    schemas = await session.call_tool("schemas", {})
    assert "invoice" in {s["name"] for s in _result(schemas)}

    pdf = sorted((docs / "allowed").glob("*.pdf"))[0]
    truth = json.loads(pdf.with_suffix(".truth.json").read_text())
    spec = {"schema": "invoice_number, date, total float", "paths": [str(pdf)], "text_hint": "on"}
    (record,) = _result(await session.call_tool("extract", spec))
    assert record["status"] == "ok" and record["file"] == str(pdf.resolve())
    assert record["data"]["invoice_number"] == truth["invoice_number"]

    sent = {"name": "sent.pdf", "data": base64.b64encode(pdf.read_bytes()).decode()}
    (record,) = _result(await session.call_tool("extract", {"schema": "invoice", "files": [sent], "text_hint": "on"}))
    assert record["file"] == "sent.pdf" and record["data"]["total"] == truth["total"]

    answer = _result(await session.call_tool("ask", {"path": str(pdf), "question": "What is the invoice number?"}))
    assert answer["finish_reason"] == "stop" and answer["answer"].strip()  # ask is right about half the time

    # The allowed folder, whole: its link out is a failed record, never read; the invoices are read.
    folder = _result(
        await session.call_tool("extract", {"schema": "invoice_number, total float", "paths": [str(docs / "allowed")]})
    )
    by_name = {Path(r["file"]).name: r for r in folder}
    assert by_name["link.png"]["error_code"] == "symlink_outside" and by_name["link.png"]["data"] is None
    assert by_name[pdf.name]["status"] == "ok"

    for outside in (docs / "secret.png", docs / "allowed" / "link.png", docs / "allowed" / ".." / "secret.png"):
        refused = await session.call_tool("extract", {"schema": "invoice", "paths": [str(outside)]})
        assert refused.isError and "outside the folders" in refused.content[0].text
    refused = await session.call_tool("extract", {"schema": "evil.py", "paths": [str(pdf)]})
    assert refused.isError and "not a file" in refused.content[0].text


def _result(result) -> object:
    assert not result.isError, result.content
    if result.structuredContent is not None:
        return result.structuredContent.get("result", result.structuredContent)
    return json.loads(result.content[0].text)


def test_glmv_mcp_over_stdio(docs):
    env = {**os.environ, "GLMV_CACHE_DIR": str(docs / "cache"), "HF_HUB_OFFLINE": "1"}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "glmv_cli", "mcp", "--allow-dir", str(docs / "allowed"), "-m", str(TRAINED)],
        env=env,
    )

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await _exercise(session, docs)

    anyio.run(main)


def test_glmv_serve_mounts_mcp_behind_its_keys(docs, tmp_path):
    import httpx

    args = ("--api-key", KEY, "--allow-dir", str(docs / "allowed"))
    with glmv_serve(TRAINED, tmp_path, *args) as (url, _log):
        assert httpx.post(f"{url}/mcp", json={}).status_code == 401

        async def main() -> None:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with (
                streamablehttp_client(f"{url}/mcp", headers=headers) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await _exercise(session, docs)

        anyio.run(main)
