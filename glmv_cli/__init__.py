"""glmv: documents in, validated structured data out, with GLM-4.6V-Flash running locally."""

__version__ = "0.1.0"

DEFAULT_MODEL = "zai-org/GLM-4.6V-Flash"

__all__ = ["DEFAULT_MODEL", "Answer", "Extraction", "Glmv", "__version__"]


def __getattr__(name: str):  # the library on first use: `glmv --help` never imports it
    if name in ("Glmv", "Answer", "Extraction"):
        from glmv_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'glmv_cli' has no attribute {name!r}")
