"""Peer 3: transformers `generate`, batch 8, with llguidance's own pieces in a LogitsProcessor.

The loop a user would write from llguidance's documented transformers recipe: the tokenizer
wrapped once (`llguidance.hf.from_tokenizer`), one `LLMatcher` per row, and each step
`fill_next_token_bitmask` then `apply_token_bitmask_inplace` (`llguidance.torch`). Same prompt,
the same strict constraint schema and JSON options as glmv (compact JSON, every key required),
greedy, the same token budget; eight images per `generate`, left-padded. Nothing steers an answer
shut when the budget runs low: an answer cut at the limit does not parse and is not valid.
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    CHECKPOINT,
    GREEDY,
    MAX_NEW_TOKENS,
    ROUNDS,
    SCHEMA,
    bench_images,
    emit,
    glmv_prompt_text,
    round_figures,
)

BATCH = 8
# glmv's grammar options (compact JSON, no free whitespace), written out as a user would.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def make_processor(tokenizer: Any, grammar: str, batch: int, vocab_size: int) -> Any:
    """A LogitsProcessor holding one matcher per row; each matcher takes the row's last token."""
    import llguidance
    import llguidance.torch as llt
    import torch
    from transformers import LogitsProcessor

    class GrammarProcessor(LogitsProcessor):
        def __init__(self) -> None:
            self.matchers = [llguidance.LLMatcher(tokenizer, grammar, log_level=0) for _ in range(batch)]
            self.bitmask = llt.allocate_token_bitmask(batch, vocab_size)
            self.prompt_len: int | None = None

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.prompt_len is None:
                self.prompt_len = input_ids.shape[1]
            for i, matcher in enumerate(self.matchers[: input_ids.shape[0]]):
                if input_ids.shape[1] > self.prompt_len and not matcher.is_stopped():
                    matcher.consume_token(int(input_ids[i, -1]))
                if matcher.is_stopped() or matcher.is_error():
                    self.bitmask[i].fill_(-1)  # finished row: generate pads it, any token will do
                else:
                    llt.fill_next_token_bitmask(matcher, self.bitmask, i)
            llt.apply_token_bitmask_inplace(scores, self.bitmask[: scores.shape[0]].to(scores.device))
            return scores

    return GrammarProcessor()


def main() -> None:
    started = time.perf_counter()
    import llguidance
    import llguidance.hf
    import llguidance.torch
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, LogitsProcessorList

    from glmv_cli.engine.loader import load_processor
    from glmv_cli.extraction.constraint import constraint_schema
    from glmv_cli.extraction.parse import validate
    from glmv_cli.extraction.schemas import resolve_schema

    processor, _ = load_processor(str(CHECKPOINT), None)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(str(CHECKPOINT), dtype=torch.float32).eval()  # as glmv on CPU
    load_s = time.perf_counter() - started

    schema = resolve_schema(SCHEMA)
    text = glmv_prompt_text(processor, schema)
    eos = model.generation_config.eos_token_id
    eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    vocab_size = model.config.get_text_config().vocab_size
    t0 = time.perf_counter()
    ll_tokenizer = llguidance.hf.from_tokenizer(processor.tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        constraint_schema(schema.json_schema()), defaults=JSON_OPTIONS
    )
    # apply_token_bitmask_inplace is torch.compile'd: compile it here (seconds), not in the first round.
    llguidance.torch.apply_token_bitmask_inplace(
        torch.zeros(BATCH, vocab_size), llguidance.torch.allocate_token_bitmask(BATCH, vocab_size)
    )
    compile_s = time.perf_counter() - t0

    paths = bench_images()
    rounds = []
    for _ in range(ROUNDS):
        valid = tokens = 0
        errors: set[str] = set()
        t0 = time.perf_counter()
        for start in range(0, len(paths), BATCH):
            chunk = paths[start : start + BATCH]
            images = []
            for path in chunk:
                with Image.open(path) as img:
                    images.append([img.convert("RGB")])
            inputs = processor(text=[text] * len(chunk), images=images, return_tensors="pt", padding=True)
            inputs.pop("token_type_ids", None)
            logits_processor = make_processor(ll_tokenizer, grammar, len(chunk), vocab_size)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=MAX_NEW_TOKENS,
                    **GREEDY,
                    eos_token_id=eos_ids,
                    pad_token_id=processor.tokenizer.pad_token_id,
                    logits_processor=LogitsProcessorList([logits_processor]),
                )
            for row in out[:, inputs["input_ids"].shape[1] :].tolist():
                stop = next((n for n, t in enumerate(row) if t in eos_ids), None)
                new = row if stop is None else row[: stop + 1]
                tokens += len(new)
                answer = processor.tokenizer.decode(new, skip_special_tokens=True)
                error = validate(answer, schema.model)[1]
                valid += error is None
                if error:
                    errors.add(f"{error[:100]} ({len(new)} tokens)")
        wall = time.perf_counter() - t0
        rounds.append(round_figures(len(paths), valid, tokens, wall, errors=sorted(errors)[:3]))
    emit(
        {
            "name": f"grammar proc b{BATCH}",
            "batch_size": BATCH,
            "load_s": round(load_s, 3),
            "compile_s": round(compile_s, 3),
            "rounds": rounds,
        }
    )


if __name__ == "__main__":
    main()
