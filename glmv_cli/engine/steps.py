"""The per-step logits processor: grammar masks, the closing rule, raw log-probs and timing."""

from __future__ import annotations

import time
from typing import Any

import llguidance
import numpy as np
import torch
from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask_par
from transformers import LogitsProcessor

from glmv_cli.engine.closing import Closer

_EXECUTOR: llguidance.LLExecutor | None = None


def _executor() -> llguidance.LLExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = llguidance.LLExecutor()
    return _EXECUTOR


_BITS: dict[torch.device, torch.Tensor] = {}


def _bits(device: torch.device) -> torch.Tensor:
    if device not in _BITS:
        _BITS[device] = torch.arange(32, dtype=torch.int32, device=device)
    return _BITS[device]


def apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed token scores to -inf in place (bit i of word j allows token 32*j+i).

    Not llguidance.torch.apply_token_bitmask_inplace: it is torch.compile'd, so every process
    pays seconds of compiling on first use, and at the tiny checkpoint's vocabulary it is
    slower than this (its speed shows at a full-size vocabulary).
    """
    if scores.device.type == "cpu":  # numpy unpacks bits in about half the time of torch ops
        bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little").view(np.bool_)
        allowed = torch.from_numpy(bits)[:, : scores.shape[1]]
    else:  # move the packed mask (32x smaller than a bool one) and unpack it on the device
        packed = bitmask.to(scores.device, non_blocking=True)
        allowed = ((packed.unsqueeze(-1) >> _bits(scores.device)) & 1).bool().view(packed.shape[0], -1)
        allowed = allowed[:, : scores.shape[1]]
    scores.masked_fill_(~allowed, float("-inf"))


class StepProcessor(LogitsProcessor):
    """Runs at every decoding step: records timing and raw log-probs, applies grammar masks.

    Row i is constrained by matchers[i] (None = free text). The grammar masks the scores in
    place, so log-probabilities are taken from the scores before masking.
    """

    def __init__(
        self,
        matchers: list[Any],
        vocab_size: int,
        eos_ids: set[int],
        logprobs: bool = False,
        close_after: list[int | None] | None = None,
        closer: Closer | None = None,
    ):
        self.matchers = matchers
        self.eos_ids = eos_ids
        # Per row: the step from which a constrained answer is steered to finish (None: never).
        self.close_after = close_after or [None] * len(matchers)
        self.closer = closer
        self.steps = 0
        self.closed_early = [False] * len(matchers)
        self._lex = [(False, False)] * len(matchers)  # (in a JSON string, after a backslash)
        self.bitmask = allocate_token_bitmask(len(matchers), vocab_size)
        self.first_step_at: float | None = None
        self.logprobs = logprobs
        self._last_logprobs: torch.Tensor | None = None
        self.token_logprobs: list[list[float]] = [[] for _ in matchers]
        self.errors: list[str | None] = [None] * len(matchers)
        self._done = [False] * len(matchers)
        self._tokens: list[list[int]] = [[] for _ in matchers]  # replayed into _lex if closing starts
        self.finished_at: list[float | None] = [None] * len(matchers)  # when each row chose its stop token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        else:
            self._consume(input_ids[:, -1].tolist())
        self.steps += 1
        if self.logprobs:
            self._last_logprobs = torch.log_softmax(scores.float(), dim=-1)
        constrained = [i for i, m in enumerate(self.matchers) if m is not None and not self._done[i]]
        if not constrained:
            return scores
        self._fill_masks(constrained, parallel=scores.device.type != "cpu")
        every_row = len(constrained) == scores.shape[0]
        rows = None if every_row else torch.tensor(constrained, device=scores.device)
        view = scores if every_row else scores[rows]
        mask = self.bitmask if every_row else self.bitmask[torch.tensor(constrained)]
        apply_bitmask(view, mask)
        for n, i in enumerate(constrained):
            if self.close_after[i] is not None and self.steps > self.close_after[i] and self.closer is not None:
                if not self.closed_early[i]:  # catch up on the lexical state once
                    self.closed_early[i] = True
                    self._lex[i] = Closer.advance(False, False, "".join(self.closer.texts[t] for t in self._tokens[i]))
                bias = self.closer.in_string if self._lex[i][0] else self.closer.outside
                view[n] += bias.to(view.device, view.dtype)[: view.shape[1]]
        if not every_row:
            scores[rows] = view
        return scores

    def _fill_masks(self, rows: list[int], parallel: bool) -> None:
        healthy = []
        for i in rows:
            if self.matchers[i].is_error():
                self._allow_only_eos(i)  # end the row rather than emit unconstrained text
            else:
                healthy.append(i)
        # On CPU torch's own threads already use every core: a parallel fill only adds contention
        # (measured at batch 8 on 2 cores: 335 us a step in parallel, 170-190 us one row at a time).
        if parallel and len(healthy) > 1:  # llguidance fills the rows in parallel, off the GIL
            fill_next_token_bitmask_par(_executor(), [(self.matchers[i], i) for i in healthy], self.bitmask)
        else:  # the raw call: llguidance.torch.fill_next_token_bitmask's checks add ~3 us a row
            for i in healthy:
                self.matchers[i].unsafe_compute_mask_ptr(self.bitmask[i].data_ptr(), self.bitmask.shape[1] * 4)

    def _allow_only_eos(self, i: int) -> None:
        words = self.bitmask[i].numpy().view(np.uint32)  # unsigned: bit 31 is a bit like any other
        words[:] = 0
        for token in self.eos_ids:
            words[token // 32] |= 1 << (token % 32)

    def _consume(self, tokens: list[int]) -> None:
        for i, token in enumerate(tokens):
            if self._done[i]:
                continue
            if self.logprobs and self._last_logprobs is not None:
                self.token_logprobs[i].append(float(self._last_logprobs[i, token]))
            matcher = self.matchers[i]
            if matcher is not None:
                if self.closed_early[i]:
                    self._lex[i] = Closer.advance(*self._lex[i], self.closer.texts[token])
                else:
                    self._tokens[i].append(token)
            if matcher is not None and not matcher.is_error():
                matcher.consume_token(token)
                if matcher.is_error():
                    self.errors[i] = matcher.get_error()
            # A finished grammar keeps masking (EOS only) until the row actually stops.
            if token in self.eos_ids:
                self._done[i] = True
                self.finished_at[i] = time.perf_counter()

    def finish(self, last_tokens: list[int]) -> None:
        """Account for the last step's tokens, which no further call saw."""
        if self.first_step_at is not None:
            self._consume(last_tokens)
