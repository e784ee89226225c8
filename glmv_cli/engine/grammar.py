"""Constrained decoding with llguidance: JSON Schema -> grammar -> token mask per step.

llguidance (Rust, no triton) compiles a schema lazily and fills a vocabulary bitmask in tens
of microseconds per token. The tokenizer wrapper is built once per model and the grammar
string once per schema; each request gets a fresh matcher.
"""

from __future__ import annotations

import json
import time
from typing import Any

import llguidance
import torch
from transformers import LogitsProcessor

# Compact JSON: no free whitespace, so a weak model cannot loop on spaces.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


class GrammarCompiler:
    """Holds the llguidance tokenizer for one model and a cache of compiled schemas."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_ids: list[int]):
        import llguidance.hf

        started = time.perf_counter()
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
        self.vocab_size = vocab_size
        self.setup_s = time.perf_counter() - started
        self._grammars: dict[str, str] = {}

    def grammar(self, schema: dict[str, Any]) -> str:
        """The grammar for a JSON Schema, validated once and cached."""
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if key not in self._grammars:
            started = time.perf_counter()
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if is_error:
                raise ValueError(f"schema cannot be compiled to a grammar: {messages[0]}")
            self._grammars[key] = grammar
            self.setup_s += time.perf_counter() - started
        return self._grammars[key]

    def matcher(self, schema: dict[str, Any]) -> llguidance.LLMatcher:
        return llguidance.LLMatcher(self.tokenizer, self.grammar(schema), log_level=0)


def apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed token scores to -inf in place (bit i of word j allows token 32*j+i)."""
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> bits) & 1).bool().view(bitmask.shape[0], -1)
    allowed = allowed[:, : scores.shape[1]].to(scores.device)
    scores.masked_fill_(~allowed, float("-inf"))


class StepProcessor(LogitsProcessor):
    """Runs at every decoding step: records timing and raw log-probs, applies grammar masks.

    Row i is constrained by matchers[i] (None = free text). The grammar masks the scores in
    place, so log-probabilities are taken from the scores before masking.
    """

    def __init__(self, matchers: list[Any], vocab_size: int, eos_ids: set[int], logprobs: bool = False):
        self.matchers = matchers
        self.eos_ids = eos_ids
        self.bitmask = torch.full((len(matchers), (vocab_size + 31) // 32), -1, dtype=torch.int32)
        self.first_step_at: float | None = None
        self.logprobs = logprobs
        self._last_logprobs: torch.Tensor | None = None
        self.token_logprobs: list[list[float]] = [[] for _ in matchers]
        self.errors: list[str | None] = [None] * len(matchers)
        self._done = [False] * len(matchers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        elif self.logprobs or any(self.matchers):
            self._consume(input_ids[:, -1].tolist())
        if self.logprobs:
            self._last_logprobs = torch.log_softmax(scores.float(), dim=-1)
        constrained = [i for i, m in enumerate(self.matchers) if m is not None and not self._done[i]]
        if constrained:
            for i in constrained:
                if self.matchers[i].is_error():
                    self._allow_only_eos(i)  # end the row rather than emit unconstrained text
                else:
                    self.matchers[i].unsafe_compute_mask_ptr(self.bitmask[i].data_ptr(), self.bitmask.shape[1] * 4)
            rows = torch.tensor(constrained)
            masked = scores[rows]
            apply_bitmask(masked, self.bitmask[rows])
            scores[rows] = masked
        return scores

    def _allow_only_eos(self, i: int) -> None:
        self.bitmask[i].zero_()
        for token in self.eos_ids:
            self.bitmask[i, token // 32] |= 1 << (token % 32)

    def _consume(self, tokens: list[int]) -> None:
        for i, token in enumerate(tokens):
            if self._done[i]:
                continue
            if self.logprobs and self._last_logprobs is not None:
                self.token_logprobs[i].append(float(self._last_logprobs[i, token]))
            matcher = self.matchers[i]
            if matcher is not None and not matcher.is_error():
                matcher.consume_token(token)
                if matcher.is_error():
                    self.errors[i] = matcher.get_error()
            # A finished grammar keeps masking (EOS only) until the row actually stops.
            self._done[i] = token in self.eos_ids

    def finish(self, last_tokens: list[int]) -> None:
        """Account for the last step's tokens, which no further call saw."""
        if self.first_step_at is not None and (self.logprobs or any(self.matchers)):
            self._consume(last_tokens)
