"""Batches by token budget, memory bounded by bytes, out-of-memory halving: on the tiny checkpoint."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from glmv_cli.engine.factory import create_backend
from glmv_cli.engine.local import LocalBackend, kv_cache_bytes_per_token
from glmv_cli.extraction.pipeline import ExtractOptions, Extractor
from glmv_cli.extraction.schemas import resolve_schema
from glmv_cli.extraction.stages import Job
from tests.conftest import SAMPLES, answered

SMALL = "vendor, total float: grand total"


def job(tokens: int) -> Job:
    return Job(0, 0, "x", "sha", [1], None, 0.0, 1, tokens=tokens)


def test_batches_fit_the_token_budget_counting_padding():
    window = [job(1000), job(100), job(300), job(100)]
    picked = []
    while window:
        picked.append([j.tokens for j in Extractor._pick_batch(window, size=8, budget=400)])
    # Left padding: a batch costs rows x its longest row; a job over the budget alone still goes.
    assert picked == [[100, 100], [300], [1000]]
    window = [job(10) for _ in range(20)]
    assert len(Extractor._pick_batch(window, size=8, budget=10**6)) == 8  # the row cap still holds


def test_kv_cache_bytes_per_token_of_the_real_model():
    from transformers import Glm4vConfig

    # GLM-4.6V-Flash's text decoder: 40 layers, 2 KV heads of 128 (values from its config.json).
    config = Glm4vConfig(
        text_config={"num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128}
    )
    assert kv_cache_bytes_per_token(config, torch.bfloat16) == 40 * 2 * 128 * 2 * 2  # about 40 KB, as noted
    assert kv_cache_bytes_per_token(config, torch.float32) == 2 * 40 * 2 * 128 * 2 * 2


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("invoice-acme.png", "receipt-cafe.jpg", "screenshot-login.png", "invoice-acme.pdf"):
        shutil.copy(SAMPLES / name, root / name)
    for i in range(4):
        Image.new("RGB", (300 + 40 * i, 200), "white").save(root / f"blank{i}.png")
    return root


def run(tiny_model, folder, max_new_tokens=64, **options):
    backend = create_backend(str(tiny_model), dtype="float32")  # batched == alone, exactly (test_continuous)
    extractor = Extractor(
        backend,
        resolve_schema(SMALL),
        ExtractOptions(settings=extractor_settings(max_new_tokens), use_cache=False, **options),
    )
    records = list(extractor.run(sorted(folder.iterdir())))
    return extractor, records


def extractor_settings(max_new_tokens=64):
    from glmv_cli.engine.base import GenerationSettings

    return GenerationSettings(max_new_tokens=max_new_tokens)


def test_prefetch_is_bounded_by_bytes(tiny_model, folder):
    # Documents load one at a time here, each after the last has run: short answers keep it quick.
    extractor, records = run(tiny_model, folder, max_new_tokens=24, prefetch_bytes=1, workers=2)
    assert [answered(r.status) for r in records] == ["ok"] * 8
    gate = extractor._gate
    assert gate.held == 0  # every prepared input was released once its batch ran
    # With a cap of one byte, one document at a time is read and held: never two, however many workers.
    one_doc = 3 * 1000 * 1300 + 4 * 1200 * 1200 * 3  # generous: the largest sample's image and pixel values
    assert 0 < gate.peak == gate.largest <= one_doc


def test_documents_still_loading_count_as_large_as_the_largest_seen():
    """The gate's bound: held bytes plus each loading document at the largest size seen stay under the cap."""
    import threading

    from glmv_cli.extraction.loading import ByteGate

    gate, stop = ByteGate(cap=100), threading.Event()
    assert gate._room()
    gate.submitted(0)
    gate.loaded(0, 40)  # held 40, largest 40
    gate.submitted(1)  # 40 + 1 x 40 = 80 < 100: room for another
    assert gate._room()
    gate.submitted(2)  # 40 + 2 x 40 = 120: no room until something goes
    assert not gate._room()
    gate.loaded(1, 10)  # 50 + 1 x 40 = 90
    assert gate._room()
    gate.submitted(3)
    gate.gone(2)  # given up on: no longer loading
    gate.release(50)  # the first two ran: 0 held, 1 loading
    assert gate._room()
    gate.loaded(3, 500)  # one document over the cap alone
    gate.submitted(4)
    assert not gate._room()
    gate.release(500)
    assert not gate._room()  # document 4 may be as large: one at a time now
    gate.loaded(4, 0)  # it was a cache hit
    gate.wait_for_room(stop)  # nothing held or loading: returns at once
    assert gate.held == 0 and gate.largest == 500


def test_a_small_budget_makes_small_batches_with_the_same_answers(tiny_model, folder, monkeypatch):
    sizes = []
    real = LocalBackend._run

    def spy(self, requests, *args, **kw):
        sizes.append(len(requests))
        return real(self, requests, *args, **kw)

    monkeypatch.setattr(LocalBackend, "_run", spy)
    _, wide = run(tiny_model, folder, batch_size=8)
    assert max(sizes) > 2
    sizes.clear()
    monkeypatch.setattr(LocalBackend, "token_budget", lambda self: 1)  # every job alone
    _, narrow = run(tiny_model, folder, batch_size=8)
    assert set(sizes) == {1}
    assert [r.data for r in narrow] == [r.data for r in wide]  # batched greedy == unbatched


def test_out_of_memory_halves_the_batch_and_the_budget(tiny_model, folder, monkeypatch):
    real = LocalBackend._run

    def small_gpu(self, requests, *args, **kw):
        if len(requests) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, requests, *args, **kw)

    monkeypatch.setattr(LocalBackend, "_run", small_gpu)
    extractor, records = run(tiny_model, folder, batch_size=8)
    assert [answered(r.status) for r in records] == ["ok"] * 8
    local = extractor.backend.real
    assert local._budget_scale < 1 and local.token_budget() < 8 * 8192
