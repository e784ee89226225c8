"""glmv through its library API (Extractor), cache off, at a given batch size.

python -m bench.glmv_lib 1        # batch size 1
python -m bench.glmv_lib default  # the backend's default batch size (8 on CPU)
"""

from __future__ import annotations

import sys
import time

from bench.common import (
    CHECKPOINT,
    HEADLINE_ROUNDS,
    MAX_NEW_TOKENS,
    ROUNDS,
    SCHEMA,
    bench_images,
    emit,
    round_figures,
)


def main(batch: str) -> None:
    started = time.perf_counter()
    from glmv_cli.engine.base import GenerationSettings
    from glmv_cli.engine.factory import create_backend
    from glmv_cli.extraction.pipeline import ExtractOptions, Extractor
    from glmv_cli.extraction.schemas import resolve_schema

    backend = create_backend(str(CHECKPOINT), batch_size=None if batch == "default" else int(batch))
    backend.real.loaded  # noqa: B018 - load the weights now, outside the timed rounds
    load_s = time.perf_counter() - started
    batch_size = backend.default_batch_size()
    schema = resolve_schema(SCHEMA)
    options = ExtractOptions(
        settings=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, logprobs=True),  # as glmv extract: confidence on
        batch_size=batch_size,
        use_cache=False,
        text_hint="off",
    )
    t0 = time.perf_counter()
    extractor = Extractor(backend, schema, options, cache=None)
    backend.real.prepare_schema(extractor.json_schema)  # tokenizer wrapper + schema grammar, once
    compile_s = time.perf_counter() - t0

    count = HEADLINE_ROUNDS if batch == "default" else ROUNDS  # bN: the headline row
    sets = [bench_images(n + 1) for n in range(count)]  # round n: set n + 1, as vLLM's round n
    rounds = []
    for paths in sets:
        extractor.model_calls = 0
        t0 = time.perf_counter()
        records = list(extractor.run(paths))
        wall = time.perf_counter() - t0
        # valid means ok with no warning; answers the token budget closed early are review, counted apart.
        valid = sum(r.status == "ok" and not r.warning for r in records)
        closed_early = sum(r.status == "review" for r in records)
        tokens = sum(r.timings.output_tokens or 0 for r in records)
        decode_tokens = decode_s = None
        if batch_size == 1:  # per-document timings are per call only when each call is one document
            decode_tokens = sum((r.timings.output_tokens or 1) - 1 for r in records)
            decode_s = sum((r.timings.generate or 0) - (r.timings.ttft or 0) for r in records)
        errors = sorted({(r.error or "")[:120] for r in records if r.status == "failed"})
        warnings = sorted({r.warning[:120] for r in records if r.warning})
        rounds.append(
            round_figures(
                len(records),
                valid,
                tokens,
                wall,
                decode_tokens,
                decode_s,
                closed_early,
                model_calls=extractor.model_calls,
                errors=errors[:3],
                warnings=warnings[:3],
            )
        )
    emit(
        {
            "name": f"glmv b{batch_size}",
            "batch_size": batch_size,
            "load_s": round(load_s, 3),
            "compile_s": round(compile_s, 3),
            "rounds": rounds,
        }
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "default")
