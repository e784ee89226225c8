"""The README documents every command and every `glmv extract` flag; .ci/run runs the README's test command."""

from __future__ import annotations

import re

import typer

from glmv_cli.cli import app
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_command_is_documented():
    group = typer.main.get_command(app)
    for name in group.commands:
        assert f"glmv {name}" in README, name


def test_every_extract_ask_and_eval_flag_is_documented():
    group = typer.main.get_command(app)
    for command in ("extract", "ask", "eval"):
        for param in group.commands[command].params:
            # typer may ship its own click: test the kind by name, not by class identity.
            if param.param_type_name == "option" and param.name not in (
                "help",
                "model",
                "device",
                "dtype",
                "quant",
                "revision",
            ):
                assert any(opt in README for opt in param.opts + param.secondary_opts), f"{command} {param.opts}"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"## Run the tests\s+```bash\s+(.+?)\n", README).group(1)
    install_cmd = re.search(r"## Set up.*?```bash\s+(\S+ \S+)", README, re.S).group(1)
    assert test_cmd in ci and install_cmd in ci


def test_every_error_code_is_documented_and_every_raised_code_is_known():
    from glmv_cli.errors import ERROR_CODES

    for code in ERROR_CODES:
        assert f"`{code}`" in README, code
    used = set()
    for path in (ROOT / "glmv_cli").rglob("*.py"):
        used |= set(re.findall(r"""code=["'](\w+)["']""", path.read_text()))
    assert used <= set(ERROR_CODES), used - set(ERROR_CODES)
