"""Peer 1: a plain transformers loop, unconstrained `generate`, one image at a time."""

from __future__ import annotations

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


def main() -> None:
    started = time.perf_counter()
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, StoppingCriteriaList

    from bench.steps import StepCounter
    from glmv_cli.engine.loader import load_processor
    from glmv_cli.extraction.parse import validate
    from glmv_cli.extraction.schemas import resolve_schema

    processor, _ = load_processor(str(CHECKPOINT), None)
    model = AutoModelForImageTextToText.from_pretrained(str(CHECKPOINT), dtype=torch.float32).eval()  # as glmv on CPU
    load_s = time.perf_counter() - started

    schema = resolve_schema(SCHEMA)
    text = glmv_prompt_text(processor, schema)
    eos = model.generation_config.eos_token_id
    paths = bench_images()
    rounds = []
    for _ in range(ROUNDS):
        valid = tokens = decode_tokens = 0
        errors: set[str] = set()
        decode_s = 0.0
        t0 = time.perf_counter()
        for path in paths:
            with Image.open(path) as img:
                image = img.convert("RGB")
            inputs = processor(text=[text], images=[[image]], return_tensors="pt")
            inputs.pop("token_type_ids", None)
            counter = StepCounter()
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=MAX_NEW_TOKENS,
                    **GREEDY,
                    eos_token_id=eos,
                    pad_token_id=processor.tokenizer.pad_token_id,
                    stopping_criteria=StoppingCriteriaList([counter]),
                )
            decode_s += counter.decode_s()
            new = out[0, inputs["input_ids"].shape[1] :]
            tokens += int(new.shape[0])
            decode_tokens += int(new.shape[0]) - 1
            answer = processor.tokenizer.decode(new, skip_special_tokens=True)
            error = validate(answer, schema.model)[1]
            valid += error is None
            if error:
                errors.add(f"{error[:100]} ({counter.steps} tokens)")
        wall = time.perf_counter() - t0
        figures = round_figures(len(paths), valid, tokens, wall, decode_tokens, decode_s, errors=sorted(errors)[:3])
        rounds.append(figures)
    emit({"name": "plain", "load_s": round(load_s, 3), "compile_s": 0.0, "rounds": rounds})


if __name__ == "__main__":
    main()
