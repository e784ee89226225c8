"""`glmv review`: check and correct records in a local page; decisions flow back to extract, export and eval."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from glmv_cli.cli.common import handle_errors


@handle_errors
def review(
    results: Annotated[Path, typer.Argument(help="The JSONL (or JSON) records of `glmv extract -o`.")],
    export: Annotated[
        bool, typer.Option("--export", help="Write the records with the decisions applied (no page).")
    ] = False,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Where --export writes (.jsonl, .json, .csv); default stdout.")
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="The records' schema, when the name they carry cannot be loaded.")
    ] = None,
    threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="The `a` key accepts every value with confidence at or above this.")
    ] = 0.9,
    dpi: Annotated[int, typer.Option(min=1, help="Render PDF pages at this dpi (the extract run's).")] = 150,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1; 0 picks a free one.")] = 0,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in the browser.")] = True,
) -> None:
    """Review records in a local page: fix the doubtful values, then --export, re-extract or eval with them.

    Documents to check come first (review, then failed with the model's text, then the lowest confidence).
    Each decision is saved at once beside the result cache; a later `glmv extract` of the same document
    and schema serves the corrected record (unless --refresh), and `glmv eval --corrections` scores
    against them.
    """
    from glmv_cli.review.session import ReviewSession, to_record
    from glmv_cli.review.store import CorrectionStore

    store = CorrectionStore()
    session = ReviewSession(results, store, schema=schema, dpi=dpi, threshold=threshold)
    if export:
        from glmv_cli.outputs import open_writer

        rows = session.corrected()
        reviewed = sum(bool(r.get("reviewed")) for r in rows)
        with open_writer(None, output, sys.stdout, columns_schema=session.schema.json_schema()) as writer:
            for row in rows:
                writer.write(to_record(row))
        typer.echo(f"glmv review: {len(rows)} records, {reviewed} reviewed", err=True)
        return
    serve_page(session, port, open_browser)


def serve_page(session, port: int, open_browser: bool) -> None:
    import uvicorn

    from glmv_cli.review.app import create_review_app
    from glmv_cli.serve.server import bind

    sock = bind("127.0.0.1", port)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    queued = sum(1 for q in session.queue() if q["status"] in ("review", "failed"))
    sys.stderr.write(f"glmv review: {len(session.order)} documents ({queued} to check first) at {url}\n")
    sys.stderr.write("glmv review: every decision is saved as you make it; Ctrl-C to stop\n")
    sys.stderr.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    app = create_review_app(session)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
