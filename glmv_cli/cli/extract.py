"""`glmv extract PATH... --schema NAME`: one validated record per document."""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from glmv_cli import DEFAULT_MODEL
from glmv_cli.cli.common import (
    TEXT_HINT_MODES,
    ApiKeyOpt,
    BackendOpt,
    BaseUrlOpt,
    ConcurrencyOpt,
    DeviceOpt,
    DpiOpt,
    DtypeOpt,
    GpuMemoryOpt,
    ModelOpt,
    PasswordOpt,
    QuantOpt,
    RemoteModelOpt,
    RequestTimeoutOpt,
    RevisionOpt,
    TextHintOpt,
    ThinkOpt,
    VllmCommandOpt,
    handle_errors,
)
from glmv_cli.errors import ExitStatus, InputError, OutputError, UsageError

if TYPE_CHECKING:
    from glmv_cli.records import Record


@handle_errors
def extract(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (walked recursively).", show_default=False)],
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            "-s",
            help=(
                "Built-in or ./schemas/ NAME, file.py[:Model], file.json (JSON Schema), "
                "or inline 'vendor, total float'. Default: the built-in 'document'."
            ),
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (format from the extension).")
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="jsonl (default), json or csv; with --ray, jsonl or parquet.")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option(help="One JSON file per input, mirroring the input tree.")] = None,
    explode: Annotated[str | None, typer.Option(help="CSV: one row per item of this list field.")] = None,
    glob: Annotated[list[str] | None, typer.Option(help="Only files matching this pattern (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Skip files matching this pattern (repeatable).")] = None,
    pages: Annotated[str | None, typer.Option(help="PDF pages, e.g. 1-3,5 (default: all up to --max-pages).")] = None,
    max_pages: Annotated[int, typer.Option(min=1, help="Most pages per document (a warning names the rest).")] = 8,
    dpi: DpiOpt = 150,
    password: PasswordOpt = None,
    text_hint: TextHintOpt = "auto",
    per_page: Annotated[bool, typer.Option(help="One record per page instead of per document.")] = False,
    think: ThinkOpt = False,
    think_budget: Annotated[int | None, typer.Option(min=1, help="Most thinking tokens with --think.")] = None,
    max_tokens: Annotated[int, typer.Option(min=16, help="Most tokens per answer.")] = 2048,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Documents per model call (default: by memory).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Background threads reading and rendering inputs.")] = 2,
    max_file_size: Annotated[
        int,
        typer.Option(
            min=1, metavar="MB", help="Skip files larger than this (a failed record), checked before reading."
        ),
    ] = 256,
    follow_symlinks: Annotated[
        bool, typer.Option(help="Follow symlinks that lead out of the folders given (off: a failed record).")
    ] = False,
    max_image_tokens: Annotated[
        int | None,
        typer.Option(min=4, help="Most visual tokens per page (28x28 px each); larger pages are downscaled first."),
    ] = None,
    prefetch_mb: Annotated[
        int, typer.Option(min=1, metavar="MB", help="Page images and model inputs read ahead of the model, at most.")
    ] = 1024,
    read_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to read one file before giving up on it.")] = 60,
    render_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds per page to decode or render before giving up on a document.")
    ] = 60,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse results of unchanged documents.")] = True,
    refresh: Annotated[bool, typer.Option(help="Recompute every document and update the cache.")] = False,
    repair: Annotated[bool, typer.Option("--repair/--no-repair", help="Retry once when validation fails.")] = True,
    stats_json: Annotated[Path | None, typer.Option(help="Write the run statistics as JSON here.")] = None,
    confidence: Annotated[
        bool, typer.Option(help="CSV: a <column>.confidence column beside each data column (JSON always has them).")
    ] = False,
    evidence: Annotated[
        str,
        typer.Option(
            metavar="text|model|all|off",
            help=(
                "text: each value's page and box, found in a PDF's own text layer (records' `evidence`); "
                "model: also ask the model to locate the values the text layer misses that are under --review-below "
                "(0.9 if not set); all: every value it misses (images, scans); off: none."
            ),
        ),
    ] = "text",
    evidence_columns: Annotated[
        bool, typer.Option(help="CSV: <column>.page and <column>.box columns beside each data column.")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS|local",
            help=(
                "Run as a Ray Data pipeline on this Ray cluster (local: start one here). The model stage is Ray's "
                "HTTP processor against --base-url; -o is the output folder (JSONL or --format parquet shards), "
                "and a re-run into it skips documents already there. Paths may be object-store URLs (s3://...)."
            ),
        ),
    ] = None,
    ray_concurrency: Annotated[int, typer.Option(min=1, help="--ray: model-stage workers (requests in flight).")] = 4,
    review_below: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, metavar="T", help="Mark a document review when any value's confidence is below T."
        ),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 3 when any document is review, as for failed ones.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="One line per document on stderr.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only data and errors.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quant: QuantOpt = "auto",
    revision: RevisionOpt = None,
    backend_name: BackendOpt = "local",
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    remote_model: RemoteModelOpt = None,
    concurrency: ConcurrencyOpt = None,
    request_timeout: RequestTimeoutOpt = 600,
    vllm_command: VllmCommandOpt = None,
    gpu_memory_utilization: GpuMemoryOpt = None,
) -> None:
    """Extract one validated record per document into JSONL (stdout), JSON or CSV.

    Exit codes: 0 all documents ok or review; 3 some failed (the rest are written), or some are
    review with --strict; 2 usage error;
    1 fatal (model cannot load, output not writable); 130 interrupted (Ctrl-C: what finished
    is written; a second Ctrl-C stops at once and leaves a file output as it was).
    """
    from glmv_cli.api import EVIDENCE_MODES, Glmv, extract_options
    from glmv_cli.cli.render import ProgressView, print_stats, stderr_console
    from glmv_cli.extraction.schema_check import check_schema
    from glmv_cli.extraction.schemas import resolve_schema
    from glmv_cli.inputs import discover, parse_page_spec, roots_of
    from glmv_cli.outputs import DirWriter, RunStats, open_writer

    if text_hint not in TEXT_HINT_MODES:
        raise UsageError(f"unknown --text-hint {text_hint!r}", "choose auto, on or off")
    if evidence not in EVIDENCE_MODES:
        raise UsageError(f"unknown --evidence {evidence!r}", "choose text, model, all or off")
    if output and out_dir:
        raise UsageError("give -o FILE or --out-dir DIR, not both")
    resolved = resolve_schema(schema)
    check_schema(resolved)  # recursive or uncompilable: a usage error now, not N failures later
    page_list = parse_page_spec(pages)
    options = extract_options(
        pages=page_list,
        max_pages=max_pages,
        dpi=dpi,
        password=password,
        text_hint=text_hint,
        per_page=per_page,
        max_tokens=max_tokens,
        think=think,
        think_budget=think_budget,
        batch_size=batch_size,
        repair=repair,
        use_cache=cache,
        refresh=refresh,
        workers=workers,
        max_file_size=max_file_size * 1024 * 1024,
        roots=None if follow_symlinks else roots_of(paths),
        max_image_tokens=max_image_tokens,
        read_timeout=read_timeout,
        render_timeout=render_timeout,
        prefetch_bytes=prefetch_mb * 1024 * 1024,
        review_below=review_below,
        evidence=evidence,
    )
    if ray is not None:
        remote = {"base_url": base_url, "api_key": api_key, "served_model": remote_model}
        _extract_ray(ray, paths, resolved, options, output, fmt, remote, ray_concurrency, quiet)
        return
    skip = {p for p in (output, stats_json) if p is not None}
    unlisted: list[str] = []
    try:
        files = discover(
            paths, glob=glob, exclude=exclude, skip=skip, follow_symlinks=follow_symlinks, warnings=unlisted
        )
    except InputError as exc:  # a PATH argument that does not exist is the caller's mistake
        raise UsageError(exc.message, exc.hint) from exc
    if out_dir is not None:
        files = [f for f in files if not _inside(f, out_dir)]  # never read our own output back
    console = stderr_console()
    for line in unlisted:
        console.print(f"warning: {line}", markup=False, highlight=False)
    if not files:
        raise UsageError("no images or PDFs found in " + ", ".join(str(p) for p in paths))

    writer = None
    dir_writer = DirWriter(out_dir) if out_dir else None
    if dir_writer is None:
        writer = open_writer(
            fmt,
            output,
            sys.stdout,
            columns_schema=resolved.json_schema(),
            explode=explode,
            confidence=confidence,
            evidence=evidence_columns,
        )
    if not quiet:
        console.print(f"schema: {resolved.describe()}", markup=False, highlight=False)
    glmv = Glmv(
        model,
        backend=backend_name,
        device=device,
        dtype=dtype,
        quant=quant,
        revision=revision,
        batch_size=batch_size,
        base_url=base_url,
        api_key=api_key,
        remote_model=remote_model,
        concurrency=concurrency,
        request_timeout=request_timeout,
        cache=cache,
        vllm_command=vllm_command,
        gpu_memory_utilization=gpu_memory_utilization,
        max_pages=max_pages,
        max_tokens=max_tokens,
        on_status=None if quiet else lambda line: console.print(line, markup=False, highlight=False),
    )
    try:
        extractor = glmv.extractor(resolved, options)
        backend = glmv.backend
        stats = RunStats()
        stats.start()
        roots = [p for p in paths if p.is_dir()]
        try:
            with (
                ProgressView(console, total=len(files), verbose=verbose, quiet=quiet) as view,
                _first_interrupt_stops(extractor, console),
            ):
                for record in extractor.run(files):
                    if dir_writer is not None:
                        # One file per record: a file that cannot be written fails that document only.
                        record = _write_one(lambda r: dir_writer.write(r, _relative(Path(r.file), roots)), record, ())
                    else:
                        record = _write_one(writer.write, record, (OutputError, OSError))
                    stats.add(record)
                    view.update(record)
        except BaseException:
            if writer is not None:
                writer.abort()  # a crash or a second Ctrl-C never leaves a half-written output file
            raise
        if writer is not None:
            writer.close()
        stats.stop()
        stats.model_load_s = backend.load_s or None
        summary = stats.summary()
        summary["interrupted"] = extractor.stopped
        if not quiet:
            print_stats(console, summary)
        if stats_json is not None:
            import json

            try:
                stats_json.write_text(json.dumps(summary, indent=2) + "\n")
            except OSError as exc:
                raise OutputError(f"cannot write {stats_json}: {exc.strerror or exc}") from exc
        if extractor.stopped:
            console.print(f"interrupted: {stats.done} of {len(files)} documents written; run again to finish")
            raise typer.Exit(int(ExitStatus.INTERRUPTED))
        if summary["docs_failed"] or (strict and summary["docs_review"]):
            raise typer.Exit(int(ExitStatus.PARTIAL))

    finally:
        glmv.close()  # a server glmv started (--backend vllm) stops with the run


def _write_one(write: Callable[["Record"], Any], record: "Record", fatal: tuple[type[Exception], ...]) -> "Record":
    """Write a record; one that cannot be written becomes a failed record, written in its place.

    `fatal` errors mean the output itself is broken (disk full, closed pipe): they end the run.
    """
    try:
        write(record)
        return record
    except fatal:
        raise
    except Exception as exc:  # noqa: BLE001 - this record alone (e.g. a value that cannot be serialised)
        failed = record.model_copy(
            update={
                "status": "failed",
                "data": None,
                "error": f"record could not be written: {type(exc).__name__}: {' '.join(str(exc).split())}",
                "error_code": "write_failed",
            }
        )
        write(failed)
        return failed


@contextlib.contextmanager
def _first_interrupt_stops(extractor: Any, console: Any) -> Iterator[None]:
    """First Ctrl-C: finish what is in flight, write, exit 130. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: Any) -> None:
        if extractor.stopped:
            raise KeyboardInterrupt
        extractor.stop()
        console.print("stopping after the documents in flight (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _extract_ray(address, paths, schema, options, output, fmt, remote, concurrency, quiet) -> None:
    """glmv extract --ray: the job as a Ray Data pipeline (glmv_cli/ray.py); exit 3 when a document failed."""
    from glmv_cli.inputs import discover
    from glmv_cli.ray import RayJob, is_url, run

    if output is None:
        raise UsageError("--ray needs -o FOLDER (a local folder or an object-store URL) for the record shards")
    inputs = [_url_back(p) for p in paths]
    local = [Path(p) for p in inputs if not is_url(p)]
    files = [str(f) for f in discover(local)] if local else []
    job = RayJob(
        inputs=files + [p for p in inputs if is_url(p)],
        output=_url_back(output),
        schema=schema,
        options=options,
        base_url=remote["base_url"],
        api_key=remote["api_key"],
        served_model=remote["served_model"],
        concurrency=concurrency,
        format=fmt or "jsonl",
    )
    summary = run(job, address=None if address in ("", "local") else address)
    if not quiet:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(summary["statuses"].items())) or "nothing new"
        typer.echo(f"glmv extract --ray: {counts}; {summary['skipped']} already in {job.output}", err=True)
    if summary["statuses"].get("failed"):
        raise typer.Exit(int(ExitStatus.PARTIAL))


def _url_back(path: Path | str) -> str:
    """An object-store URL as typed (a Path folds its '//')."""
    text = str(path)
    for scheme in ("s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs"):
        if text.startswith(f"{scheme}:/") and not text.startswith(f"{scheme}://"):
            return f"{scheme}://{text[len(scheme) + 2 :]}"
    return text


def _inside(path: Path, folder: Path) -> bool:
    # realpath, unlike Path.resolve, never raises on a symlink loop (discover keeps those, as records)
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _relative(path: Path, roots: list[Path]) -> Path:
    """The input's path below the folder argument it came from (its name for loose files)."""
    for root in roots:
        if _inside(path, root):
            return Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
    return Path(path.name)
