"""Create a backend by name; the heavy backend module is imported only when a model is needed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

from glmv_cli.engine.base import Backend
from glmv_cli.engine.identity import local_identity
from glmv_cli.errors import ModelLoadError, UsageError

BACKENDS = ("local", "openai", "vllm")
LOCAL_NEEDS = "the local backend needs torch and transformers: pip install 'glmv[local]'"


def create_backend(
    model: str,
    *,
    backend: str = "local",
    device: str = "auto",
    dtype: str = "auto",
    quant: str = "auto",
    revision: str | None = None,
    batch_size: int | None = None,
    base_urls: Sequence[str] | str | None = None,
    api_key: str | None = None,
    remote_model: str | None = None,
    concurrency: int | None = None,
    request_timeout: float | None = None,
    vllm: dict[str, Any] | None = None,
    prefix_cache_mb: int = 0,
) -> Backend:
    """local: transformers here, built (and torch imported) on first use; openai: an OpenAI-compatible server;
    vllm: a `vllm serve` glmv starts and stops (`vllm` holds ManagedVllmBackend's options)."""
    if backend == "vllm":
        from glmv_cli.engine.managed import ManagedVllmBackend

        options = {"dtype": dtype, "quant": quant, "revision": revision}
        options |= {k: v for k, v in (vllm or {}).items() if v is not None}
        return ManagedVllmBackend(
            model, concurrency=concurrency or batch_size, request_timeout=request_timeout, **options
        )
    if backend == "openai":
        from glmv_cli.engine.remote import RemoteBackend  # httpx only: never torch

        return RemoteBackend(
            base_urls or [],
            api_key=api_key,
            model=remote_model,
            concurrency=concurrency or batch_size,
            request_timeout=request_timeout,
        )
    if backend != "local":
        raise UsageError(f"unknown --backend {backend!r}", "choose " + " or ".join(BACKENDS))
    options = {"device": device, "dtype": dtype, "quant": quant, "revision": revision, "batch_size": batch_size}
    if prefix_cache_mb:
        options["prefix_cache_mb"] = prefix_cache_mb
    return cast(Backend, LazyLocalBackend(model, **options))


class LazyLocalBackend:
    """Knows its model and identity (for cache keys) without torch; a cached run never imports it.

    Anything else is looked up on the real LocalBackend, built on first use, so no method
    has to be forwarded by hand.
    """

    supports_chat = True
    # Asked by every run before it knows whether a model is needed: answered here, as LocalBackend would.
    takes_requests_as_ready = False
    accepts_encoded_images = False

    def __init__(self, model: str, **options: Any):
        self.model_id = model
        self._options = options
        self._real: Backend | None = None
        self._lock = threading.Lock()  # loader threads may all ask for the backend at once

    def identity(self) -> dict[str, Any]:
        return local_identity(self.model_id, self._options)

    @property
    def load_s(self) -> float:
        return self._real.load_s if self._real is not None else 0.0

    def close(self) -> None:
        if self._real is not None:  # nothing to release, and nothing worth loading, before first use
            self._real.close()

    @property
    def real(self) -> Backend:
        with self._lock:
            if self._real is None:
                try:
                    from glmv_cli.engine.local import LocalBackend
                except ImportError as exc:  # a torch-free install (no `local` extra)
                    if (exc.name or "").split(".")[0] in ("torch", "transformers", "tokenizers"):
                        raise ModelLoadError(LOCAL_NEEDS) from exc
                    raise
                self._real = LocalBackend(self.model_id, **self._options)
            return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private and dunder names (copy, pickle probes) are not the model's
            raise AttributeError(name)
        return getattr(self.real, name)
