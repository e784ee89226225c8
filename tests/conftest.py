"""Shared fixtures: the tiny same-architecture checkpoint, built once per session, and a hermetic env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
SAMPLES = ROOT / "samples"
# Statuses with data. Random weights run answers into their token budget, so the tiny checkpoint's
# answers are often closed early, hence review: plumbing tests accept both.
ANSWERED = ("ok", "review")


def answered(status: str) -> str:
    """ok for both statuses that carry data (ok, review); any other status as it is."""
    return "ok" if status in ANSWERED else status


# No test may reach the network, or the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist, share the cores between workers: torch's default of one thread per core in
# every worker (and in every glmv it starts) oversubscribes them. `make test` sets this before
# Python starts (which works best); this covers a plain `pytest -n N`, and the glmv processes tests start.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(_threads))


def needs_corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is not beside the repository")
    return CORPUS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-weight GLM-4.6V-architecture checkpoint (about 1.8 MB), built offline."""
    from glmv_cli.engine.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-glm4v")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("GLMV_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("GLMV_MODEL", raising=False)


@pytest.fixture
def model_env(monkeypatch, tiny_model) -> Path:
    """GLMV_MODEL pointing at the tiny checkpoint."""
    monkeypatch.setenv("GLMV_MODEL", str(tiny_model))
    return tiny_model
