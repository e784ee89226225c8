"""`glmv schemas`: list the schemas --schema can name, or print one as JSON Schema."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from glmv_cli.cli.common import handle_errors

app = typer.Typer(help="List the available schemas, or show one as JSON Schema.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
@handle_errors
def list_all(ctx: typer.Context) -> None:
    """List built-in schemas and your ./schemas/*.py, with their fields."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from glmv_cli.extraction.schemas import list_schemas

    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("schema")
    table.add_column("from")
    table.add_column("fields")
    for schema in list_schemas():
        fields = ", ".join(name for name, _, _ in schema.fields() if "." not in name)
        table.add_row(schema.name, schema.source, fields)
    Console().print(table)


@app.command("show")
@handle_errors
def show(
    name: Annotated[str, typer.Argument(help="Schema name, file.py[:Model], file.json or inline fields.")],
    fields: Annotated[bool, typer.Option("--fields", help="Field table instead of JSON Schema.")] = False,
) -> None:
    """Print a schema as JSON Schema (what the model is constrained to)."""
    from glmv_cli.extraction.schemas import resolve_schema

    schema = resolve_schema(name)
    if fields:
        for field, type_text, desc in schema.fields():
            sys.stdout.write(f"{field}\t{type_text}\t{desc}\n")
        return
    sys.stdout.write(json.dumps(schema.json_schema(), indent=2, ensure_ascii=False) + "\n")
