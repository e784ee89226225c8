"""The local backend: GLM-4.6V-Flash in this process, continuously batched (decode.py) and constrained."""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from glmv_cli import DEFAULT_MODEL
from glmv_cli.engine.base import Backend, Generation, Request
from glmv_cli.engine.closing import Closer, closing_step
from glmv_cli.engine.decode import Batcher, Finished, KVBatch, Row, Sampler
from glmv_cli.engine.grammar import GrammarCompiler
from glmv_cli.engine.identity import local_identity
from glmv_cli.engine.loader import LoadedModel, load_model
from glmv_cli.engine.prefix import ImageCache, Prefix, PrefixCache, encode_with_images
from glmv_cli.engine.steps import RowSteps, StepProcessor
from glmv_cli.engine.text import THINK_CLOSE, AnswerFilter, split_thinking

_MODELS: dict[tuple, LoadedModel] = {}
# Kept prompt prefixes (page images) for follow-up questions, off by default: a batch of distinct
# documents never asks twice. glmv serve keeps 1 GB: GLM-4.6V-Flash holds about 40 KB per token in
# bf16, 140 MB for an A4 page at 150 dpi, so about 7 pages.
PREFIX_CACHE_MB = 0
IMAGE_CACHE_SHARE = 4  # processed page images kept beside the prefixes: a quarter of their bytes
CPU_TOKEN_BUDGET = 8 * 8192  # no device memory to size by on CPU: eight rows of 8k tokens
GPU_MEMORY_SHARE = 0.6  # of the memory free once the weights are in, for the KV cache and activations
# Prompt tokens per prefill (rows x longest prompt), vLLM's default batched-token limit too: short
# prompts still prefill many rows at once; one A4 page at 150 dpi (about 2,800 visual tokens) prefills
# beside one other, an 8-page document alone; each then joins the running rows for decoding.
PREFILL_TOKENS = 8192
_MODELS_LOCK = threading.Lock()


class _TextFeed:
    """Decodes one row's tokens incrementally and hands answer text to a callback.

    Constant work per token: a fast tokenizer's DecodeStream keeps only the few tokens a character
    or a merge may still span (decoding the whole row again at every token made streaming grow with
    the square of the answer); other tokenizers decode a short window the same way.
    """

    WINDOW = 8  # tokens of context kept for tokenizers without DecodeStream

    def __init__(self, tokenizer: Any, stop_ids: set[int], on_text: Callable[[str], None], thinking: bool):
        self.tokenizer, self.stop_ids, self.on_text = tokenizer, stop_ids, on_text
        self.filter = AnswerFilter(thinking=thinking)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.stream = None
        if backend is not None:
            from tokenizers.decoders import DecodeStream

            self.backend, self.stream = backend, DecodeStream(skip_special_tokens=False)
        self.ids: list[int] = []  # without DecodeStream: the window, then the tokens not yet shown
        self.shown = 0  # of self.ids, those whose text is out

    def __call__(self, token: int) -> None:
        if token in self.stop_ids:
            return
        piece = self.stream.step(self.backend, token) if self.stream is not None else self._window_step(token)
        if piece and (out := self.filter.feed(piece)):
            self.on_text(out)

    def _window_step(self, token: int) -> str | None:
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        before = decode(self.ids[: self.shown])
        self.ids.append(token)
        text = decode(self.ids)
        if text.endswith("\ufffd"):
            return None  # a multi-byte character is still arriving
        piece = text[len(before) :]
        keep = max(0, len(self.ids) - self.WINDOW)
        self.ids, self.shown = self.ids[keep:], len(self.ids) - keep
        return piece

    def end(self) -> None:
        if out := self.filter.flush():
            self.on_text(out)


@dataclass(eq=False)
class _Work:
    """One pass of one request through the model (a thinking request with a schema makes two)."""

    request: Request
    index: int  # the request's place in its call
    think: bool  # the chat template's thinking switch
    constrained: bool  # the request's JSON Schema applies to this pass
    max_new_tokens: int
    stop_at_think_close: bool = False  # the thinking pass
    thought: Generation | None = None  # the finished thinking pass, for the answer pass
    on_text: Callable[[str], None] | None = None


class LocalBackend(Backend):
    """Runs the model in this process; loads it on first use, once."""

    supports_chat = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        dtype: str = "auto",
        quant: str = "auto",
        revision: str | None = None,
        batch_size: int | None = None,
        prefix_cache_mb: int = PREFIX_CACHE_MB,
    ):
        self.model_id = model
        self._prefix_bytes = prefix_cache_mb * 2**20
        self._prefixes: PrefixCache | None = None
        # The pages' processed pixels beside their prefixes: a follow-up skips the processor too.
        self._images = ImageCache(self._prefix_bytes // IMAGE_CACHE_SHARE)
        self._options = {"device": device, "dtype": dtype, "quant": quant, "revision": revision}
        self._batch_size = batch_size
        self._loaded: LoadedModel | None = None
        self._budget: int | None = None
        self._budget_scale = 1.0  # halved by every out-of-memory error
        self.prefill_tokens: int | None = PREFILL_TOKENS

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
        """Most rows decoding at once; the token budget does the real sizing, so this only caps rows.

        32 on every device: on CPU too the budget (CPU_TOKEN_BUDGET) bounds the cache, and more rows
        share each step's fixed costs (tiny checkpoint, 32 invoices: 4.6 docs/s at 8 rows, 6.0 at 32).
        """
        return self._batch_size or 32

    def token_budget(self) -> int | None:
        """60% of the GPU memory free after loading, over the KV-cache bytes per token; fixed on CPU."""
        if self._budget is None:
            lm = self.loaded
            if lm.device.startswith("cuda"):
                free, _ = torch.cuda.mem_get_info(torch.device(lm.device))
                self._budget = int(
                    free * GPU_MEMORY_SHARE // kv_cache_bytes_per_token(lm.model.config, lm.kv_dtype or lm.model.dtype)
                )
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
        tensors = [t for t in request.prepared[1][0].values() if isinstance(t, torch.Tensor)]  # not the digests
        return sum(t.numel() * t.element_size() for t in tensors)

    def max_image_pixels(self) -> int | None:
        """The pixels GLM's processor keeps per image: `longest_edge` over its temporal patch.

        It counts an image as `temporal_patch_size` frames (2: an image is its own second frame), so
        `longest_edge` 9,633,792 keeps 4,816,896 pixels, 6,144 visual tokens. Fitting pages to twice
        that left the processor a second downscale of every large page.
        """
        image_processor = self.loaded.processor.image_processor
        size = getattr(image_processor, "size", None)
        longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
        frames = int(getattr(image_processor, "temporal_patch_size", None) or 1)
        return int(longest) // frames if longest else None

    # -- generation ----------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Answer a batch: every request may run at once; finished rows leave as they stop."""
        works = [self._first_pass(r, i) for i, r in enumerate(requests)]
        results: dict[int, Generation] = {}
        for work, gen in self._decode(works, max_rows=lambda: max(1, len(works)), budget=lambda: None):
            results[work.index] = gen
        return [results[i] for i in range(len(requests))]

    def generate_stream(
        self, requests: Iterable[Request | None], *, max_rows: int | None = None
    ) -> Iterator[Generation]:
        """Answer requests as they come, yielding each generation as soon as it is done (completion order).

        Up to `max_rows` rows (default: default_batch_size()) decode together within the token
        budget; a request is pulled from `requests` whenever a slot frees. `None` from `requests`
        means none is ready yet: the running rows go on decoding. Each generation carries its
        request's tag.
        """
        works = (None if r is None else self._first_pass(r, i) for i, r in enumerate(requests))
        for _, gen in self._decode(works, max_rows=lambda: max_rows or self.default_batch_size(), budget=None):
            yield gen

    def stream(self, request: Request, on_text: Callable[[str], None]) -> Generation:
        return next(self._decode([self._first_pass(request, 0, on_text)], max_rows=lambda: 1, budget=lambda: None))[1]

    def _first_pass(self, request: Request, index: int, on_text: Callable[[str], None] | None = None) -> _Work:
        settings = request.settings
        if settings.think and request.json_schema:  # free thinking up to a budget, then the JSON after </think>
            budget = settings.think_budget or settings.max_new_tokens
            return _Work(request, index, True, False, budget, stop_at_think_close=True, on_text=on_text)
        return _Work(request, index, settings.think, True, settings.max_new_tokens, on_text=on_text)

    def _decode(
        self,
        works: Iterable[_Work | None],
        *,
        max_rows: Callable[[], int],
        budget: Callable[[], int | None] | None,
    ) -> Iterator[tuple[_Work, Generation]]:
        """Run works through the continuous decode loop; (work, generation) in completion order."""
        batcher = Batcher(
            model=lambda: self.loaded.model,
            steps=lambda: StepProcessor([], self.loaded.vocab_size, set(self.loaded.eos_ids), closer=self.closer),
            start=lambda group: self._run([w.request for w in group], group),
            estimate=lambda w: self.estimate_tokens(w.request),
            prompt_tokens=lambda w: self.estimate_tokens(w.request) - w.request.settings.max_new_tokens,
            prefill_tokens=self.prefill_tokens,
            max_rows=max_rows,
            budget=budget or self.token_budget,
            on_out_of_memory=self._out_of_memory,
            is_out_of_memory=_is_out_of_memory,
            describe=_one_line,
        )
        for done in batcher.run(works):
            work = done.work
            if done.row is not None and isinstance(done.row.on_token, _TextFeed):
                done.row.on_token.end()
            gen = self._generation(done)
            if work.stop_at_think_close and gen.finish_reason != "error":
                # The thinking template (no /nothink), continued after the closed think block.
                prefix = f"<think>{gen.thinking or gen.text}{THINK_CLOSE}\n"
                answer = work.request.model_copy(update={"assistant_prefix": prefix})
                tokens = work.request.settings.max_new_tokens
                batcher.push_front(_Work(answer, work.index, True, True, tokens, thought=gen, on_text=work.on_text))
                continue
            if work.thought is not None:
                thought = work.thought
                gen.thinking = thought.thinking or thought.text
                gen.output_tokens += thought.output_tokens
                gen.generate_s += thought.generate_s
                gen.decode_s += thought.decode_s
                gen.ttft_s = thought.ttft_s
                gen.preprocess_s += thought.preprocess_s
            yield work, gen

    def _out_of_memory(self) -> None:
        _release_memory()
        self._budget_scale /= 2  # later batches are planned smaller too

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
        lm = self.loaded
        [text] = self._prompts([request], think)
        if request.images and self._images.max_bytes:  # the pages' processed pixels kept for follow-ups
            encoding = encode_with_images(lm.processor, text, list(request.images), self._images, lm.model.dtype)
            return encoding, time.perf_counter() - started
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if request.images:
            kwargs["images"] = [list(request.images)]
        encoding = dict(lm.processor(**kwargs))
        encoding.pop("token_type_ids", None)
        if "pixel_values" in encoding:  # held until its batch runs: in the model's dtype, not float32
            encoding["pixel_values"] = encoding["pixel_values"].to(lm.model.dtype)
        return encoding, time.perf_counter() - started

    def _prompts(self, requests: list[Request], think: bool) -> list[str]:
        lm = self.loaded
        texts = []
        for req in requests:
            messages = req.messages
            if messages is None:
                messages = []
                if req.system:
                    messages.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
                content = [{"type": "image"} for _ in req.images] + [{"type": "text", "text": req.prompt}]
                messages.append({"role": "user", "content": content})
            text = lm.processor.apply_chat_template(
                messages, tools=req.tools or None, add_generation_prompt=True, tokenize=False, enable_thinking=think
            )
            texts.append(text + req.assistant_prefix)
        return texts

    def _run(self, requests: list[Request], works: list[_Work]) -> KVBatch:
        """Start a group of works: encode their requests, prefill them together, and return rows ready to decode.

        A prompt whose prefix (up to its last image) is in the prefix cache prefills only the rest,
        alone; the others prefill together, and their prefixes are kept for the next question.
        """
        lm = self.loaded
        started = time.perf_counter()
        encoded = [self._encoded(w.request, w.think) for w in works]
        # Per row: its own encoding time, wherever it ran (a loader thread, or here).
        rows = [self._row(w, seconds, started) for w, (_, seconds) in zip(works, encoded, strict=True)]
        keys = [self.prefixes.key(e) for e, _ in encoded]
        kept = [self.prefixes.get(k[0]) if k else None for k in keys]
        order = [i for i, p in enumerate(kept) if p is None] + [i for i, p in enumerate(kept) if p is not None]
        batch: KVBatch | None = None
        fresh = [i for i in order if kept[i] is None]
        if fresh:
            inputs = self._inputs([encoded[i][0] for i in fresh])
            batch = KVBatch.prefill(lm.model, inputs, [rows[i] for i in fresh], lm.kv_dtype)
            for position, i in enumerate(fresh):
                if keys[i] is not None:
                    key, length = keys[i]
                    self.prefixes.put(key, Prefix(length, batch.prefix_of(position, length)))
        for i in order[len(fresh) :]:
            single = KVBatch.prefill_after(lm.model, self._inputs([encoded[i][0]]), rows[i], kept[i])
            if batch is None:
                batch = single
            else:
                batch.join(single)
        assert batch is not None
        if order != sorted(order):
            batch.keep([order.index(i) for i in range(len(order))])  # back in the group's order
        return batch

    def _inputs(self, encodings: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lm = self.loaded
        inputs = collate(encodings, lm.tokenizer.pad_token_id)
        inputs = {k: v.to(lm.model.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(lm.model.dtype)
        return inputs

    @property
    def prefixes(self) -> PrefixCache:
        """Prompt prefixes (chat head, system, page images) kept for follow-up questions."""
        if self._prefixes is None:
            end_of_image = self.loaded.tokenizer.convert_tokens_to_ids("<|end_of_image|>")
            self._prefixes = PrefixCache(self._prefix_bytes, end_of_image)
        return self._prefixes

    def _row(self, work: _Work, preprocess_s: float, started: float) -> Row:
        lm = self.loaded
        req, settings = work.request, work.request.settings
        stop_ids = set(lm.eos_ids)
        if work.stop_at_think_close:
            stop_ids.add(lm.tokenizer.convert_tokens_to_ids(THINK_CLOSE))
        matcher, close_after = None, None
        if req.grammar is not None and work.constrained:  # a tool call: no closing rule, the budget cuts it
            matcher = self.grammar.lark_matcher(req.grammar)
        elif req.json_schema and work.constrained:
            matcher = self.grammar.matcher(req.json_schema)
            close_after = closing_step(work.max_new_tokens, self.closer.reserve(req.json_schema))
        sampler = None
        if settings.temperature > 0:
            sampler = Sampler(settings.temperature, settings.top_p, settings.seed, lm.model.device)
        on_token = None
        if work.on_text is not None:
            # With thinking on, the answer starts inside a think block, unless the prefix already closed it.
            thinking = work.think and THINK_CLOSE not in req.assistant_prefix
            on_token = _TextFeed(lm.tokenizer, stop_ids | {lm.tokenizer.pad_token_id}, work.on_text, thinking)
        return Row(
            work=work,
            steps=RowSteps(matcher, close_after, settings.logprobs, stop_ids),
            max_new_tokens=work.max_new_tokens,
            started=started,
            preprocess_s=preprocess_s,
            sampler=sampler,
            on_token=on_token,
        )

    def _generation(self, done: Finished) -> Generation:
        work, row = done.work, done.row
        req = work.request
        if row is None:
            return Generation(finish_reason="error", error=done.error, tag=req.tag)
        tok = self.loaded.tokenizer
        steps = row.steps
        stopped = row.finish == "stop"
        ids = steps.tokens[:-1] if stopped else steps.tokens
        raw = tok.decode(ids, skip_special_tokens=False)
        # With thinking on, the answer starts inside a think block, unless the prefix already closed it.
        opens_thinking = work.think and THINK_CLOSE not in req.assistant_prefix
        thinking, text = split_thinking(("<think>" if opens_thinking else "") + raw)
        logprobs = steps.token_logprobs[: len(ids)] if req.settings.logprobs else None
        ended = row.ended_at or time.perf_counter()
        first = steps.first_step_at or ended
        return Generation(
            text=text.strip(),
            thinking=thinking,
            prompt_tokens=row.prompt_tokens,
            output_tokens=len(ids) + (1 if stopped else 0),
            finish_reason="error" if steps.error else ("stop" if stopped else "length"),
            error=f"grammar: {steps.error}" if steps.error else None,
            closed_early=steps.closed_early,
            preprocess_s=row.preprocess_s,
            ttft_s=first - row.started,
            # this row's own decode time: until it stopped, not until the slowest row beside it did
            decode_s=ended - first,
            generate_s=ended - row.started,
            batch_size=row.peak_rows,
            token_logprobs=logprobs,
            tokens=[tok.decode([t]) for t in ids] if logprobs is not None else None,
            token_bytes=[self.grammar.tokenizer.decode_bytes([t]) for t in ids] if logprobs is not None else None,
            token_ids=list(ids) if logprobs is not None else None,
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
    chat = json.dumps([request.messages, request.tools], sort_keys=True, default=str) if request.messages else None
    return (request.prompt, request.system, chat, request.assistant_prefix, think, len(request.images))


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
