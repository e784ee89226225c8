"""The local backend: GLM-4.6V-Flash through transformers `generate`, batched and constrained."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

from glmv_cli import DEFAULT_MODEL
from glmv_cli.engine.base import Backend, Generation, GenerationSettings, Request
from glmv_cli.engine.closing import Closer, closing_step
from glmv_cli.engine.grammar import GrammarCompiler
from glmv_cli.engine.identity import local_identity
from glmv_cli.engine.loader import LoadedModel, load_model
from glmv_cli.engine.steps import StepProcessor
from glmv_cli.engine.text import THINK_CLOSE, AnswerFilter, split_thinking

_MODELS: dict[tuple, LoadedModel] = {}
CPU_TOKEN_BUDGET = 8 * 8192  # no device memory to size by on CPU: eight rows of 8k tokens
GPU_MEMORY_SHARE = 0.6  # of the memory free once the weights are in, for the KV cache and activations
_MODELS_LOCK = threading.Lock()


class _TextStreamer(BaseStreamer):
    """Decodes a single row incrementally and hands answer text to a callback."""

    def __init__(self, tokenizer: Any, stop_ids: set[int], on_text: Callable[[str], None], thinking: bool):
        self.tokenizer, self.stop_ids, self.on_text = tokenizer, stop_ids, on_text
        self.filter = AnswerFilter(thinking=thinking)
        self.ids: list[int] = []
        self.emitted = 0
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # generate hands over the prompt first
            self.seen_prompt = True
            return
        self.ids.extend(t for t in value.reshape(-1).tolist() if t not in self.stop_ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return  # a multi-byte character is still arriving
        piece, self.emitted = text[self.emitted :], len(text)
        if out := self.filter.feed(piece):
            self.on_text(out)

    def end(self) -> None:
        if out := self.filter.flush():
            self.on_text(out)


class LocalBackend(Backend):
    """Runs the model in this process; loads it on first use, once."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quant: str = "auto",
        revision: str | None = None,
        batch_size: int | None = None,
    ):
        self.model_id = model
        self._options = {"device": device, "dtype": dtype, "quant": quant, "revision": revision}
        self._batch_size = batch_size
        self._loaded: LoadedModel | None = None
        self._budget: int | None = None
        self._budget_scale = 1.0  # halved by every out-of-memory error

    # -- loading -------------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            key = (self.model_id, tuple(sorted(self._options.items(), key=lambda kv: kv[0])))
            with _MODELS_LOCK:  # one copy of the weights per process, however many backends
                if key not in _MODELS:
                    _MODELS[key] = load_model(self.model_id, **self._options)
                self._loaded = _MODELS[key]
                self.load_s = self._loaded.load_s
        return self._loaded

    @property
    def grammar(self) -> GrammarCompiler:
        lm = self.loaded
        if lm.grammar is None:  # shared with every backend on the same weights
            lm.grammar = GrammarCompiler(lm.tokenizer, lm.vocab_size, lm.eos_ids)
        return lm.grammar

    @property
    def closer(self) -> Closer:
        lm = self.loaded
        if lm.closer is None:  # shared like the grammar; its token tables are built on first closing
            lm.closer = Closer(lm.tokenizer, lm.vocab_size, lm.eos_ids)
        return lm.closer

    def prepare_schema(self, schema: dict[str, Any]) -> float:
        """Compile a schema's grammar ahead of the first document; returns set-up seconds."""
        self.grammar.grammar(schema)
        return self.grammar.setup_s

    def identity(self) -> dict[str, Any]:
        return local_identity(self.model_id, self._options)

    def default_batch_size(self) -> int:
        """Most rows per batch; on CUDA the token budget does the real sizing, so this only caps rows."""
        if self._batch_size:
            return self._batch_size
        return 32 if self.loaded.device.startswith("cuda") else 8

    def token_budget(self) -> int | None:
        """60% of the GPU memory free after loading, over the KV-cache bytes per token; fixed on CPU."""
        if self._budget is None:
            lm = self.loaded
            if lm.device.startswith("cuda"):
                free, _ = torch.cuda.mem_get_info(torch.device(lm.device))
                self._budget = int(free * GPU_MEMORY_SHARE // kv_cache_bytes_per_token(lm.model.config, lm.model.dtype))
            else:
                self._budget = CPU_TOKEN_BUDGET
        return max(1, int(self._budget * self._budget_scale))

    def estimate_tokens(self, request: Request) -> int:
        if request.prepared is None:
            return super().estimate_tokens(request)
        encoding = request.prepared[1][0]
        return int(encoding["input_ids"].shape[1]) + request.settings.max_new_tokens

    def held_bytes(self, request: Request) -> int:
        if request.prepared is None:
            return 0
        return sum(t.numel() * t.element_size() for t in request.prepared[1][0].values())

    def max_image_pixels(self) -> int | None:
        size = getattr(self.loaded.processor.image_processor, "size", None)
        longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
        return int(longest) if longest else None

    # -- generation ----------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        results: dict[int, Generation] = {}
        order = sorted(range(len(requests)), key=lambda i: _settings_key(requests[i]))
        for _, group in groupby(order, key=lambda i: _settings_key(requests[i])):
            idx = list(group)
            for i, gen in zip(idx, self._generate_group([requests[i] for i in idx]), strict=True):
                results[i] = gen
        return [results[i] for i in range(len(requests))]

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        lm = self.loaded
        streamer = _TextStreamer(
            lm.tokenizer, set(lm.eos_ids) | {lm.tokenizer.pad_token_id}, on_text, thinking=request.settings.think
        )
        return self._generate_group([request], streamer=streamer)[0]

    def _generate_group(self, requests: list[Request], streamer: BaseStreamer | None = None) -> list[Generation]:
        settings = requests[0].settings
        try:
            if settings.think and any(r.json_schema for r in requests):
                return self._think_then_answer(requests)
            return self._run(requests, settings, streamer=streamer)
        except Exception as exc:  # noqa: BLE001 - turned into per-row errors below
            error, out_of_memory = _one_line(exc), _is_out_of_memory(exc)
        # Outside the except block: the traceback, and the batch tensors its frames hold, are gone.
        if out_of_memory:
            _release_memory()
            self._budget_scale /= 2  # later batches are planned smaller too
        if len(requests) == 1:
            return [Generation(finish_reason="error", error=error, tag=requests[0].tag)]
        if out_of_memory:  # halve the batch; each half may halve again
            half = len(requests) // 2
            return self._generate_group(requests[:half]) + self._generate_group(requests[half:])
        # One bad row must not sink its batch: retry each alone.
        return [self._generate_group([r])[0] for r in requests]

    def _think_then_answer(self, requests: list[Request]) -> list[Generation]:
        """Free thinking up to a budget, then the constrained JSON after </think>."""
        settings = requests[0].settings
        budget = settings.think_budget or settings.max_new_tokens
        free = settings.model_copy(update={"max_new_tokens": budget})
        thoughts = self._run(requests, free, stop_at_think_close=True, think=True, constrained=False)
        answers = []
        for req, thought in zip(requests, thoughts, strict=True):
            prefix = f"<think>{thought.thinking or thought.text}{THINK_CLOSE}\n"
            answers.append(req.model_copy(update={"assistant_prefix": prefix}))
        # The thinking template (no /nothink), continued after the closed think block.
        finals = self._run(answers, settings, think=True)
        for final, thought in zip(finals, thoughts, strict=True):
            final.thinking = thought.thinking or thought.text
            final.output_tokens += thought.output_tokens
            final.generate_s += thought.generate_s
            final.decode_s += thought.decode_s
            final.ttft_s = thought.ttft_s
        return finals

    def prepare(self, request: Request) -> Request:
        """Run the processor (resize, patchify, tokenise) for one request, off the model's thread."""
        encoding = self._encode(request, request.settings.think)
        return request.model_copy(update={"prepared": (_encoding_key(request, request.settings.think), encoding)})

    def _encoded(self, request: Request, think: bool) -> tuple[dict[str, torch.Tensor], float]:
        """The request's encoding: the prepared one when it still matches the request, else made now."""
        if request.prepared is not None and request.prepared[0] == _encoding_key(request, think):
            return request.prepared[1]
        return self._encode(request, think)

    def _encode(self, request: Request, think: bool) -> tuple[dict[str, torch.Tensor], float]:
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"text": self._prompts([request], think), "return_tensors": "pt"}
        if request.images:
            kwargs["images"] = [list(request.images)]
        encoding = dict(self.loaded.processor(**kwargs))
        encoding.pop("token_type_ids", None)
        if "pixel_values" in encoding:  # held until its batch runs: in the model's dtype, not float32
            encoding["pixel_values"] = encoding["pixel_values"].to(self.loaded.model.dtype)
        return encoding, time.perf_counter() - started

    def _prompts(self, requests: list[Request], think: bool) -> list[str]:
        lm = self.loaded
        texts = []
        for req in requests:
            messages = []
            if req.system:
                messages.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
            content = [{"type": "image"} for _ in req.images] + [{"type": "text", "text": req.prompt}]
            messages.append({"role": "user", "content": content})
            text = lm.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, enable_thinking=think
            )
            texts.append(text + req.assistant_prefix)
        return texts

    def _run(
        self,
        requests: list[Request],
        settings: GenerationSettings,
        *,
        streamer: BaseStreamer | None = None,
        stop_at_think_close: bool = False,
        think: bool | None = None,
        constrained: bool = True,
    ) -> list[Generation]:
        lm = self.loaded
        think = settings.think if think is None else think
        started = time.perf_counter()
        encoded = [self._encoded(r, think) for r in requests]
        inputs = collate([e for e, _ in encoded], lm.tokenizer.pad_token_id)
        inputs = {k: v.to(lm.model.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(lm.model.dtype)
        # Per row: its own encoding time, wherever it ran (a loader thread, or here).
        preprocess = [seconds for _, seconds in encoded]

        eos_ids = list(lm.eos_ids)
        if stop_at_think_close:
            eos_ids.append(lm.tokenizer.convert_tokens_to_ids(THINK_CLOSE))
        matchers = [self.grammar.matcher(r.json_schema) if r.json_schema and constrained else None for r in requests]
        steps = StepProcessor(
            matchers,
            lm.vocab_size,
            set(eos_ids),
            logprobs=settings.logprobs,
            close_after=[
                closing_step(settings.max_new_tokens, self.closer.reserve(r.json_schema)) if m is not None else None
                for r, m in zip(requests, matchers, strict=True)
            ],
            closer=self.closer,
        )
        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=settings.temperature > 0,
            temperature=settings.temperature if settings.temperature > 0 else None,
            top_p=settings.top_p if settings.temperature > 0 else None,
            top_k=None,
            eos_token_id=eos_ids,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        with torch.inference_mode():
            out = lm.model.generate(**inputs, generation_config=config, logits_processor=[steps], streamer=streamer)
        ended = time.perf_counter()
        prompt_len = inputs["input_ids"].shape[1]
        new = out[:, prompt_len:]
        steps.finish(new[:, -1].tolist() if new.shape[1] else [])
        first = steps.first_step_at or ended
        timing = {
            "ttft_s": first - started,
            "generate_s": ended - started,
            "batch_size": len(requests),
        }
        return [
            self._decode(
                row,
                requests[i],
                steps,
                i,
                int(inputs["attention_mask"][i].sum()),
                set(eos_ids),
                think,
                # decode time of this row: until it stopped, not until the batch's slowest row did
                {**timing, "decode_s": (steps.finished_at[i] or ended) - first, "preprocess_s": preprocess[i]},
            )
            for i, row in enumerate(new.tolist())
        ]

    def _decode(
        self,
        row: list[int],
        req: Request,
        steps: StepProcessor,
        i: int,
        prompt_tokens: int,
        eos_ids: set[int],
        think: bool,
        timing: dict[str, Any],
    ) -> Generation:
        tok = self.loaded.tokenizer
        stop = next((n for n, t in enumerate(row) if t in eos_ids), None)
        ids = row[:stop] if stop is not None else row
        raw = tok.decode(ids, skip_special_tokens=False)
        # With thinking on, the answer starts inside a think block, unless the prefix already closed it.
        opens_thinking = think and THINK_CLOSE not in req.assistant_prefix
        thinking, text = split_thinking(("<think>" if opens_thinking else "") + raw)
        logprobs = steps.token_logprobs[i][: len(ids)] if req.settings.logprobs else None
        error = steps.errors[i]
        return Generation(
            text=text.strip(),
            thinking=thinking,
            prompt_tokens=prompt_tokens,
            output_tokens=len(ids) + (1 if stop is not None else 0),
            finish_reason="error" if error else ("stop" if stop is not None else "length"),
            error=f"grammar: {error}" if error else None,
            closed_early=steps.closed_early[i],
            **timing,
            token_logprobs=logprobs,
            tokens=[tok.decode([t]) for t in ids] if logprobs is not None else None,
            token_bytes=[self.grammar.tokenizer.decode_bytes([t]) for t in ids] if logprobs is not None else None,
            tag=req.tag,
        )


def kv_cache_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """layers x KV heads x head size x 2 (keys and values) x bytes per value, from the loaded config."""
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    width = torch.empty((), dtype=dtype).element_size()
    return text.num_hidden_layers * kv_heads * head_dim * 2 * width


def collate(encodings: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Stack single-request encodings into a batch: left padding, images concatenated in order.

    The same tensors the processor makes for a padded batch, so preprocessing can run per
    request in loader threads.
    """
    width = max(e["input_ids"].shape[1] for e in encodings)
    pads = {"input_ids": pad_id, "attention_mask": 0, "mm_token_type_ids": 0}
    batch = {
        key: torch.cat([torch.nn.functional.pad(e[key], (width - e[key].shape[1], 0), value=value) for e in encodings])
        for key, value in pads.items()
        if key in encodings[0]
    }
    for key in ("pixel_values", "image_grid_thw"):
        parts = [e[key] for e in encodings if key in e]
        if parts:
            batch[key] = torch.cat(parts)
    return batch


def _encoding_key(request: Request, think: bool) -> tuple:
    """What a prepared encoding depends on: a repaired or re-prefixed request must be encoded again."""
    return (request.prompt, request.system, request.assistant_prefix, think, len(request.images))


def _settings_key(request: Request) -> str:
    return request.settings.model_dump_json()


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
