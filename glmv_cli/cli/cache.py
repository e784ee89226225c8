"""`glmv cache info|clear`: the content-addressed result store."""

import sys
from typing import Annotated

import typer

from glmv_cli.cli.common import handle_errors

app = typer.Typer(help="Inspect or clear the result cache (GLMV_CACHE_DIR overrides its folder).", no_args_is_help=True)


@app.command("info")
@handle_errors
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Entries, size on disk and the hit rate of the last run."""
    from glmv_cli.cache import ResultCache

    cache = ResultCache()
    data = cache.info()
    cache.close()
    if as_json:
        import json

        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    lines = [
        f"path      {data['path']}",
        f"entries   {data['entries']}",
        f"size      {data['size_bytes'] / 1e6:.2f} MB",
    ]
    last = data.get("last_run")
    if last:
        rate = "-" if last["hit_rate"] is None else f"{last['hit_rate']:.0%}"
        lines.append(f"last run  {last['hits']} hits, {last['misses']} misses ({rate} hit rate)")
    sys.stdout.write("\n".join(lines) + "\n")


@app.command("clear")
@handle_errors
def clear() -> None:
    """Delete every cached result."""
    from glmv_cli.cache import ResultCache

    cache = ResultCache()
    removed = cache.clear()
    cache.close()
    sys.stderr.write(f"removed {removed} cached results\n")
