"""`glmv extract --ray`: the same job as a Ray Data pipeline, for folders and buckets one machine cannot handle.

glmv keeps what it is for (loading with its caps and error codes, prompts, validation, repair, confidence,
evidence, records) and hands the model stage to Ray Data LLM:

    list ─> read ─> prepare (glmv: sniff, decode, render, caps, prompt) ─> model ─> postprocess (glmv) ─> write

- **List and read.** Local paths are walked as `glmv extract` walks them and read in Ray tasks with glmv's
  own checks; object-store URLs (`s3://`, `gs://`, `abfs://`, ...) through pyarrow's filesystems
  (`ray.data.read_binary_files`).
- **Model.** `HttpRequestProcessorConfig` against an OpenAI-compatible server (`--base-url`: glmv serve,
  vLLM, SGLang), or `vLLMEngineProcessorConfig` (`engine="vllm"`): a vLLM engine per GPU in the cluster.
- **Write.** JSONL shards of records in exactly the CLI's JSON shape, or Parquet (nested values as JSON).
- **Resume.** A re-run into the same output skips every document whose record is already there (by
  sha256), when the run's settings (schema, model, prompt, pages, dpi, ...) are the same; other settings
  are refused, not mixed in.
- **Failures.** A document that cannot be read, decoded or answered is a `failed` record, never a failed
  job. (A server that stays down fails the job, as `remote_unavailable` stops the CLI.)
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glmv_cli.errors import InputError, ModelLoadError, UsageError

MANIFEST = "_glmv-run.json"
OBJECT_STORE = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "az://", "hdfs://", "file://")


@dataclass
class RayJob:
    """Everything a Ray run needs, picklable (workers rebuild glmv's pieces from it)."""

    inputs: list[str]
    output: str
    schema: Any  # a ResolvedSchema
    options: Any  # an ExtractOptions
    base_url: str | list[str] | None = None
    api_key: str | None = None
    served_model: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # the served model as /v1/models gives it (the driver asks)
    engine: str = "http"  # http: Ray's HTTP processor against base_url; vllm: Ray's vLLM engine processor
    model: str | None = None  # engine=vllm: the model path or hub id
    concurrency: int = 1  # model stage: HTTP workers, or vLLM engine replicas
    batch_size: int = 8  # rows per model-stage batch
    format: str = "jsonl"  # jsonl or parquet
    vllm_engine_kwargs: dict[str, Any] = field(default_factory=dict)
    # the model stage's Ray options: the HTTP stage's config (num_cpus, ...), or more vLLMEngineProcessorConfig
    # fields (accelerator_type, placement_group_config, ...)
    stage_options: dict[str, Any] = field(default_factory=dict)
    actor_wait_s: int = 60  # a model pool that cannot be scheduled fails after this, not Ray's ten minutes


def is_url(path: str) -> bool:
    return path.startswith(OBJECT_STORE)


# --- workers: glmv's own stages ------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _stages(job: RayJob) -> Any:
    """glmv's stages (and remote backend) for this worker process, made on first use."""
    key = json.dumps([settings_of(job), job.base_url, job.engine], sort_keys=True, default=str)
    if _WORKER.get("key") != key:
        from glmv_cli.engine.remote import RemoteBackend
        from glmv_cli.extraction.stages import Stages

        if job.engine == "vllm":
            backend = _OfflineBackend(job)
        else:
            backend = RemoteBackend(job.base_url, api_key=job.api_key, model=job.served_model)
            backend._identity = dict(job.identity)  # the driver asked /v1/models once, not every worker
        _WORKER.update(key=key, stages=Stages(backend, job.schema, job.options, cache=None))
    return _WORKER["stages"]


class _OfflineBackend:
    """engine=vllm: requests are answered by Ray's vLLM stage; this only encodes images and names the model."""

    def __init__(self, job: RayJob):
        from glmv_cli.engine.remote import RemoteBackend

        self._remote = RemoteBackend("http://unused.invalid")
        self._remote._identity = {"model": job.model or "model"}
        self.model_id = job.model or "model"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._remote, name)

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        from glmv_cli.engine.base import Generation

        return [Generation(finish_reason="error", error="no repair with engine=vllm", tag=r.tag) for r in requests]


PASS = "__inference_error__"  # Ray Data LLM lets rows with this set pass its stages (and postprocess) untouched


def _done_row(record: Any) -> dict[str, Any]:
    """A document that is finished before the model (failed to load): its record rides past the model stage."""
    line = json.dumps(record.to_json_dict(), ensure_ascii=False)
    return {"line": line, "job": None, "payload": {}, "sent": {}, PASS: f"glmv: {record.status} before the model"}


def prepare_rows(row: dict[str, Any], job: RayJob, done: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """read ─> sniff, decode, render, caps, prompt: one row per model request, or one failed record; nothing
    for a document whose record the output already holds (by sha256: a re-run resumes)."""
    from glmv_cli.extraction.loading import LoadTask
    from glmv_cli.inputs import read_file

    stages = _stages(job)
    name, started = row["path"], time.perf_counter()
    try:
        if row.get("bytes") is not None:
            data = bytes(row["bytes"])
            if len(data) > job.options.max_file_size:
                raise InputError("larger than --max-file-size", code="file_too_large")
        else:
            data = read_file(Path(name), max_bytes=job.options.max_file_size, roots=job.options.roots)
    except InputError as exc:
        return [_done_row(stages.failed(name, exc.one_line(), exc.code))]
    if done and hashlib.sha256(data).hexdigest() in done:
        return []
    prepared = stages.prepare(LoadTask(0, name), data, started)
    if prepared.fatal is not None:
        raise prepared.fatal
    if prepared.records:
        return [_done_row(r) for r in prepared.records]
    rows = []
    for j in prepared.jobs:
        body, preprocess_s = stages.backend.request_body(j.request)
        # The page images travel once, as the payload's data URLs; the job keeps placeholders (repairs reuse them).
        j.request = j.request.model_copy(update={"images": [None] * len(j.request.images)})
        sent = {"preprocess_s": preprocess_s, "sent_at": time.time()}
        rows.append({"line": None, "job": pickle.dumps(j), "payload": body, "sent": sent, PASS: ""})
    return rows


def vllm_row(row: dict[str, Any]) -> dict[str, Any]:
    """engine=vllm: the chat payload as Ray's vLLM processor takes it (messages, sampling params, JSON schema)."""
    payload = row["payload"]
    sampling = {"max_tokens": payload["max_tokens"], "temperature": payload["temperature"], "logprobs": 1}
    fmt = payload.get("response_format")
    if fmt:
        sampling["structured_outputs"] = {"json": fmt["json_schema"]["schema"]}
    return {**row, "messages": payload["messages"], "sampling_params": sampling}


def finish_row(row: dict[str, Any], job: RayJob) -> dict[str, Any]:
    """The model's reply ─> glmv's parse, validation, repair, confidence, evidence ─> the record's JSON line."""
    from glmv_cli.engine.base import Generation

    stages = _stages(job)
    j = pickle.loads(row["job"])
    reply = row.get("http_response")
    if reply is None and "generated_text" in row:  # engine=vllm
        reply = {"choices": [{"message": {"content": row["generated_text"]}, "finish_reason": "stop"}]}
    if not isinstance(reply, dict) or "choices" not in reply:
        detail = (reply or {}).get("error") if isinstance(reply, dict) else reply
        error = f"model stage failed: {str(detail)[:300]}"
        gen = Generation(finish_reason="error", error=error, error_code="remote_failed")
    else:
        # generate: wall seconds from the request leaving prepare to its answer, Ray's queueing included
        sent = row.get("sent") or {}
        elapsed = max(0.0, time.time() - sent.get("sent_at", time.time()))
        gen = stages.backend.generation(j.request, reply, sent.get("preprocess_s", 0.0), elapsed)
    try:
        record = stages.finish(j, gen)
    except Exception as exc:  # noqa: BLE001 - one document fails alone
        record = stages.failed(j.name, f"postprocess failed: {exc}", "internal_error", j.sha256)
    return {"line": json.dumps(record.to_json_dict(), ensure_ascii=False)}


# --- the driver ----------------------------------------------------------------------------------


def settings_of(job: RayJob) -> dict[str, Any]:
    """What makes two runs' records comparable: everything in glmv's cache key but the file."""
    o = job.options
    return {
        "schema": job.schema.fingerprint(),
        "schema_name": job.schema.name,
        "model": job.served_model or job.model,
        "pages": o.pages,
        "max_pages": o.max_pages,
        "dpi": o.dpi,
        "per_page": o.per_page,
        "text_hint": o.text_hint,
        "max_image_tokens": o.max_image_tokens,
        "settings": o.settings.model_dump(),
        "repair": o.repair,
        "evidence": o.evidence,
    }


def _filesystem(output: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if is_url(output):
        return pafs.FileSystem.from_uri(output)
    return pafs.LocalFileSystem(), str(Path(output).resolve())


def done_documents(job: RayJob) -> set[str]:
    """sha256 of every document with a record in the output already; refuses output made with other settings."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(job.output)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return set()
    manifest = f"{root}/{MANIFEST}"
    if fs.get_file_info(manifest).type == pafs.FileType.NotFound:
        if fs.get_file_info(pafs.FileSelector(root)):
            raise UsageError(f"{job.output} is not empty and holds no glmv run", "give a new or empty folder")
        return set()
    with fs.open_input_stream(manifest) as f:
        before = json.loads(f.read().decode())
    now = json.loads(json.dumps(settings_of(job)))
    if before != now:
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise UsageError(
            f"{job.output} holds records made with other settings ({', '.join(changed)})",
            "write to a new folder, or run with the same settings to resume",
        )
    seen = {record.get("sha256") for record in iter_records(job.output)}
    seen.discard(None)
    return seen


def _write_manifest(job: RayJob) -> None:
    fs, root = _filesystem(job.output)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{MANIFEST}") as f:
        f.write(json.dumps(settings_of(job), indent=2).encode())


def list_inputs(job: RayJob) -> tuple[list[str], list[str]]:
    """(local files as `glmv extract` walks them, object-store URLs)."""
    from glmv_cli.inputs import discover

    local = [p for p in job.inputs if not is_url(p)]
    urls = [p for p in job.inputs if is_url(p)]
    found = [str(p) for p in discover([Path(p) for p in local])] if local else []
    return found, urls


def run(job: RayJob, *, address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
    """Run the job on a Ray cluster (address) or a local one; returns counts by status."""
    try:
        import ray
        import ray.data.llm  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray Data ({exc})", "install the ray extra: pip install 'glmv[ray]'") from exc

    if job.engine == "http":
        _check_server(job)
    elif job.engine != "vllm" or not job.model:
        raise UsageError("a RayJob's engine is http (with base_url) or vllm (with model: a path or hub id)")
    if job.format not in ("jsonl", "parquet"):
        raise UsageError(f"unknown Ray output format {job.format!r}", "choose jsonl or parquet")
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    _ship_schema_by_value(job.schema.model)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.wait_for_min_actors_s = job.actor_wait_s

    done = done_documents(job)
    _write_manifest(job)
    local, urls = list_inputs(job)
    parts = []
    if local:
        parts.append(ray.data.from_items([{"path": p, "bytes": None} for p in local]))
    if urls:
        parts.append(ray.data.read_binary_files(urls, include_paths=True).select_columns(["path", "bytes"]))
    if not parts:
        raise UsageError("no input documents", "give files, folders or object-store URLs")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    prepared = ds.flat_map(prepare_rows, fn_kwargs={"job": job, "done": frozenset(done)})
    out = _model_stage(job, prepared).map(lambda row: {"line": row["line"]})
    run_id = f"records-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}"
    try:
        out.write_datasink(_sink(job.output, run_id, job.format))
    except ray.exceptions.GetTimeoutError as exc:
        raise UsageError(
            f"the cluster did not start the model stage's workers in {job.actor_wait_s} s: it lacks the CPUs or "
            "GPUs they ask for",
            "lower --ray-concurrency, or add nodes",
        ) from exc
    except ray.exceptions.RayTaskError as exc:
        if "Reached maximum retries" not in str(exc):
            raise
        raise ModelLoadError(
            "the model server stopped answering during the run",
            "start it again and re-run the same command: documents already written are skipped",
            code="remote_unavailable",
        ) from exc
    statuses: dict[str, int] = {}
    for record in iter_records(job.output, prefix=run_id):
        statuses[record["status"]] = statuses.get(record["status"], 0) + 1
    return {"skipped": len(done), "statuses": statuses}


def _check_server(job: RayJob) -> None:
    """engine=http: one OpenAI-compatible server, asked once here which model it serves (a server that is down
    is a clear error now, not a failed Ray task later)."""
    from glmv_cli.engine.remote import RemoteBackend, split_base_urls

    urls = split_base_urls(job.base_url)
    if not urls:
        raise UsageError("--ray needs --base-url: an OpenAI-compatible server (glmv serve, vLLM, SGLang)")
    if len(urls) > 1:
        raise UsageError(
            "--ray sends to one --base-url", "put a load balancer in front of the replicas, or give Ray a vLLM engine"
        )
    job.identity = RemoteBackend(urls[0], api_key=job.api_key, model=job.served_model).identity()
    job.served_model = job.identity["model"]


def _ship_schema_by_value(model: type) -> None:
    """A schema file runs as a module only the driver has (glmv_schema_<stem>_<digest>): its classes travel
    to Ray's workers by value, as a notebook's classes do."""
    import sys

    from ray import cloudpickle

    module = sys.modules.get(model.__module__)
    if module is not None and model.__module__.startswith("glmv_schema_"):
        cloudpickle.register_pickle_by_value(module)


def _model_stage(job: RayJob, todo: Any) -> Any:
    from ray.data.llm import build_processor

    if job.engine == "vllm":
        from ray.data.llm import vLLMEngineProcessorConfig

        config = vLLMEngineProcessorConfig(
            model_source=job.model,
            engine_kwargs={"max_model_len": 32768, "enable_prefix_caching": True, **job.vllm_engine_kwargs},
            concurrency=job.concurrency,
            batch_size=job.batch_size,
            prepare_multimodal_stage=True,  # the page images ride in the messages as data URLs
            **job.stage_options,  # e.g. accelerator_type, placement_group_config
        )
        preprocess = vllm_row
    else:
        from ray.data.llm import HttpRequestProcessorConfig

        from glmv_cli.engine.remote import split_base_urls

        headers = {"Authorization": f"Bearer {job.api_key}"} if job.api_key else {}
        config = HttpRequestProcessorConfig(
            url=split_base_urls(job.base_url)[0] + "/chat/completions",
            headers=headers,
            concurrency=job.concurrency,
            batch_size=job.batch_size,
            max_retries=3,
            http_request_stage=job.stage_options or True,
        )
        preprocess = None
    processor = build_processor(
        config,
        preprocess=preprocess,
        postprocess=lambda row: finish_row(row, job),
    )
    return processor(todo).select_columns(["line"])


# Parquet has no nested JSON of any shape: these record fields are JSON text in a Parquet shard.
NESTED = ("pages", "data", "confidence", "review_reasons", "timings", "evidence", "review_log")


def _sink(path: str, run_id: str, fmt: str) -> Any:
    """Records as shards, one per block, written by Ray's workers (names start with the run's id): JSONL in
    exactly the CLI's shape, or Parquet with the nested fields as JSON text."""
    from ray.data.datasource import BlockBasedFileDatasink

    class Sink(BlockBasedFileDatasink):
        def write_block_to_file(self, block: Any, file: Any) -> None:
            lines = block.to_arrow().column("line").to_pylist()
            if fmt == "jsonl":
                for line in lines:
                    file.write((line + "\n").encode())
                return
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [_flat(json.loads(line)) for line in lines]
            columns = list(dict.fromkeys(k for row in rows for k in row))  # from_pylist reads the first row's only
            pq.write_table(pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows]), file)

    return Sink(path, file_format=fmt, dataset_uuid=run_id)


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, ensure_ascii=False) if k in NESTED else v) for k, v in record.items()}


def iter_records(output: str, prefix: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record in a Ray run's output folder, JSONL or Parquet shards (those of one run: its prefix)."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(output)
    for entry in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda e: e.path):
        if not entry.base_name.startswith(prefix or "") or entry.type != pafs.FileType.File:
            continue
        if entry.base_name.endswith(".jsonl"):
            with fs.open_input_stream(entry.path) as f:
                for line in f.read().decode().splitlines():
                    if line.strip():
                        yield json.loads(line)
        elif entry.base_name.endswith(".parquet"):
            import pyarrow.parquet as pq

            for row in pq.read_table(entry.path, filesystem=fs).to_pylist():
                yield {k: (json.loads(v) if k in NESTED and isinstance(v, str) else v) for k, v in row.items()}
