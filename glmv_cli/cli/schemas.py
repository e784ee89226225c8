"""`glmv schemas`: list the schemas --schema can name, or print one as JSON Schema."""

import sys
from typing import Annotated

import typer

from glmv_cli.cli.common import handle_errors

app = typer.Typer(help="List the available schemas, or show one as JSON Schema.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
@handle_errors
def list_all(ctx: typer.Context) -> None:
    """List your ./schemas/*.py (not run) and the built-in schemas with their fields."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    from glmv_cli.extraction.schemas import DEFAULT_SCHEMA, builtin_schemas, local_schema_files

    local = local_schema_files()
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("schema")
    table.add_column("from")
    table.add_column("fields")
    for path in local:  # listing never executes them: only naming one does
        table.add_row(path.stem, f"./schemas/{path.name}", f"not loaded: `glmv schemas show {path.stem}` runs it")
    for schema in builtin_schemas():
        source = "built-in, the default" if schema.name == DEFAULT_SCHEMA else "built-in"
        if any(path.stem == schema.name for path in local):
            source += f" (--schema {schema.name} picks ./schemas/{schema.name}.py)"
        table.add_row(schema.name, source, ", ".join(name for name, _, _ in schema.fields() if "." not in name))
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
    sys.stderr.write(f"schema: {schema.describe()}\n")
    if fields:
        for field, type_text, desc in schema.fields():
            sys.stdout.write(f"{field}\t{type_text}\t{desc}\n")
        return
    import json

    sys.stdout.write(json.dumps(schema.json_schema(), indent=2, ensure_ascii=False) + "\n")
