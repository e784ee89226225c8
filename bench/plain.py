"""Peer 1: a plain transformers loop, unconstrained `generate`, one image at a time."""

from __future__ import annotations

import time

from bench.common import MAX_NEW_TOKENS, ROUNDS, SCHEMA, TINY, bench_images, chat_messages, emit, round_figures


def main() -> None:
    started = time.perf_counter()
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from glmv_cli.engine.loader import load_processor
    from glmv_cli.extraction.parse import validate
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    processor, _ = load_processor(str(TINY), None)
    model = AutoModelForImageTextToText.from_pretrained(str(TINY)).eval()
    load_s = time.perf_counter() - started

    schema = resolve_schema(SCHEMA)
    text = processor.apply_chat_template(
        chat_messages(SYSTEM, build_prompt(schema)), add_generation_prompt=True, tokenize=False, enable_thinking=False
    )
    eos = model.generation_config.eos_token_id
    paths = bench_images()
    rounds = []
    for _ in range(ROUNDS):
        valid = tokens = 0
        t0 = time.perf_counter()
        for path in paths:
            with Image.open(path) as img:
                image = img.convert("RGB")
            inputs = processor(text=[text], images=[[image]], return_tensors="pt")
            inputs.pop("token_type_ids", None)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=eos,
                    pad_token_id=processor.tokenizer.pad_token_id,
                )
            new = out[0, inputs["input_ids"].shape[1] :]
            tokens += int(new.shape[0])
            answer = processor.tokenizer.decode(new, skip_special_tokens=True)
            valid += validate(answer, schema.model)[1] is None
        rounds.append(round_figures(len(paths), valid, tokens, time.perf_counter() - t0))
    emit({"name": "plain", "load_s": round(load_s, 3), "compile_s": 0.0, "rounds": rounds})


if __name__ == "__main__":
    main()
