"""Follow-up questions reuse the page: time to first token of a second question about the same A4 page
against the first's, on the real-image-limits tiny (the stock processor's cap), with the answers compared
to a run without reuse.

Corpus invoice pages rendered at 150 dpi (about 2,800 visual tokens each), a new page each round, so the
first question about a page finds only other pages in the cache. A warm-up question about a small image
comes first, so that no measured question pays the model's load. Time to first token is the engine's
(`ttft_s`, from the moment it takes the request: the image processor's work, which a kept page skips, the
prompt's prefill and the first token); the same without the preprocessing, and the wall time of a whole
`Glmv.ask` (reading and rendering the PDF, preprocessing, prefill, a few tokens), are kept beside it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, TINY_REAL, WORK, emit, noise_images, tiny_real

CORPUS_INVOICES = ROOT.parent / "shared" / "corpus" / "invoices"
QUESTIONS = ("What is the total?", "Who is the vendor?")
MAX_TOKENS = 8
ROUNDS = 3


def ask(glmv: Any, source: Path, question: str) -> tuple[dict[str, Any], str]:
    """The answer's timings (plus its wall time) and text."""
    started = time.perf_counter()
    answer = glmv.ask(source, question, max_tokens=MAX_TOKENS, text_hint="off")
    return {**answer.timings, "wall_s": round(time.perf_counter() - started, 4)}, answer.text


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    from glmv_cli import Glmv

    tiny_real()
    pages = sorted(CORPUS_INVOICES.glob("*.pdf"))[:ROUNDS]
    [warm] = noise_images(WORK / "prefix-warm", 1, (200, 100), seed=3)
    reuse = Glmv(str(TINY_REAL), cache=False, prefix_cache_mb=1024)
    plain = Glmv(str(TINY_REAL), cache=False)
    ask(reuse, warm, QUESTIONS[0])
    ask(plain, warm, QUESTIONS[0])
    rounds, same = [], True
    for page in pages:
        first, _ = ask(reuse, page, QUESTIONS[0])
        second, answer = ask(reuse, page, QUESTIONS[1])
        _, want = ask(plain, page, QUESTIONS[1])  # the same question without reuse: the same answer
        same = same and answer == want
        rounds.append({"page": page.name, "prompt_tokens": second["prompt_tokens"], "first": first, "second": second})
    ttft = [r["second"]["ttft_s"] / r["first"]["ttft_s"] for r in rounds]
    prefill = [
        (r["second"]["ttft_s"] - r["second"]["preprocess_s"]) / (r["first"]["ttft_s"] - r["first"]["preprocess_s"])
        for r in rounds
    ]
    wall = [r["second"]["wall_s"] / r["first"]["wall_s"] for r in rounds]
    emit(
        {
            "name": "prefix_reuse",
            "checkpoint": str(TINY_REAL.relative_to(ROOT)),
            "max_tokens": MAX_TOKENS,
            "rounds": rounds,
            "ttft_ratio": round(median(ttft), 3),
            "ttft_ratio_runs": [round(x, 3) for x in ttft],
            "prefill_ratio": round(median(prefill), 3),
            "wall_ratio": round(median(wall), 3),
            "identical": same,
            "prefix_cache": reuse.backend.real._prefixes.stats(),  # hits and saved tokens: the reuse happened
            "image_cache": reuse.backend.real._images.stats(),
        }
    )


if __name__ == "__main__":
    main()
