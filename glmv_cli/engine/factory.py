"""Create a backend by name; the heavy backend module is imported only when a model is needed."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glmv_cli.engine.base import Backend, Generation, Request


def create_backend(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quant: str = "auto",
    revision: str | None = None,
    batch_size: int | None = None,
) -> Backend:
    """The local transformers backend, behind a proxy that imports torch on first use."""
    return LazyLocalBackend(model, device=device, dtype=dtype, quant=quant, revision=revision, batch_size=batch_size)


class LazyLocalBackend(Backend):
    """Knows its identity (for cache keys) without torch; loads the real backend when asked to generate."""

    def __init__(self, model: str, **options: Any):
        self.model_id = model
        self._options = options
        self._real: Backend | None = None
        self._lock = threading.Lock()  # loader threads may all ask for the backend at once

    @property
    def real(self) -> Backend:
        with self._lock:
            if self._real is None:
                from glmv_cli.engine.local import LocalBackend

                self._real = LocalBackend(self.model_id, **self._options)
            return self._real

    @property
    def load_s(self) -> float:  # type: ignore[override]
        return self._real.load_s if self._real is not None else 0.0

    def identity(self) -> dict[str, Any]:
        return local_identity(self.model_id, self._options)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        return self.real.generate(requests)

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        return self.real.stream(request, on_text)

    def prepare(self, request: Request) -> Request:
        return self.real.prepare(request)

    def default_batch_size(self) -> int:
        return self.real.default_batch_size()

    def max_image_pixels(self) -> int | None:
        return self.real.max_image_pixels()

    def estimate_tokens(self, request: Request) -> int:
        return self.real.estimate_tokens(request)

    def held_bytes(self, request: Request) -> int:
        return self.real.held_bytes(request)

    def token_budget(self) -> int | None:
        return self.real.token_budget()


def local_identity(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """What changes a local model's answers; a local folder counts by its weights, not its spelling."""
    digest = folder_digest(model)
    opts = {k: v for k, v in options.items() if k != "batch_size"}
    return {"backend": "transformers", "model": "local-folder" if digest else model, "weights": digest, **opts}


def folder_digest(model: str) -> str | None:
    """For a local folder: its config plus the size and mtime of every weight file."""
    folder = Path(model).expanduser()
    if not (folder / "config.json").is_file():
        return None
    parts = [(folder / "config.json").read_text()]
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        stat = f.stat()
        parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
