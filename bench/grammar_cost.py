"""Grammar cost per token: glmv's local backend with and without the JSON Schema constraint.

Each image is first decoded under the constraint (n tokens), then without it with
max_new_tokens = n, so both runs decode the same number of tokens over the same prompt
(random weights rarely pick EOS early; rows where they do are left out). Decode time runs
from the first token to the last, so prefill is excluded. The grammar step (StepProcessor)
is also timed on its own by wrapping it.
"""

from __future__ import annotations

import time

from bench.common import CHECKPOINT, MAX_NEW_TOKENS, ROUNDS, SCHEMA, bench_images, emit

N_IMAGES = 8


def main() -> None:
    from PIL import Image

    from glmv_cli.engine.base import GenerationSettings, Request
    from glmv_cli.engine.factory import create_backend
    from glmv_cli.engine.steps import StepProcessor
    from glmv_cli.extraction.constraint import constraint_schema
    from glmv_cli.extraction.prompt import SYSTEM, build_prompt
    from glmv_cli.extraction.schemas import resolve_schema

    step_time = {"s": 0.0, "calls": 0}
    original = StepProcessor.__call__

    def timed(self, input_ids, scores):  # noqa: ANN001 - mirrors LogitsProcessor.__call__
        t0 = time.perf_counter()
        try:
            return original(self, input_ids, scores)
        finally:
            step_time["s"] += time.perf_counter() - t0
            step_time["calls"] += 1

    StepProcessor.__call__ = timed

    backend = create_backend(str(CHECKPOINT), batch_size=1).real
    schema = resolve_schema(SCHEMA)
    json_schema = constraint_schema(schema.json_schema())
    setup_s = backend.prepare_schema(json_schema)  # llguidance tokenizer wrapper + this schema's grammar
    prompt = build_prompt(schema)
    images = []
    for path in bench_images()[:N_IMAGES]:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))

    def run(image, constrained: bool, max_new: int):  # noqa: ANN001, ANN202
        req = Request(
            images=[image],
            prompt=prompt,
            system=SYSTEM,
            json_schema=json_schema if constrained else None,
            settings=GenerationSettings(max_new_tokens=max_new),
        )
        before = dict(step_time)
        gen = backend.generate([req])[0]
        return gen, step_time["s"] - before["s"], step_time["calls"] - before["calls"]

    best: dict[int, dict[str, float]] = {}
    for _ in range(ROUNDS):
        for i, image in enumerate(images):
            con, con_step_s, con_steps = run(image, True, MAX_NEW_TOKENS)
            free, free_step_s, free_steps = run(image, False, con.output_tokens)
            if free.output_tokens != con.output_tokens or con.output_tokens < 2:
                continue
            row = {
                "tokens": con.output_tokens,
                "con_decode_s": con.decode_s,
                "free_decode_s": free.decode_s,
                "con_step_s": con_step_s / con_steps,
                "free_step_s": free_step_s / free_steps,
            }
            old = best.get(i)
            best[i] = row if old is None else {k: min(v, old[k]) for k, v in row.items()}

    steps = sum(r["tokens"] - 1 for r in best.values())  # decode_s spans tokens 2..n
    con_us = 1e6 * sum(r["con_decode_s"] for r in best.values()) / steps
    free_us = 1e6 * sum(r["free_decode_s"] for r in best.values()) / steps
    emit(
        {
            "name": "grammar_cost",
            "docs": len(best),
            "tokens_per_doc": round(steps / len(best) + 1, 1) if best else None,
            "constrained_us_per_token": round(con_us, 1),
            "unconstrained_us_per_token": round(free_us, 1),
            "overhead_us_per_token": round(con_us - free_us, 1),
            "overhead_pct": round(100 * (con_us - free_us) / free_us, 1),
            "step_processor_us_constrained": round(1e6 * sum(r["con_step_s"] for r in best.values()) / len(best), 1),
            "step_processor_us_unconstrained": round(1e6 * sum(r["free_step_s"] for r in best.values()) / len(best), 1),
            "grammar_setup_s": round(setup_s, 4),
        }
    )


if __name__ == "__main__":
    main()
