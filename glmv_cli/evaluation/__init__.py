"""Score extraction records against ground truth: `glmv eval`."""

from glmv_cli.evaluation.report import Report, evaluate

__all__ = ["Report", "evaluate"]
