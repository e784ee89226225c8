"""`glmv ask` end to end on the tiny checkpoint, and the CLI's error contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from glmv_cli.cli import app
from tests.conftest import SAMPLES, QuietHTTPServer

runner = CliRunner()


def glmv(*args: str, env: dict | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the real command in a subprocess (real stdout/stderr, exit code, imports)."""
    return subprocess.run(
        [sys.executable, "-m", "glmv_cli", *args],
        capture_output=True,
        input=stdin,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_ask_image_streams(model_env):
    result = runner.invoke(
        app, ["ask", str(SAMPLES / "invoice-acme.png"), "What is the total?", "--max-tokens", "8", "--stats"]
    )
    assert result.exit_code == 0, result.output
    assert "time to first token" in result.stderr and "tokens/s" in result.stderr
    assert result.stdout.endswith("\n")


def test_ask_pdf_page_json(model_env):
    result = runner.invoke(
        app, ["ask", str(SAMPLES / "report-3pages.pdf"), "Title?", "--page", "2", "--json", "--max-tokens", "5"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["timings"]["prompt_tokens"] > 0 and payload["timings"]["output_tokens"] == 5
    assert payload["finish_reason"] == "length"


def test_ask_two_images_and_stdin(model_env):
    png = (SAMPLES / "screenshot-login.png").read_bytes()
    result = runner.invoke(
        app, ["ask", "-", str(SAMPLES / "receipt-cafe.jpg"), "Same shop?", "--json", "--max-tokens", "4"], input=png
    )
    assert result.exit_code == 0, result.output
    one = runner.invoke(app, ["ask", "-", "Same shop?", "--json", "--max-tokens", "4"], input=png)
    # Two images make a longer prompt than one.
    assert json.loads(result.stdout)["timings"]["prompt_tokens"] > json.loads(one.stdout)["timings"]["prompt_tokens"]


def test_ask_think_flag(model_env):
    result = runner.invoke(
        app, ["ask", str(SAMPLES / "invoice-acme.png"), "Total?", "--think", "--json", "--max-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    assert "thinking" in json.loads(result.stdout)


def test_missing_file_is_one_line(model_env):
    proc = glmv("ask", "/nonexistent.png", "x")
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "No such file" in lines[0] and "Traceback" not in lines[0]


def test_unreadable_image_is_one_line(model_env, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    proc = glmv("ask", str(bad), "x")
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glmv: error:")


def test_missing_model_is_one_line(tmp_path):
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(img)
    for model in ("/nonexistent", "nobody-here/no-such-model"):  # in-process: the same handler and stderr
        result = runner.invoke(app, ["ask", str(img), "x", "--model", model])
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "model" in lines[0] and "Traceback" not in result.stderr


def test_version():
    proc = glmv("--version")
    out = proc.stdout.decode()
    assert proc.returncode == 0 and "glmv" in out and "torch" in out and "transformers" in out and "device" in out


@pytest.mark.parametrize("args", [["ask", "only-one-arg"], ["extract", "x", "--no-such-flag"]])
def test_usage_errors_exit_2(args):
    assert runner.invoke(app, args).exit_code == 2


def test_python_m_entry_point():
    proc = glmv("--help")
    assert proc.returncode == 0 and b"extract" in proc.stdout


def test_url_needs_allow_url():
    result = runner.invoke(app, ["ask", "https://img.test/a.png", "What?"])
    assert result.exit_code == 2 and "--allow-url" in result.stderr


def test_plain_http_url_needs_allow_http():
    result = runner.invoke(app, ["ask", "http://img.test/a.png", "What?", "--allow-url"])
    assert result.exit_code == 2 and "--allow-http" in result.stderr


def test_loopback_url_is_refused_in_one_line():
    result = runner.invoke(app, ["ask", "http://127.0.0.1:9/a.png", "What?", "--allow-url", "--allow-http"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a public address" in lines[0] and "Traceback" not in result.output


def test_ask_about_a_url(model_env, monkeypatch):
    """End to end through a server on 127.0.0.1, which only a test-only policy lets through."""
    import functools
    import http.server
    import ipaddress
    import threading

    from glmv_cli.inputs import urls

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SAMPLES))
    handler.log_message = lambda *args: None
    server = QuietHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    fetch = functools.partial(
        urls.fetch_url,
        resolve=lambda host, port: ["127.0.0.1"] if host == "img.test" else [],
        policy=lambda ip: ip == ipaddress.ip_address("127.0.0.1"),
    )
    monkeypatch.setattr(urls, "fetch_url", fetch)
    try:
        link = f"http://img.test:{server.server_port}/invoice-acme.png"
        result = runner.invoke(
            app, ["ask", link, "Total?", "--allow-url", "--allow-http", "--json", "--max-tokens", "3"]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["files"] == [link] and payload["timings"]["prompt_tokens"] > 0


def test_ask_gives_a_pdf_its_text_layer(model_env, monkeypatch):
    from glmv_cli.engine.local import LocalBackend

    prompts = []
    real = LocalBackend.stream

    def spy(self, request, on_text):
        prompts.append(request.prompt)
        return real(self, request, on_text)

    monkeypatch.setattr(LocalBackend, "stream", spy)
    pdf = str(SAMPLES / "invoice-acme.pdf")
    for flag in ("auto", "off"):
        result = runner.invoke(app, ["ask", pdf, "Number?", "--max-tokens", "2", "--text-hint", flag])
        assert result.exit_code == 0, result.output
    with_layer, without = prompts
    assert "INV-2024-0042" in with_layer and with_layer.endswith(
        "\n>>>\nNumber?"
    )  # the page's own text, then the question
    assert without == "Number?"
    assert runner.invoke(app, ["ask", pdf, "Q?", "--text-hint", "maybe"]).exit_code == 2
