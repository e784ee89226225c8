"""Create a backend by name; each backend module is imported only when chosen."""

from __future__ import annotations

from glmv_cli.engine.base import Backend


def create_backend(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    quant: str = "auto",
    revision: str | None = None,
    batch_size: int | None = None,
) -> Backend:
    """The local transformers backend (loads lazily, on first use)."""
    from glmv_cli.engine.local import LocalBackend

    return LocalBackend(model, device=device, dtype=dtype, quant=quant, revision=revision, batch_size=batch_size)
