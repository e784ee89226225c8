"""Peer 2: outlines 1.x over the same transformers model and processor, one image at a time.

The prompt is glmv's (chat template with enable_thinking=False), passed to outlines as a
pre-formatted string with an `outlines.inputs.Image`: outlines' own `Chat` input calls the
chat template without `enable_thinking`, which would leave thinking on.
"""

from __future__ import annotations

import time

from bench.common import MAX_NEW_TOKENS, ROUNDS, SCHEMA, TINY, bench_images, chat_messages, emit, round_figures


def main() -> None:
    started = time.perf_counter()
    import outlines
    import torch
    from outlines.inputs import Image as OutlinesImage
    from PIL import Image
    from transformers import AutoModelForImageTextToText, StoppingCriteria, StoppingCriteriaList

    from glmv_cli.engine.loader import load_processor
    from glmv_cli.extraction.parse import validate
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    class CountSteps(StoppingCriteria):
        """Never stops; counts generated tokens (outlines returns text only)."""

        def __init__(self) -> None:
            self.steps = 0

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
            self.steps += 1
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    processor, _ = load_processor(str(TINY), None)
    model = AutoModelForImageTextToText.from_pretrained(str(TINY)).eval()
    load_s = time.perf_counter() - started
    result: dict = {"name": "outlines", "load_s": round(load_s, 3)}

    schema = resolve_schema(SCHEMA)
    text = processor.apply_chat_template(
        chat_messages(SYSTEM, build_prompt(schema)), add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    try:
        t0 = time.perf_counter()
        wrapped = outlines.from_transformers(model, processor)
        generator = outlines.Generator(wrapped, schema.model)
        result["compile_s"] = round(time.perf_counter() - t0, 3)
        paths = bench_images()
        rounds = []
        for _ in range(ROUNDS):
            valid = tokens = 0
            t0 = time.perf_counter()
            for path in paths:
                counter = CountSteps()
                with Image.open(path) as img:
                    img.load()
                    answer = generator(
                        [text, OutlinesImage(img)],
                        max_new_tokens=MAX_NEW_TOKENS,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        stopping_criteria=StoppingCriteriaList([counter]),
                    )
                tokens += counter.steps
                valid += validate(answer, schema.model)[1] is None
            rounds.append(round_figures(len(paths), valid, tokens, time.perf_counter() - t0))
        result["rounds"] = rounds
    except Exception as exc:  # report why outlines cannot run this model instead of numbers
        result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    emit(result)


if __name__ == "__main__":
    main()
