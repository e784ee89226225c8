"""Create a backend by name; the heavy backend module is imported only when a model is needed."""

from __future__ import annotations

import threading
from typing import Any, cast

from glmv_cli.engine.base import Backend
from glmv_cli.engine.identity import local_identity


def create_backend(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quant: str = "auto",
    revision: str | None = None,
    batch_size: int | None = None,
) -> Backend:
    """The local transformers backend, built (and torch imported) on first use."""
    options = {"device": device, "dtype": dtype, "quant": quant, "revision": revision, "batch_size": batch_size}
    return cast(Backend, LazyLocalBackend(model, **options))


class LazyLocalBackend:
    """Knows its model and identity (for cache keys) without torch; a cached run never imports it.

    Anything else is looked up on the real LocalBackend, built on first use, so no method
    has to be forwarded by hand.
    """

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
                from glmv_cli.engine.local import LocalBackend

                self._real = LocalBackend(self.model_id, **self._options)
            return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private and dunder names (copy, pickle probes) are not the model's
            raise AttributeError(name)
        return getattr(self.real, name)
