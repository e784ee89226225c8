"""`glmv --help` stays light: what it imports (no timings here; bench/startup.py times it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Run the console script's entry point (glmv_cli.cli:main), then report what was imported.
ENTRY = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
    "sys.argv = ['glmv', *sys.argv[1:]]\n"
    "{before}\n"
    "from glmv_cli.cli import main\n"
    "main()\n"
)

# Nothing --help needs: the model stack, the data stack, glmv's own pipeline, and what typer's help
# renderer would import for markdown help and rich tracebacks (glmv uses neither).
HEAVY = (
    "torch",
    "transformers",
    "pydantic",
    "numpy",
    "PIL",
    "httpx",
    "llguidance",
    "platformdirs",
    "urllib3",
    "pypdfium2",
    "markdown_it",
    "pygments",
    "attr",
    "rich.markdown",
    "rich.traceback",
    "rich.pretty",
    "rich.syntax",
    "rich.progress",
    "glmv_cli.cache",
    "glmv_cli.records",
    "glmv_cli.engine",
    "glmv_cli.extraction",
    "glmv_cli.inputs",
    "glmv_cli.outputs",
    "glmv_cli.evaluation",
    "glmv_cli.serve",
)


def run_entry(*args: str, before: str = "") -> tuple[int, str, set[str]]:
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY.format(before=before), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    err, _, modules = proc.stderr.rpartition("\nMODULES ")
    return proc.returncode, proc.stdout + err, set(modules.split())


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (nothing imported yet); it must exit 0."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_root_help_imports_nothing_heavy():
    rc, out, modules = run_entry("--help")
    assert rc == 0 and "Commands" in out and "extract" in out
    loaded = sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert loaded == []


def test_subcommand_help_does_not_load_the_model_stack():
    rc, out, modules = run_entry("extract", "--help")
    assert rc == 0 and "--schema" in out
    # typer itself validates parameters with pydantic; the rest stays out
    heavy = set(HEAVY) - {"pydantic"}
    assert sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)) == []


@pytest.mark.parametrize("args", [["--help"], ["extract", "--help"], ["cache"], ["extract", "x", "--bogus"]])
def test_help_and_usage_errors_read_as_with_typers_full_renderer(args):
    """The deferred imports change nothing that is printed: same output as typer's renderer imported whole."""
    light = run_entry(*args)
    full = run_entry(*args, before="import typer.rich_utils")
    assert light[0] == full[0]
    assert light[1] == full[1]
    assert "rich.markdown" in full[2] and "rich.markdown" not in light[2]


def test_stand_ins_are_the_real_classes_when_used():
    code = (
        "from glmv_cli.cli import light_help\n"
        "light_help.install()\n"
        "import typer.rich_utils as ru\n"
        "import sys\n"
        "assert 'rich.markdown' not in sys.modules and 'rich.traceback' not in sys.modules\n"
        "import rich.markdown, rich.traceback\n"
        "assert type(rich.markdown.Markdown) is type, 'a later import gets the real module'\n"
        "md = ru.Markdown('**x**')\n"
        "assert type(md) is rich.markdown.Markdown and isinstance(md, ru.Markdown)\n"
        "assert ru.Traceback.from_exception is not None\n"
        "print('ok')\n"
    )
    assert run_python(code).stdout.strip() == "ok"


def test_markdown_help_still_renders_with_the_stand_in():
    """A Typer app in markdown mode (not glmv's) renders through the stand-in, importing the real module."""
    code = (
        "import sys, typer\n"
        "from glmv_cli.cli import light_help\n"
        "light_help.install()\n"
        "app = typer.Typer(rich_markup_mode='markdown', add_completion=False)\n"
        "@app.command()\n"
        "def go(x: int = 1):\n"
        "    '''Some **bold** words.'''\n"
        "sys.argv = ['prog', '--help']\n"
        "try:\n"
        "    app()\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'rich.markdown' in sys.modules\n"
    )
    assert "Some bold words." in run_python(code).stdout
