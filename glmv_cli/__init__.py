"""glmv: documents in, validated structured data out, with GLM-4.6V-Flash running locally."""

__version__ = "0.1.0"

DEFAULT_MODEL = "zai-org/GLM-4.6V-Flash"
