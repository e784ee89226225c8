"""`glmv review` in a real browser: headless Chromium (Debian's package) driven by Playwright.

`make test-browser` installs Chromium when it is missing and runs this with GLMV_REQUIRE_BROWSER=1 (a missing
browser then fails instead of skipping). A screenshot of the page is kept in build/test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "glmv-tiny-trained"
INVOICE = ROOT / "samples" / "invoice-acme.pdf"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = os.environ.get("GLMV_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on a machine with no network: no background fetches, no sandbox (root in CI), no GPU.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("trained")]


def _needs_browser():
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (make install)"
    if not Path(CHROMIUM).is_file():
        missing = f"no Chromium at {CHROMIUM} (make test-browser installs Debian's chromium)"
    if missing:
        if os.environ.get("GLMV_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)


def glmv(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glmv_cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def field_index(page, name: str) -> int:
    return int(page.get_attribute(f'.field[data-field="{name}"]', "data-index"))


def go_to(page, name: str) -> None:
    """Move the focus to a field with j and k, as a person would."""
    target = field_index(page, name)
    while (current := int(page.evaluate("document.activeElement.dataset.index"))) != target:
        page.keyboard.press("j" if current < target else "k")
    assert page.evaluate("document.activeElement.dataset.field") == name


def test_review_in_chromium(tmp_path):
    _needs_browser()
    from playwright.sync_api import expect, sync_playwright

    env = {**os.environ, "GLMV_MODEL": str(TRAINED), "GLMV_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    results = tmp_path / "p.jsonl"
    run = glmv(env, "extract", str(INVOICE), "--schema", "invoice", "-o", str(results))
    assert run.returncode == 0, run.stderr
    before = json.loads(results.read_text())

    server = subprocess.Popen(
        [sys.executable, "-m", "glmv_cli", "review", str(results), "--no-open", "--threshold", "0"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        url = None
        for line in server.stderr:  # the line that names the address comes once the socket listens
            if " at http://" in line:
                url = line.rsplit(" at ", 1)[1].strip()
                break
        assert url, f"glmv review did not start (exit {server.poll()})"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector('body[data-loaded="0"]')
            expect(page.locator("#file")).to_have_text(str(INVOICE))
            expect(page.locator('#pages img[alt^="page 1"]')).to_be_visible()
            assert page.evaluate("document.querySelector('#pages img').naturalWidth") > 0

            # A date: an impossible one is refused where it is typed, a real one is saved.
            go_to(page, "invoice_date")
            field = page.locator('.field[data-field="invoice_date"]')
            page.keyboard.press("e")
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.type("2024-13-45")
            expect(field.locator("input")).to_have_attribute("aria-invalid", "true")
            page.keyboard.press("Enter")
            expect(page.locator("#message")).to_contain_text("not saved")
            expect(field.locator(".decision")).to_have_text("")
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.type("2024-02-29")
            expect(field.locator("input")).to_have_attribute("aria-invalid", "false")
            page.keyboard.press("Enter")
            expect(field.locator(".decision")).to_have_text("edited")

            # A line item: edit its description in the table, then save the table.
            go_to(page, "line_items")
            if page.locator('.field[data-field="line_items"] tbody tr').count():
                page.keyboard.press("e")
            else:  # the model found no rows: add one
                page.click('.field[data-field="line_items"] .add-row')
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.type("Widget Pro")
            page.keyboard.press("Enter")
            expect(page.locator('.field[data-field="line_items"] .decision')).to_have_text("edited")

            # Hovering a field with evidence lights its box on the page.
            with_box = page.locator(".box").first
            name = with_box.get_attribute("data-field")
            page.hover(f'.field[data-field="{name}"]')
            expect(page.locator(f'.box.active[data-field="{name}"]').first).to_be_visible()

            # Accept the rest: `a` takes every value at or above the threshold, Enter the others.
            page.keyboard.press("Escape")
            page.locator(".field").first.focus()
            page.keyboard.press("a")
            expect(page.locator("#message")).to_contain_text("accepted")
            for node in page.locator(".field").all():
                if node.locator(".decision").inner_text() == "":
                    go_to(page, node.get_attribute("data-field"))
                    page.keyboard.press("Enter")
                    expect(node.locator(".decision")).not_to_have_text("")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)
            browser.close()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)

    out = tmp_path / "corrected.jsonl"
    run = glmv(env, "review", str(results), "--export", "-o", str(out))
    assert run.returncode == 0, run.stderr
    corrected = json.loads(out.read_text())
    assert corrected["reviewed"] is True and corrected["status"] == "ok"
    assert corrected["data"]["invoice_date"] == "2024-02-29"
    assert corrected["data"]["line_items"][0]["description"] == "Widget Pro"
    assert {e["field"] for e in corrected["review_log"]} == set(before["data"])
    log = {e["field"]: e for e in corrected["review_log"]}
    assert log["invoice_date"]["original"] == before["data"]["invoice_date"]

    again = tmp_path / "again.jsonl"
    run = glmv(env, "extract", str(INVOICE), "--schema", "invoice", "-o", str(again))
    assert run.returncode == 0, run.stderr
    served = json.loads(again.read_text())
    assert served["cached"] and served["reviewed"] and served["data"] == corrected["data"]
