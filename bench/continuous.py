"""Continuous batching against the padded `generate` path it replaced, on the tiny checkpoint.

16 free-text requests, alternately 64 and 512 new tokens (random weights rarely stop early, so
rows run to their budget: answers of very different length), batch 8:

- `padded generate`: the former path. `model.generate` on a left-padded batch with the same
  StepProcessor; one call per settings group, as LocalBackend.generate did (a batch of 8 mixed
  requests was two calls of 4), each call running until its longest row ends.
- `loop, batches of 8`: LocalBackend.generate on the same batches of 8: rows leave as they stop.
- `loop, stream`: LocalBackend.generate_stream over all 16 with at most 8 rows: rows leave as
  they stop and waiting requests join.

docs/s and output tokens/s are over each approach's wall time; the best of --rounds interleaved rounds.

    .venv/bin/python bench/continuous.py [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import groupby

from bench.common import CHECKPOINT


def requests(n: int) -> list:
    from glmv_cli.engine.base import GenerationSettings, Request

    return [
        Request(
            prompt=f"Tell me about item {i}. " * (1 + i % 3),
            settings=GenerationSettings(max_new_tokens=(64, 512)[i % 2]),
        )
        for i in range(n)
    ]


def padded_generate(backend, batch) -> list[list[int]]:  # noqa: ANN001
    """The former LocalBackend._run, reduced to tokens: one model.generate per settings group."""
    import torch
    from transformers import GenerationConfig

    from glmv_cli.engine.local import collate
    from glmv_cli.engine.steps import StepProcessor

    lm = backend.loaded
    eos = list(lm.eos_ids)
    out: dict[int, list[int]] = {}
    order = sorted(range(len(batch)), key=lambda i: batch[i].settings.max_new_tokens)
    for tokens, group in groupby(order, key=lambda i: batch[i].settings.max_new_tokens):
        idx = list(group)
        inputs = collate([backend._encoded(batch[i], False)[0] for i in idx], lm.tokenizer.pad_token_id)
        inputs = {k: v.to(lm.model.device) for k, v in inputs.items()}
        steps = StepProcessor([None] * len(idx), lm.vocab_size, set(eos))
        config = GenerationConfig(
            max_new_tokens=tokens, do_sample=False, eos_token_id=eos, pad_token_id=lm.tokenizer.pad_token_id
        )
        with torch.inference_mode():
            new = lm.model.generate(**inputs, generation_config=config, logits_processor=[steps])
        for i, row in zip(idx, new[:, inputs["input_ids"].shape[1] :].tolist(), strict=True):
            stop = next((n for n, t in enumerate(row) if t in eos), None)
            out[i] = row if stop is None else row[: stop + 1]
    return [out[i] for i in range(len(batch))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from glmv_cli.engine.local import LocalBackend

    backend = LocalBackend(str(CHECKPOINT), device=args.device, batch_size=args.batch)
    reqs = requests(args.docs)
    batches = [reqs[i : i + args.batch] for i in range(0, len(reqs), args.batch)]

    def padded():
        return [len(t) for b in batches for t in padded_generate(backend, b)]

    def loop_batches():
        return [g.output_tokens for b in batches for g in backend.generate(b)]

    def loop_stream():
        return [g.output_tokens for g in backend.generate_stream(reqs, max_rows=args.batch)]

    # Same greedy tokens on every path (the old one included), checked once before timing.
    old = [t for b in batches for t in padded_generate(backend, b)]
    checked = [  # log-probs on only for this check: token ids come with them
        r.model_copy(update={"tag": i, "settings": r.settings.model_copy(update={"logprobs": True})})
        for i, r in enumerate(reqs)
    ]
    new = {g.tag: g.token_ids for g in backend.generate_stream(checked, max_rows=args.batch)}
    same = all(old[i][: len(new[i])] == new[i] and len(old[i]) - len(new[i]) in (0, 1) for i in range(len(reqs)))

    results = {"device": backend.loaded.device, "docs": len(reqs), "batch": args.batch, "same_tokens": same}
    approaches = {"padded generate": padded, "loop, batches of 8": loop_batches, "loop, stream": loop_stream}
    best: dict[str, tuple[float, int]] = {}
    # Forward passes (prefills + decode steps) and rows computed: the work itself, whatever the machine's load.
    counts = {"forwards": 0, "rows": 0}

    def count(module, args, kwargs):  # noqa: ANN001, ANN202
        counts["forwards"] += 1
        counts["rows"] += kwargs["input_ids"].shape[0]

    backend.loaded.model.register_forward_pre_hook(count, with_kwargs=True)
    best: dict[str, dict] = {}
    for _ in range(args.rounds):  # rounds interleave the approaches: a busy spell on a shared machine hits all
        for name, fn in approaches.items():
            counts.update(forwards=0, rows=0)
            started, cpu = time.perf_counter(), time.process_time()
            tokens = sum(fn())
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            if name not in best or wall < best[name]["wall_s"]:
                best[name] = {
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "docs_per_s": round(len(reqs) / wall, 3),
                    "out_tok_per_s": round(tokens / wall, 1),
                    "output_tokens": tokens,
                    **counts,
                }
    results.update(best)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
