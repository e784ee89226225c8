"""A stopping criterion that never stops: counts generated tokens and notes when the first came."""

from __future__ import annotations

import time

import torch
from transformers import StoppingCriteria


class StepCounter(StoppingCriteria):
    """Called once per generated token, after prefill; decode time is from the first call to the end."""

    def __init__(self) -> None:
        self.steps = 0
        self.first_at: float | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        self.steps += 1
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def decode_s(self) -> float:
        """Seconds from the first token to now (call right after generate returns)."""
        return time.perf_counter() - self.first_at if self.first_at is not None else 0.0
