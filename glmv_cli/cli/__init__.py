"""The `glmv` command: the only place that imports typer and rich."""

from typing import Annotated

import typer

from glmv_cli import __version__
from glmv_cli.cli import ask as ask_cmd
from glmv_cli.cli import cache as cache_cmd
from glmv_cli.cli import eval as eval_cmd
from glmv_cli.cli import extract as extract_cmd
from glmv_cli.cli import light_help
from glmv_cli.cli import mcp as mcp_cmd
from glmv_cli.cli import review as review_cmd
from glmv_cli.cli import schemas as schemas_cmd
from glmv_cli.cli import serve as serve_cmd

app = typer.Typer(
    name="glmv",
    help=(
        "Turn documents (images, PDFs) into validated structured data with GLM-4.6V-Flash, locally.\n\n"
        "Exit codes: 0 all ok; 1 fatal (model cannot load, output not writable); "
        "2 usage error; 3 some documents failed (the rest are written); 130 interrupted."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    try:
        import torch  # only here: --version reports the device
    except ImportError:  # a torch-free install (remote backends only)
        device = "none (install glmv[local] for the local backend)"
    else:
        device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    typer.echo(f"glmv {__version__}\ntorch {ver('torch')}\ntransformers {ver('transformers')}\ndevice {device}")
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show glmv, torch and transformers versions and the device.",
        ),
    ] = False,
) -> None:
    """glmv: documents in, validated structured data out."""


app.command("extract")(extract_cmd.extract)
app.command("ask")(ask_cmd.ask)
app.command("eval")(eval_cmd.eval_)
app.command("review")(review_cmd.review)
app.command("serve")(serve_cmd.serve)
app.command("mcp")(mcp_cmd.mcp)
app.add_typer(schemas_cmd.app, name="schemas")
app.add_typer(cache_cmd.app, name="cache")


def main() -> None:
    light_help.install()  # --help without markdown-it and pygments (glmv_cli/cli/light_help.py)
    app()
