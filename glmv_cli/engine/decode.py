"""Continuous batching: a decode loop over the model's forward and a KV cache, rows joining and leaving.

`generate` computes a padded batch until its longest row ends. Here a row leaves the batch
the step it stops (its cache rows are dropped), and waiting work is prefilled and joins the
running batch (caches padded on the left and masked), up to a row cap and a token budget.
GLM-4V's positions are 3-D (M-RoPE): every row carries its own length and rope offset, and
each decode step passes explicit position ids of shape (3, rows, width).

Where the grammar allows exactly one continuation (a key, its quotes and colon), those tokens
are fed with the chosen one in the same forward pass (fast-forward): a step is then `width`
tokens wide, and a row with fewer tokens that step has its run at the right end and the
columns before it masked, so every row's newest token still sits in the last column.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper
from transformers.cache_utils import DynamicLayer

from glmv_cli.engine.steps import RowSteps, StepProcessor

IDLE_S = 0.005  # nothing running and nothing ready: wait this long before asking the source again
# Spare cache columns a layer keeps for the coming steps: one copy of the cache per this many steps,
# at most this many columns x rows x the KV bytes per token of extra memory (GLM-4.6V-Flash in bf16,
# 32 rows: about 160 MB).
SPARE_COLUMNS = 128


class Sampler:
    """Temperature and top-p sampling for one row, with its own generator: a seeded row samples alike in any batch."""

    def __init__(self, temperature: float, top_p: float | None, seed: int | None, device: torch.device):
        self.warpers: list[Any] = [TemperatureLogitsWarper(temperature)]
        if top_p is not None and top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, scores: torch.Tensor) -> int:
        scores = scores.unsqueeze(0)
        for warper in self.warpers:
            scores = warper(None, scores)
        probs = torch.softmax(scores.float(), dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


@dataclass(eq=False)
class Row:
    """One piece of work being decoded: its per-step state and its place in the KV batch."""

    work: Any  # the caller's handle
    steps: RowSteps
    max_new_tokens: int
    started: float  # when its start (encoding, prefill) began
    preprocess_s: float = 0.0
    sampler: Sampler | None = None  # None: greedy
    on_token: Callable[[int], None] | None = None
    length: int = 0  # its real tokens in the cache (prompt + fed tokens)
    span: int = 0  # cache columns from its first real token to the right end (real tokens + masked gaps)
    delta: int = 0  # M-RoPE offset: the next token's position is length + delta
    prompt_tokens: int = 0
    tokens: int = 0  # estimated KV-cache tokens at most (for the budget)
    alone: bool = False  # runs with no other row (after a batch it was in failed)
    peak_rows: int = 1  # the most rows it shared a step with
    finish: str | None = None  # "stop" or "length" once it leaves
    ended_at: float | None = None


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values sit at the start of buffers with spare columns.

    DynamicLayer concatenates at every step, copying the whole cache each time (a fifth of a
    32-row batch's time on the tiny checkpoint); here a step writes its columns into the spare
    room, and the cache is copied only when the room runs out. `keys` and `values` stay views of
    the filled part: code that replaces them (trimming padding) gets its tensors adopted into new
    buffers at the next update. Dropping rows (`keep_rows`) moves the kept ones down inside the
    buffers, and joining batches (`join`) writes both into new buffers with room: neither is
    followed by a second copy at the next update.

    With `kv_dtype` set, keys and values are kept in that dtype whatever the model computes in
    (bfloat16 beside a float32 model on CPU: see loader.pick_kv_dtype and `kv_attention`).
    """

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None
    kv_dtype: torch.dtype | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kv_dtype is not None and key_states.dtype != self.kv_dtype:
            key_states, value_states = key_states.to(self.kv_dtype), value_states.to(self.kv_dtype)
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self._key_buffer = _append(self.keys, key_states, self._key_buffer)
        self.values, self._value_buffer = _append(self.values, value_states, self._value_buffer)
        return self.keys, self.values

    def keep_rows(self, indices: list[int]) -> None:
        """Keep only these rows, in this order (each row's keys and values go with it)."""
        self.keys, self._key_buffer = _kept(self.keys, self._key_buffer, indices)
        self.values, self._value_buffer = _kept(self.values, self._value_buffer, indices)

    def join(self, other: GrowingLayer, width: int) -> None:
        """These rows then `other`'s, each left-padded (with zeros) to `width` columns."""
        self.keys, self._key_buffer = _joined(self.keys, other.keys, width)
        self.values, self._value_buffer = _joined(self.values, other.values, width)


def _kept(filled: torch.Tensor, buffer: torch.Tensor | None, indices: list[int]) -> tuple[torch.Tensor, Any]:
    """`filled`'s rows `indices`: moved down in place where `filled` starts `buffer` and the rows keep their order."""
    if not _starts(filled, buffer) or indices != sorted(indices):
        return filled.index_select(0, torch.tensor(indices, device=filled.device)), None
    length = filled.shape[-2]
    for row, source in enumerate(indices):
        if source != row:  # source > row: the rows below it are already placed
            buffer[row, ..., :length, :] = buffer[source, ..., :length, :]
    buffer = buffer[: len(indices)]
    return buffer[..., :length, :], buffer


def _joined(first: torch.Tensor, second: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`first`'s rows then `second`'s, left-padded with zeros to `width`, in a new buffer with spare columns."""
    rows = first.shape[0]
    buffer = first.new_empty((rows + second.shape[0], *first.shape[1:-2], width + SPARE_COLUMNS, first.shape[-1]))
    for part, t in ((buffer[:rows], first), (buffer[rows:], second)):
        pad = width - t.shape[-2]
        part[..., :pad, :].zero_()  # masked columns, but never NaN: attention multiplies them by 0
        part[..., pad:width, :] = t
    return buffer[..., :width, :], buffer


def _starts(filled: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    """Whether `filled` is a view of `buffer`'s first columns (same rows, same strides)."""
    return (
        buffer is not None
        and filled.data_ptr() == buffer.data_ptr()
        and filled.shape[:-2] == buffer.shape[:-2]
        and filled.stride() == buffer.stride()
    )


def _append(filled: torch.Tensor, new: torch.Tensor, buffer: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`filled` then `new` along the sequence (-2), written into `buffer` when `filled` is its start and it has room."""
    length = filled.shape[-2] if filled.numel() else 0
    needed = length + new.shape[-2]
    if not (length and _starts(filled, buffer) and needed <= buffer.shape[-2]):
        buffer = new.new_empty((*new.shape[:-2], needed + SPARE_COLUMNS, new.shape[-1]))
        if length:
            buffer[..., :length, :] = filled
    buffer[..., length:needed, :] = new
    return buffer[..., :needed, :], buffer


KV_ATTENTION = "glmv_sdpa"


def kv_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
    """transformers' SDPA attention, the query meeting a cache kept in another dtype (and the output going back).

    Registered as KV_ATTENTION (register_kv_attention); where the dtypes agree (the vision tower, a cache in the
    model's own dtype) it is SDPA unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.dtype == key.dtype:
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)
    out, weights = sdpa_attention_forward(module, query.to(key.dtype), key, value, *args, **kwargs)
    return out.to(query.dtype), weights


def register_kv_attention() -> None:
    """Make KV_ATTENTION a name transformers' models accept (`set_attn_implementation`), masks as for SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(KV_ATTENTION, kv_attention)
    AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)


def growing_cache(model: Any, kv_dtype: torch.dtype | None = None) -> DynamicCache:
    """An empty cache for `model` whose full-attention layers are GrowingLayers keeping `kv_dtype`."""
    cache = DynamicCache(config=model.config)
    layers = []
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer = GrowingLayer()
            layer.kv_dtype = kv_dtype
        layers.append(layer)
    cache.layers = layers
    return cache


def mrope_positions(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D position ids (3, rows, length) of left-padded prompts and each row's rope offset, as generate makes them."""
    mask = inputs["attention_mask"]
    if inputs.get("image_grid_thw") is not None:
        positions, deltas = model.model.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"],
            attention_mask=mask,
        )
        return positions, deltas.view(-1)
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return text.unsqueeze(0).expand(3, -1, -1), torch.zeros(mask.shape[0], dtype=torch.long)


class KVBatch:
    """The running rows' KV cache, attention mask and next-token logits; row i of each belongs to rows[i].

    Every row's real tokens sit at the right end: its padding is on the left and masked.
    """

    def __init__(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, logits: torch.Tensor):
        self.rows, self.cache, self.mask, self.logits = rows, cache, mask, logits

    @classmethod
    def prefill(
        cls, model: Any, inputs: dict[str, torch.Tensor], rows: list[Row], kv_dtype: torch.dtype | None = None
    ) -> KVBatch:
        """Run left-padded prompts through the model: their cache, and the logits of each row's first token.

        Where the model takes 4-D masks (SDPA on CPU and GPU) and the prompts differ in length, they run
        padded on the right instead, with no mask at all: a real token's causal window then holds real
        tokens only, so attention takes its causal kernel (it skips the upper triangle: 8 prompts of 984
        tokens, 14 ms a layer down to 8.5) and no rows x length x length mask is built. The cache is
        then moved to the left-padded layout the decoding steps keep.
        """
        mask2d = inputs["attention_mask"]
        width = mask2d.shape[1]
        pads = width - mask2d.sum(dim=1)
        right = bool(pads.any()) and _takes_4d_masks(model) and bool(mask2d[:, -1].all())
        if right:
            inputs = _shifted(inputs, pads, width)
        positions, deltas = mrope_positions(model, inputs)
        cache = growing_cache(model, kv_dtype)
        if right:
            last = width - 1 - pads  # each row's last real token, right-padded
            columns = sorted(set(last.tolist()))
            out = model(
                **{**inputs, "attention_mask": None},
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=torch.tensor(columns, device=mask2d.device),
            )
            at = torch.tensor([columns.index(c) for c in last.tolist()], device=mask2d.device)
            logits = out.logits[torch.arange(len(rows), device=mask2d.device), at]
            for layer in cache.layers:  # back to the left-padded layout: row i's tokens end at the right edge
                layer.keys.copy_(_shifted_rows(layer.keys, -pads, width))
                layer.values.copy_(_shifted_rows(layer.values, -pads, width))
        else:  # one length (transformers' causal kernel, no mask), or flash kernels (they take the 2-D mask)
            out = model(
                **inputs,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1]
        if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
            raise NotImplementedError("sliding-window cache layers cannot be re-batched")
        lengths = mask2d.sum(dim=1).tolist()
        for row, length, delta in zip(rows, lengths, deltas.tolist(), strict=True):
            row.length = row.span = row.prompt_tokens = int(length)
            row.delta = int(delta)
        return cls(rows, cache, mask2d, logits.float())

    @classmethod
    def prefill_after(cls, model: Any, inputs: dict[str, torch.Tensor], row: Row, prefix: Any) -> KVBatch:
        """One prompt whose first `prefix.length` tokens' keys and values are kept: only the rest runs.

        The positions are the whole prompt's (M-RoPE, images included), so the rest continues
        exactly where the prefix left off; no image is encoded again.
        """
        positions, deltas = mrope_positions(model, inputs)
        cache = growing_cache(model, prefix.kv[0][0].dtype)  # the kept keys' dtype: the cache the prefix came from
        for layer, (keys, values) in zip(cache.layers, prefix.kv, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values  # appended to in a new buffer: the kept tensors stay as they are
        start = prefix.length
        out = model(
            input_ids=inputs["input_ids"][:, start:],
            attention_mask=inputs["attention_mask"],  # one prompt, no padding: transformers' causal path
            position_ids=positions[:, :, start:],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        row.length = row.span = row.prompt_tokens = int(inputs["attention_mask"].sum())
        row.delta = int(deltas[0])
        return cls([row], cache, inputs["attention_mask"], out.logits[:, -1].float())

    def prefix_of(self, index: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row `index`'s first `length` prompt tokens' keys and values, copied (right after its prefill)."""
        start = self.mask.shape[1] - self.rows[index].span
        return [
            (layer.keys[index : index + 1, :, start : start + length].clone(),
             layer.values[index : index + 1, :, start : start + length].clone())
            for layer in self.cache.layers
        ]  # fmt: skip

    def step(self, model: Any, runs: list[list[int]], keep_logits: int = 1) -> torch.Tensor | None:
        """Feed each row its run of tokens (the chosen one, then any the grammar forces); the logits
        now hold each row's next choice.

        Runs shorter than the step's width sit at its right end, the columns before them masked.
        With `keep_logits` > 1 and a step wider than one token, the logits of the step's last
        `keep_logits` columns come back as (rows, columns, vocab), for the forced tokens' log-probs.
        """
        device = self.mask.device
        width = max(len(run) for run in runs)
        if width == 1:
            ids = torch.tensor([run[0] for run in runs], device=device).view(-1, 1)
            new_mask = self.mask.new_ones(len(runs), 1)
            positions = torch.tensor([r.length + r.delta for r in self.rows], device=device).view(-1, 1)
        else:  # built as lists, three tensors in all: per-row tensor writes cost 2 ms a 32-row step
            ids_, mask_, positions_ = [], [], []
            for row, run in zip(self.rows, runs, strict=True):
                start, gap = row.length + row.delta, width - len(run)
                ids_.append([0] * gap + run)
                mask_.append([0] * gap + [1] * len(run))
                # the masked columns' positions are never attended
                positions_.append([start] * gap + list(range(start, start + len(run))))
            ids = torch.tensor(ids_, device=device)
            new_mask = torch.tensor(mask_, dtype=self.mask.dtype, device=device)
            positions = torch.tensor(positions_, device=device)
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        out = model(
            input_ids=ids,
            attention_mask=_step_attention_mask(model, self.mask, width, self.cache.layers[0].keys.dtype),
            position_ids=positions.unsqueeze(0).expand(3, -1, -1),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=min(keep_logits, width),
        )
        for row, run in zip(self.rows, runs, strict=True):
            row.length += len(run)
            row.span += width
        self.logits = out.logits[:, -1].float()
        return out.logits.float() if keep_logits > 1 and width > 1 else None

    def keep(self, indices: list[int]) -> None:
        """Keep only these rows (in this order), dropping the others' cache."""
        if indices == list(range(len(self.rows))):
            return
        index = torch.tensor(indices, device=self.mask.device)
        for layer in self.cache.layers:  # GrowingLayers: growing_cache makes every layer one
            layer.keep_rows(indices)
        self.mask = self.mask.index_select(0, index)
        self.logits = self.logits.index_select(0, index)
        self.rows = [self.rows[i] for i in indices]
        self._trim()

    def join(self, other: KVBatch) -> None:
        """Add another batch's rows after these; the shorter cache is padded on the left."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.join(theirs, width)
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.logits = torch.cat([self.logits, other.logits])
        self.rows = self.rows + other.rows
        self._trim()

    def _trim(self) -> None:
        """Drop the left columns every row pads: attention never pays for them."""
        pad = min((self.mask.shape[1] - r.span for r in self.rows), default=0)
        if pad > 0:
            self.mask = self.mask[:, pad:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, pad:]
                layer.values = layer.values[:, :, pad:]


def step_mask(mask: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A decoding step's additive 4-D attention mask in `dtype`: 0 on each row's own columns (`mask`,
    the new ones included) and causal among the step's last `width` columns, the dtype's lowest
    value elsewhere, as attention adds it to its scores.

    transformers takes a 4-D mask as it is; building it once a step costs a few small ops, where its
    general mask functions cost about a millisecond a step on CPU, and SDPA turns a boolean mask
    into an additive one again in every layer (two `where`s each, 5% of a 32-row step).
    """
    allowed = mask.bool()[:, None, None, :]
    if width > 1:
        causal = torch.ones(width, mask.shape[1], dtype=torch.bool, device=mask.device)
        causal[:, -width:] = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril()
        allowed = allowed & causal
    additive = torch.zeros(allowed.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill_(~allowed, torch.finfo(dtype).min)


def _takes_4d_masks(model: Any) -> bool:
    """Whether the model's attention takes an additive 4-D mask as it is (SDPA, eager, KV_ATTENTION),
    not only the 2-D padding mask flash kernels want."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
    return implementation in ("sdpa", "eager", KV_ATTENTION)


def _step_attention_mask(model: Any, mask: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """A decoding step's mask for the model: step_mask in the attention's dtype where it takes one, else the 2-D one."""
    return step_mask(mask, width, dtype) if _takes_4d_masks(model) else mask


def _shifted_rows(t: torch.Tensor, shift: torch.Tensor, width: int) -> torch.Tensor:
    """`t` (rows, ..., width[, dim]) with row i's columns rotated left by shift[i] (right by -shift[i])."""
    columns = (torch.arange(width, device=t.device) + shift.to(t.device).view(-1, 1)) % width
    time_dim = 1 if t.dim() == 2 else t.dim() - 2
    shape = [t.shape[0]] + [1] * (t.dim() - 1)
    shape[time_dim] = width
    index = columns.view(shape).expand(*t.shape[:time_dim], width, *t.shape[time_dim + 1 :])
    return torch.gather(t, time_dim, index)


_PER_TOKEN = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def _shifted(inputs: dict[str, torch.Tensor], pads: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts' per-token tensors (ids, mask, token types) moved to right padding; the rest as is."""
    return {k: _shifted_rows(v, pads, width) if k in _PER_TOKEN else v for k, v in inputs.items()}


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A 2-D mask padded with zeros on the left to `width` columns (keys and values: GrowingLayer.join)."""
    missing = width - mask.shape[-1]
    return torch.nn.functional.pad(mask, (missing, 0)) if missing else mask


@dataclass
class Finished:
    """A piece of work that left the loop: its row, or the error that kept it from running."""

    work: Any
    row: Row | None = None
    error: str | None = None


@dataclass
class _Waiting:
    work: Any
    single: bool = False  # prefilled on its own (its group's prefill failed)
    alone: bool = False  # decoded on its own (a batch it was in failed)


@dataclass
class Batcher:
    """Runs work through the model continuously: rows leave the step they stop, new work joins as slots free.

    The callables come from the backend: `start` encodes and prefills a group of work into a
    KVBatch (raising if it cannot), `estimate` gives a work's KV-cache tokens at most. Limits
    are asked for only once there is work, so a run with nothing to generate loads nothing.
    """

    model: Callable[[], Any]
    steps: Callable[[], StepProcessor]
    start: Callable[[list[Any]], KVBatch]
    estimate: Callable[[Any], int]
    max_rows: Callable[[], int]
    budget: Callable[[], int | None]
    on_out_of_memory: Callable[[], None]
    is_out_of_memory: Callable[[BaseException], bool]
    describe: Callable[[BaseException], str] = str
    # Prompt tokens one prefill may take (rows x its longest prompt); None: no limit. Prefill costs
    # memory that grows with rows x length squared (the attention scores, the padding mask), unlike
    # decoding, so long prompts prefill alone and join the running rows for decoding.
    prefill_tokens: int | None = None
    prompt_tokens: Callable[[Any], int] | None = None  # a work's prompt tokens (default: `estimate`)
    waiting: deque[_Waiting] = field(default_factory=deque)
    batch: KVBatch | None = None
    _processor: StepProcessor | None = None
    _exhausted: bool = False
    _row_cap: int | None = None  # lowered by out-of-memory errors

    def push_front(self, work: Any) -> None:
        """Run this work next (e.g. the answer pass of a request that has finished thinking)."""
        self.waiting.appendleft(_Waiting(work))

    def run(self, source: Iterable[Any]) -> Iterator[Finished]:
        """Decode until the source is exhausted and every row has left; `None` from the source: nothing ready yet."""
        source = iter(source)
        while True:
            yield from self._admit(source)
            if self.batch is None or not self.batch.rows:
                self.batch = None
                if self._exhausted and not self.waiting:
                    return
                if not self.waiting:
                    time.sleep(IDLE_S)
                continue
            yield from self._step()

    # -- admission -------------------------------------------------------------------------------
    def _next(self, source: Iterator[Any]) -> _Waiting | None:
        if self.waiting:
            return self.waiting.popleft()
        if self._exhausted:
            return None
        try:
            work = next(source)
        except StopIteration:
            self._exhausted = True
            return None
        return None if work is None else _Waiting(work)

    def _take(self, source: Iterator[Any]) -> list[_Waiting]:
        """The next group to prefill: as many as fit beside the running rows (rows x longest row <= budget)."""
        running = self.batch.rows if self.batch is not None else []
        if any(r.alone for r in running):
            return []
        group: list[_Waiting] = []
        longest = max((r.tokens for r in running), default=0)
        longest_prompt = 0
        prompt_tokens = self.prompt_tokens or self.estimate
        cap = budget = None
        while True:
            item = self._next(source)
            if item is None:
                return group
            if cap is None:  # work is here: a model is needed
                cap = self._row_cap or self.max_rows()
                budget = self.budget()
            taken = len(running) + len(group)
            tokens = self.estimate(item.work)
            prompt = prompt_tokens(item.work)
            fits = budget is None or (taken + 1) * max(longest, tokens) <= budget
            prefill_fits = (
                self.prefill_tokens is None or (len(group) + 1) * max(longest_prompt, prompt) <= self.prefill_tokens
            )
            if group and not prefill_fits:  # prefilled next, with the rows this group joins
                self.waiting.appendleft(item)
                return group
            if taken and (taken >= cap or not fits or item.alone or (item.single and group)):
                self.waiting.appendleft(item)
                return group
            group.append(item)
            longest, longest_prompt = max(longest, tokens), max(longest_prompt, prompt)
            if item.single or item.alone:
                return group

    def _admit(self, source: Iterator[Any]) -> Iterator[Finished]:
        while group := self._take(source):
            try:
                with torch.inference_mode():
                    joined = self.start([w.work for w in group])
            except Exception as exc:  # noqa: BLE001 - the group's failure, handled below
                error, out_of_memory = self.describe(exc), self.is_out_of_memory(exc)
            else:
                for row, item in zip(joined.rows, group, strict=True):
                    row.tokens, row.alone = self.estimate(item.work), item.alone
                with torch.inference_mode():
                    if self.batch is None:
                        self.batch = joined
                    else:
                        self.batch.join(joined)
                continue
            # Outside the except block: the traceback, and the tensors its frames hold, are gone.
            yield from self._start_failed(group, error, out_of_memory)

    def _start_failed(self, group: list[_Waiting], error: str, out_of_memory: bool) -> Iterator[Finished]:
        if out_of_memory:
            self.on_out_of_memory()
        if len(group) > 1:  # out of memory: halves, each may halve again; else: each on its own
            if out_of_memory:
                self._row_cap = max(1, min(self._row_cap or len(group), len(group) // 2))
            for item in reversed(group):
                self.waiting.appendleft(_Waiting(item.work, single=not out_of_memory, alone=item.alone))
        elif out_of_memory and self.batch is not None and self.batch.rows:
            self.waiting.appendleft(_Waiting(group[0].work, alone=True))  # once the running rows are gone
        else:
            yield Finished(group[0].work, error=error)

    # -- decoding --------------------------------------------------------------------------------
    def _step(self) -> Iterator[Finished]:
        batch = self.batch
        rows = batch.rows
        if self._processor is None:
            self._processor = self.steps()
        processor = self._processor
        processor.rows = [r.steps for r in rows]
        done: list[Row] = []
        try:
            with torch.inference_mode():
                scores = processor(None, batch.logits)
                greedy = scores.argmax(dim=-1).tolist()
                tokens = [r.sampler(scores[n]) if r.sampler else greedy[n] for n, r in enumerate(rows)]
                now = time.perf_counter()
                keep, runs = [], []
                for n, (row, token) in enumerate(zip(rows, tokens, strict=True)):
                    row.peak_rows = max(row.peak_rows, len(rows))
                    processor.consume_row(row.steps, token)
                    if row.on_token is not None:
                        row.on_token(token)
                    if row.steps.done:
                        row.finish = "stop"
                    elif len(row.steps.tokens) >= row.max_new_tokens:
                        row.finish = "length"
                    if row.finish is None:
                        keep.append(n)
                        runs.append([token, *self._fast_forward(processor, row)])
                    else:
                        row.ended_at = now
                        done.append(row)
                if not keep:
                    self.batch = None  # every row is done: its cache goes
                else:
                    batch.keep(keep)  # finished rows leave now, before the next forward
                    scored = [r.steps.logprobs and len(run) > 1 for r, run in zip(batch.rows, runs, strict=True)]
                    width = max(map(len, runs)) if any(scored) else 1
                    logits = batch.step(self.model(), runs, keep_logits=width)
                    if logits is not None:
                        forced = [
                            (row.steps, run) if scored[i] else None
                            for i, (row, run) in enumerate(zip(batch.rows, runs, strict=True))
                        ]
                        processor.score_forced(logits, forced)
        except Exception as exc:  # noqa: BLE001 - the batch's failure, handled below
            error, out_of_memory = self.describe(exc), self.is_out_of_memory(exc)
        else:
            for row in done:
                yield Finished(row.work, row)
            return
        for row in done:
            yield Finished(row.work, row)
        yield from self._step_failed([r for r in rows if r not in done], error, out_of_memory)

    def _fast_forward(self, processor: StepProcessor, row: Row) -> list[int]:
        """The tokens the grammar forces after this step's choice, recorded as the row's own; [] if none."""
        # Room for one more chosen token: a row never ends inside a forced run.
        forced = processor.forced(row.steps, row.max_new_tokens - len(row.steps.tokens) - 1)
        if forced:
            processor.consume_forced(row.steps, forced)
            if row.on_token is not None:
                for token in forced:
                    row.on_token(token)
        return forced

    def _step_failed(self, rows: list[Row], error: str, out_of_memory: bool) -> Iterator[Finished]:
        """The running batch is lost: its rows start again (alone, or in smaller batches), or fail if alone already."""
        self.batch = None
        if out_of_memory:
            self.on_out_of_memory()
        if not rows:
            return
        if len(rows) == 1:
            yield Finished(rows[0].work, error=error)
            return
        if out_of_memory:
            self._row_cap = max(1, len(rows) // 2)
        for row in reversed(rows):
            self.waiting.appendleft(_Waiting(row.work, alone=not out_of_memory))
