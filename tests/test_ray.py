"""`glmv extract --ray`: the job as a Ray Data pipeline on a local Ray cluster (make test-ray; needs the `ray` extra).

Against `glmv serve` on the trained checkpoint, its records equal the single-machine run's
(`--backend openai` against the same server) for the same folder; a re-run resumes (nothing is asked
twice); a document that cannot be read is a failed record, not a failed job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLES, glmv_serve

TRAINED = ROOT / "models" / "glmv-tiny-trained"


def glmv(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glmv_cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900
    )


def by_file(records: list[dict]) -> dict[str, dict]:
    keep = ("status", "data", "error_code", "sha256", "schema", "pages", "evidence", "review_reasons")
    return {Path(r["file"]).name: {k: r.get(k) for k in keep} for r in records}


@pytest.mark.ray
def test_ray_pipeline_matches_the_cli_resumes_and_records_failures(tmp_path):
    pytest.importorskip("ray.data.llm", reason="the ray extra is not installed (make test-ray installs it)")
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("invoice-acme.pdf", "invoice-acme.png", "receipt-cafe.jpg"):
        shutil.copy(SAMPLES / name, folder / name)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n this is not a PDF at all\n")
    env = {**os.environ, "GLMV_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with glmv_serve(TRAINED, tmp_path) as (url, _log):
        base = f"{url}/v1"
        single = tmp_path / "single.jsonl"
        run = glmv(env, "extract", str(folder), "-s", "invoice", "--backend", "openai", "--base-url", base,
                   "--no-cache", "-o", str(single))  # fmt: skip
        assert run.returncode == 3, run.stderr  # the broken PDF
        out = tmp_path / "ray-out"
        ray_cmd = ["extract", str(folder), "-s", "invoice", "--ray", "local", "--base-url", base, "-o", str(out)]
        ray_cmd += ["--ray-concurrency", "1"]
        run = glmv(env, *ray_cmd)
        assert run.returncode == 3, run.stderr
        assert "3 ok" in run.stderr.replace("review", "ok") or "ok" in run.stderr

        from glmv_cli.ray import iter_records

        records = list(iter_records(str(out)))
        expected = by_file([json.loads(line) for line in single.read_text().splitlines()])
        assert by_file(records) == expected
        assert expected["broken.pdf"]["status"] == "failed"

        # Resume: the same run again asks nothing and writes nothing new.
        run = glmv(env, *ray_cmd)
        assert run.returncode == 0, run.stderr.splitlines()[-1]
        assert "nothing new; 4 already in" in run.stderr
        assert len(list(iter_records(str(out)))) == 4

        # Parquet shards hold the same records (nested fields as JSON text, read back by iter_records).
        parquet = tmp_path / "ray-parquet"
        run = glmv(env, *ray_cmd[:-3], str(parquet), "--format", "parquet", "--ray-concurrency", "1")
        assert run.returncode == 3, run.stderr.splitlines()[-1]
        assert by_file(list(iter_records(str(parquet)))) == expected

        # Other settings are refused, not mixed in.
        run = glmv(env, "extract", str(folder), "-s", "receipt", "--ray", "local", "--base-url", base, "-o", str(out))
        assert run.returncode == 2 and "other settings" in run.stderr

        # A model stage the cluster cannot schedule fails in seconds with a clear error, not after Ray's 10 min.
        import ray

        from glmv_cli.api import extract_options
        from glmv_cli.errors import UsageError
        from glmv_cli.extraction.schemas import resolve_schema
        from glmv_cli.ray import RayJob
        from glmv_cli.ray import run as ray_run

        starved = RayJob(inputs=[str(folder / "invoice-acme.pdf")], output=str(tmp_path / "starved"),
                         schema=resolve_schema("invoice"), options=extract_options(), base_url=base,
                         stage_options={"num_cpus": 64}, actor_wait_s=3)  # fmt: skip
        try:
            with pytest.raises(UsageError, match="did not start the model stage"):
                ray_run(starved, num_cpus=2)
        finally:
            ray.shutdown()


def test_without_ray_a_clear_usage_error(tmp_path, monkeypatch):
    """In make test (the ray extra need not be installed): a clear usage error, not a traceback."""
    from glmv_cli.api import extract_options
    from glmv_cli.errors import UsageError
    from glmv_cli.extraction.schemas import resolve_schema
    from glmv_cli.ray import RayJob, run

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    pdf = str(SAMPLES / "invoice-acme.pdf")
    job = RayJob([pdf], str(tmp_path / "out"), resolve_schema("invoice"), extract_options())
    with pytest.raises(UsageError, match="needs Ray Data") as caught:
        run(job)
    assert "pip install 'glmv[ray]'" in caught.value.one_line()
