"""Compiling JSON Schemas to llguidance grammars, once per schema, and a matcher per request.

llguidance (Rust, no triton) compiles a schema lazily and fills a vocabulary bitmask in tens
of microseconds per token. The tokenizer wrapper is built once per model and the grammar
string once per schema; each request gets a fresh matcher.
"""

from __future__ import annotations

import json
import time
from typing import Any

import llguidance

from glmv_cli.engine.base import JSON_GRAMMAR_OPTIONS


class GrammarCompiler:
    """Holds the llguidance tokenizer for one model and a cache of compiled schemas."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_ids: list[int]):
        import llguidance.hf

        started = time.perf_counter()
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
        self.vocab_size = vocab_size
        self.setup_s = time.perf_counter() - started
        self._grammars: dict[str, str] = {}
        self._lark: dict[str, str] = {}

    def grammar(self, schema: dict[str, Any]) -> str:
        """The grammar for a JSON Schema, validated once and cached."""
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        if key not in self._grammars:
            started = time.perf_counter()
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_GRAMMAR_OPTIONS)
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if is_error:
                raise ValueError(f"schema cannot be compiled to a grammar: {messages[0]}")
            self._grammars[key] = grammar
            self.setup_s += time.perf_counter() - started
        return self._grammars[key]

    def matcher(self, schema: dict[str, Any]) -> llguidance.LLMatcher:
        return llguidance.LLMatcher(self.tokenizer, self.grammar(schema), log_level=0)

    def lark_matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A matcher for a Lark grammar (tool calls), validated and cached like a schema's."""
        if grammar not in self._lark:
            started = time.perf_counter()
            compiled = llguidance.grammar_from("lark", grammar)
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(compiled, self.tokenizer)
            if is_error:
                raise ValueError(f"grammar cannot be compiled: {messages[0]}")
            self._lark[grammar] = compiled
            self.setup_s += time.perf_counter() - started
        return llguidance.LLMatcher(self.tokenizer, self._lark[grammar], log_level=0)
