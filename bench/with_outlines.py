"""Peer 2: outlines 1.x over the same transformers model and processor, one image at a time.

    python -m bench.with_outlines          # outlines.Generator(model, Invoice): the Pydantic model
    python -m bench.with_outlines strict   # glmv's constraint schema (every key required), same work as glmv

The prompt is glmv's (chat template with enable_thinking=False), given to outlines as a
pre-formatted string plus an `outlines.inputs.Image`: outlines' own `Chat` input calls the
chat template without `enable_thinking`, which would leave thinking on.
"""

from __future__ import annotations

import json
import sys
import time

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


def main(variant: str) -> None:
    started = time.perf_counter()
    import outlines
    import torch
    from outlines.inputs import Image as OutlinesImage
    from outlines.types import JsonSchema
    from PIL import Image
    from transformers import AutoModelForImageTextToText, StoppingCriteriaList

    from bench.steps import StepCounter
    from glmv_cli.engine.loader import load_processor
    from glmv_cli.extraction.constraint import constraint_schema
    from glmv_cli.extraction.parse import validate
    from glmv_cli.extraction.schemas import resolve_schema

    processor, _ = load_processor(str(CHECKPOINT), None)
    model = AutoModelForImageTextToText.from_pretrained(str(CHECKPOINT), dtype=torch.float32).eval()  # as glmv on CPU
    load_s = time.perf_counter() - started
    name = "outlines" if variant == "pydantic" else "outlines strict"
    result: dict = {"name": name, "load_s": round(load_s, 3)}

    schema = resolve_schema(SCHEMA)
    output_type = schema.model
    if variant == "strict":
        output_type = JsonSchema(json.dumps(constraint_schema(schema.json_schema())))
    text = glmv_prompt_text(processor, schema)
    try:
        t0 = time.perf_counter()
        generator = outlines.Generator(outlines.from_transformers(model, processor), output_type)
        result["compile_s"] = round(time.perf_counter() - t0, 3)
        paths = bench_images()
        rounds = []
        for _ in range(ROUNDS):
            valid = tokens = decode_tokens = 0
            errors: set[str] = set()
            decode_s = 0.0
            t0 = time.perf_counter()
            for path in paths:
                counter = StepCounter()
                with Image.open(path) as img:
                    img.load()  # outlines.inputs.Image needs the file's format, kept by Image.open
                    answer = generator(
                        [text, OutlinesImage(img)],
                        max_new_tokens=MAX_NEW_TOKENS,
                        **GREEDY,
                        stopping_criteria=StoppingCriteriaList([counter]),
                    )
                decode_s += counter.decode_s()
                tokens += counter.steps
                decode_tokens += counter.steps - 1
                error = validate(answer, schema.model)[1]
                valid += error is None
                if error:
                    errors.add(f"{error[:100]} ({counter.steps} tokens)")
            wall = time.perf_counter() - t0
            rounds.append(
                round_figures(len(paths), valid, tokens, wall, decode_tokens, decode_s, errors=sorted(errors)[:3])
            )
        result["rounds"] = rounds
    except Exception as exc:  # report why outlines cannot run this model instead of numbers
        result["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    emit(result)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pydantic")
