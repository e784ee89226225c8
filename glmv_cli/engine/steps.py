"""The per-step rules: grammar masks, the closing rule, raw log-probs and timing, row by row.

`RowSteps` is one row's state; `StepProcessor` applies the rules to a step's scores for
whichever rows are in the batch at that step. The decode loop (decode.py) changes `rows` as
rows join and leave; wrapped around `generate` it is an ordinary `LogitsProcessor` over a
fixed batch.
"""

from __future__ import annotations

import time
from typing import Any

import llguidance
import numpy as np
import torch
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask_par
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


class RowSteps:
    """One row's state across decoding steps: its grammar, closing rule, chosen tokens and their log-probs."""

    def __init__(
        self,
        matcher: Any = None,
        close_after: int | None = None,
        logprobs: bool = False,
        stop_ids: set[int] | None = None,
    ):
        self.matcher = matcher  # None: free text
        self.close_after = close_after  # the step from which a constrained answer is steered to finish
        self.logprobs = logprobs
        self.stop_ids = stop_ids  # None: the processor's EOS ids
        self.steps = 0  # scores seen
        self.tokens: list[int] = []  # chosen so far (replayed into the lexical state if closing starts)
        self.token_logprobs: list[float] = []
        self.closed_early = False
        self.lex = (False, False)  # (in a JSON string, after a backslash), tracked once closing starts
        self.error: str | None = None
        self.done = False  # chose a stop token
        self.first_step_at: float | None = None
        self.finished_at: float | None = None  # when the row chose its stop token
        self.step_logprobs: torch.Tensor | None = None  # this step's raw log-probs, one row


class StepProcessor(LogitsProcessor):
    """Runs at every decoding step: records timing and raw log-probs, applies grammar masks.

    Row i is constrained by rows[i].matcher (None = free text). The grammar masks the scores in
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
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.closer = closer
        close_after = close_after or [None] * len(matchers)
        self.rows = [RowSteps(m, c, logprobs) for m, c in zip(matchers, close_after, strict=True)]
        self._allocate(max(1, len(matchers)))

    def _allocate(self, rows: int) -> None:
        """llguidance's numpy bitmask and a torch view of the same memory.

        Not llguidance.torch: importing it imports torch's compiler stack (its
        apply_token_bitmask_inplace is torch.compile'd), about 2 s of every glmv process.
        """
        self.words = allocate_token_bitmask(rows, self.vocab_size)
        self.bitmask = torch.from_numpy(self.words)

    def __call__(self, input_ids: torch.LongTensor | None, scores: torch.FloatTensor) -> torch.FloatTensor:
        """One step: `generate` hands the tokens chosen at the previous step (the decode loop consumes its own)."""
        if input_ids is not None and any(r.steps for r in self.rows):
            self.consume(input_ids[:, -1].tolist())
        rows = self.rows
        now = time.perf_counter()
        for row in rows:
            row.steps += 1
            if row.first_step_at is None:
                row.first_step_at = now
        wanted = [n for n, r in enumerate(rows) if r.logprobs and not r.done]
        if wanted:
            every_row = len(wanted) == len(rows)
            logprobs = torch.log_softmax((scores if every_row else scores[wanted]).float(), dim=-1)
            for k, n in enumerate(wanted):
                rows[n].step_logprobs = logprobs[k]
        constrained = [n for n, r in enumerate(rows) if r.matcher is not None and not r.done]
        if not constrained:
            return scores
        if self.bitmask.shape[0] < len(rows):
            self._allocate(len(rows))
        self._fill_masks(constrained, parallel=scores.device.type != "cpu")
        every_row = len(constrained) == scores.shape[0]
        index = None if every_row else torch.tensor(constrained, device=scores.device)
        view = scores if every_row else scores[index]
        mask = self.bitmask[: len(rows)] if every_row else self.bitmask[torch.tensor(constrained)]
        apply_bitmask(view, mask)
        for k, n in enumerate(constrained):
            row = rows[n]
            if row.close_after is not None and row.steps > row.close_after and self.closer is not None:
                if not row.closed_early:  # catch up on the lexical state once
                    row.closed_early = True
                    row.lex = Closer.advance(False, False, "".join(self.closer.texts[t] for t in row.tokens))
                bias = self.closer.in_string if row.lex[0] else self.closer.outside
                view[k] += bias.to(view.device, view.dtype)[: view.shape[1]]
        if not every_row:
            scores[index] = view
        return scores

    def _fill_masks(self, rows: list[int], parallel: bool) -> None:
        healthy = []
        for i in rows:
            if self.rows[i].matcher.is_error():
                self._allow_only_eos(i)  # end the row rather than emit unconstrained text
            else:
                healthy.append(i)
        # On CPU torch's own threads already use every core: a parallel fill only adds contention
        # (measured at batch 8 on 2 cores: 335 us a step in parallel, 170-190 us one row at a time).
        if parallel and len(healthy) > 1:  # llguidance fills the rows in parallel, off the GIL
            fill_next_token_bitmask_par(_executor(), [(self.rows[i].matcher, i) for i in healthy], self.words)
        else:  # the raw call: llguidance's fill_next_token_bitmask checks add ~3 us a row
            for i in healthy:
                self.rows[i].matcher.unsafe_compute_mask_ptr(self.words[i].ctypes.data, self.words.shape[1] * 4)

    def _allow_only_eos(self, i: int) -> None:
        words = self.words[i].view(np.uint32)  # unsigned: bit 31 is a bit like any other
        words[:] = 0
        for token in self.eos_ids:
            words[token // 32] |= 1 << (token % 32)

    def consume(self, tokens: list[int]) -> None:
        """Record the token each row chose at this step (rows that already stopped ignore theirs)."""
        for row, token in zip(self.rows, tokens, strict=True):
            if not row.done:
                self.consume_row(row, token)

    def consume_row(self, row: RowSteps, token: int) -> None:
        if row.logprobs and row.step_logprobs is not None:
            row.token_logprobs.append(float(row.step_logprobs[token]))
        matcher = row.matcher
        if matcher is not None and row.closed_early:
            row.lex = Closer.advance(*row.lex, self.closer.texts[token])
        row.tokens.append(token)
        if matcher is not None and not matcher.is_error():
            matcher.consume_token(token)
            if matcher.is_error():
                row.error = matcher.get_error()
        # A finished grammar keeps masking (EOS only) until the row actually stops.
        if token in (self.eos_ids if row.stop_ids is None else row.stop_ids):
            row.done = True
            row.finished_at = time.perf_counter()

    def forced(self, row: RowSteps, room: int) -> list[int]:
        """The tokens the row's grammar allows no alternative to, at most `room`, stopping before a stop token."""
        matcher = row.matcher
        if matcher is None or room <= 0 or row.done or matcher.is_error():
            return []
        stops = self.eos_ids if row.stop_ids is None else row.stop_ids
        forced = []
        for token in matcher.compute_ff_tokens()[:room]:
            if token in stops:
                break
            forced.append(token)
        return forced

    def consume_forced(self, row: RowSteps, tokens: list[int]) -> None:
        """Record forced tokens (fed with this step's choice); their log-probs come from that forward (score_forced)."""
        if row.closed_early:
            row.lex = Closer.advance(*row.lex, "".join(self.closer.texts[t] for t in tokens))
        row.matcher.consume_tokens(tokens)
        if row.matcher.is_error():
            row.error = row.matcher.get_error()
        row.tokens.extend(tokens)
        row.steps += len(tokens)  # the closing rule counts tokens, chosen or forced

    def score_forced(self, logits: torch.Tensor, runs: list[tuple[RowSteps, list[int]] | None]) -> None:
        """Log-probs of forced tokens from the raw logits that preceded each (unmasked, as for chosen tokens).

        `logits` is a step's (rows, width, vocab); runs[i] is row i's state and its run (the chosen token,
        then the forced ones) at the right end of the step, or None for a row whose forced tokens are not
        scored. One log-softmax and one gather for the whole step.
        """
        width = logits.shape[1]
        rows, columns, tokens = [], [], []
        for i, item in enumerate(runs):
            if item is not None:
                run = item[1]
                for k, token in enumerate(run[1:]):
                    rows.append(i)
                    columns.append(width - len(run) + k)  # the column whose logits chose this token
                    tokens.append(token)
        if not tokens:
            return
        device = logits.device
        picked = logits[torch.tensor(rows, device=device), torch.tensor(columns, device=device)]
        logprobs = torch.log_softmax(picked.float(), dim=-1)
        values = logprobs[torch.arange(len(tokens), device=device), torch.tensor(tokens, device=device)].tolist()
        at = 0
        for item in runs:
            if item is not None:
                n = len(item[1]) - 1
                item[0].token_logprobs.extend(values[at : at + n])
                at += n

    def finish(self, last_tokens: list[int]) -> None:
        """Account for the last step's tokens, which no further call saw (generate's path)."""
        if any(r.steps for r in self.rows) and last_tokens:
            self.consume(last_tokens)
