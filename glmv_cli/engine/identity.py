"""What makes a local model's answers what they are, known without loading it (cache keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def local_identity(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """What changes a local model's answers; a local folder counts by its weights, not its spelling."""
    digest = folder_digest(model)
    opts = {k: v for k, v in options.items() if k not in ("batch_size", "prefix_cache_mb")}  # speed, not answers
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
