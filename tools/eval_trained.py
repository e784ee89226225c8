"""Measure the trained tiny checkpoint on held-out documents and write every figure into its manifest.

Held out: synthetic invoices drawn with another seed than training (layouts and values never seen),
as text-layer PDFs and as pixels only (PNG, JPEG, image-only PDF), run through the real commands:
`glmv extract DIR --schema invoice --text-hint on -o p.jsonl` then `glmv eval p.jsonl DIR`; `glmv ask`
questions through the same backend; and `glmv extract ../shared/corpus/invoices` (real documents).

    python tools/eval_trained.py            # `make eval-trained`; about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import synth_docs as S  # noqa: E402

TRAINED = ROOT / "models" / "glmv-tiny-trained"
HELD_OUT_SEED = 7  # training draws with seed 0
CORPUS_INVOICES = ROOT.parent / "shared" / "corpus" / "invoices"


def glmv(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLMV_MODEL": str(TRAINED), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "glmv_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)


def extract_and_eval(folder: Path, out: Path, *extra: str) -> dict[str, Any]:
    """`glmv extract FOLDER --schema invoice ... -o out`, then `glmv eval out FOLDER --json`."""
    started = time.time()
    run = glmv("extract", str(folder), "--schema", "invoice", "-o", str(out), "--no-cache", *extra)
    if run.returncode not in (0, 1):
        raise SystemExit(f"glmv extract failed ({run.returncode}):\n{run.stderr[-2000:]}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ev = glmv("eval", str(out), str(folder), "--format", "json")
    report = json.loads(ev.stdout) if ev.returncode == 0 else None
    statuses = [r["status"] for r in records]
    figures = {
        "documents": len(records),
        "ok_rate": round(statuses.count("ok") / len(records), 4),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "seconds": round(time.time() - started, 1),
    }
    if report:
        figures.update(
            field_f1=round(report["overall"]["f1"], 4),
            exact_documents=report["exact_documents"],
            confidence_auc=report["confidence_auc"],
            right_values=report["right_values"],
            wrong_values=report["wrong_values"],
        )
    return figures


def ask_figures(folder: Path, n: int) -> dict[str, Any]:
    """glmv ask's questions on text-layer PDFs, through the backend `glmv ask` uses: answers that end, right ones."""
    from glmv_cli.engine.base import GenerationSettings, Request
    from glmv_cli.engine.factory import create_backend
    from glmv_cli.extraction.prompt import pick_text_hint, question_prompt
    from glmv_cli.inputs import fit_for_vision, load_document

    rng = random.Random(HELD_OUT_SEED)
    backend = create_backend(str(TRAINED))
    cap = backend.max_image_pixels()
    requests, wanted = [], []
    pdfs = sorted(p for p in folder.glob("*.pdf") if "-scan" not in p.name)[:n]
    questions = [(q, f) for k, q, f in S.QUESTIONS if k == "invoice"]
    for pdf in pdfs:
        truth = json.loads(pdf.with_name(pdf.stem + ".truth.json").read_text())
        page = load_document(pdf, pages=[1], max_pages=1).pages[0]
        question, fact = rng.choice(questions)
        prompt = question_prompt(question, pick_text_hint([page.text], "auto"))
        settings = GenerationSettings(max_new_tokens=1024)
        requests.append(Request(images=[fit_for_vision(page.image, max_pixels=cap)], prompt=prompt, settings=settings))
        doc = S.SynthDoc("invoice", "en", [], (0, 0), truth)
        wanted.append(S.ask_answer(doc, fact))
    gens = backend.generate(requests)
    ended = sum(g.finish_reason == "stop" and not g.error for g in gens)
    right = sum(g.text.strip() == w for g, w in zip(gens, wanted, strict=True))
    return {
        "questions": len(gens),
        "ended_rate": round(ended / len(gens), 4),
        "right_rate": round(right / len(gens), 4),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "held-out")
    parser.add_argument("-n", type=int, default=60, help="text-layer PDFs (pixel-only documents: 30)")
    args = parser.parse_args(argv)
    text_dir, pixel_dir = args.work / "text", args.work / "pixels"
    for d in (text_dir, pixel_dir):
        if d.exists():
            for p in d.iterdir():
                p.unlink()
    S.write_folder(text_dir, HELD_OUT_SEED, args.n, ("invoice",), forms=("pdf",))
    S.write_folder(pixel_dir, HELD_OUT_SEED + 1, 30, ("invoice",), forms=("png", "jpg", "scan"))

    figures: dict[str, Any] = {"held_out_seed": HELD_OUT_SEED}
    figures["text_layer"] = extract_and_eval(text_dir, args.work / "text.jsonl", "--text-hint", "on")
    print("text layer:", figures["text_layer"], file=sys.stderr)
    figures["pixels_only"] = extract_and_eval(pixel_dir, args.work / "pixels.jsonl")
    print("pixels only:", figures["pixels_only"], file=sys.stderr)
    figures["confidence_auc_all"] = _union_auc(args.work)
    figures["ask"] = ask_figures(text_dir, 30)
    print("ask:", figures["ask"], file=sys.stderr)
    if CORPUS_INVOICES.is_dir():
        out = args.work / "corpus-invoices.jsonl"
        run = glmv("extract", str(CORPUS_INVOICES), "--schema", "invoice", "-o", str(out), "--no-cache")
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        statuses = [r["status"] for r in records]
        figures["corpus_invoices"] = {
            "documents": len(records),
            "ok_rate": round(statuses.count("ok") / max(1, len(records)), 4),
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
            "exit_code": run.returncode,
        }
        print("corpus invoices:", figures["corpus_invoices"], file=sys.stderr)
    path = TRAINED / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["figures"] = figures
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    (TRAINED / "README.md").write_text(model_card(manifest))
    print(json.dumps(figures, indent=2))


def model_card(manifest: dict[str, Any]) -> str:
    f = manifest.get("figures", {})
    text, pixels, ask = f.get("text_layer", {}), f.get("pixels_only", {}), f.get("ask", {})
    corpus = f.get("corpus_invoices", {})
    return (
        "# glmv-tiny-trained\n\n"
        "A 1.7M-parameter checkpoint of GLM-4.6V-Flash's architecture (Glm4vForConditionalGeneration), trained on\n"
        "CPU by `tools/train_tiny.py` on synthetic documents from `tools/synth_docs.py`, for glmv's tests and\n"
        "benchmarks only: it reads values from a document's text layer, writes glmv's JSON and stops.\n\n"
        f"Recipe {manifest.get('recipe')}, seed {manifest.get('seed')}, {manifest.get('steps')} steps, "
        f"{manifest.get('train_seconds')} s of training.\n\n"
        f"Held-out synthetic invoices (seed {f.get('held_out_seed')}), `--text-hint on`: field F1 "
        f"{text.get('field_f1')}, {text.get('ok_rate')} ok, confidence ROC AUC {text.get('confidence_auc')}.\n"
        f"Pixels only: field F1 {pixels.get('field_f1')}, {pixels.get('ok_rate')} ok. "
        f"All held-out values: confidence ROC AUC {f.get('confidence_auc_all')}.\n"
        f"`glmv ask` on text-layer PDFs: {ask.get('ended_rate')} end by themselves, {ask.get('right_rate')} right.\n"
        f"../shared/corpus/invoices (real documents): {corpus.get('ok_rate')} ok.\n\n"
        "Every figure, and how it was measured: `manifest.json`, `tools/eval_trained.py`.\n"
    )


def _union_auc(work: Path) -> float | None:
    """Confidence's ROC AUC over every held-out value, text-layer and pixel-only documents together."""
    from glmv_cli.evaluation.report import evaluate

    both = work / "all"
    both.mkdir(exist_ok=True)
    for p in both.iterdir():
        p.unlink()
    for folder in (work / "text", work / "pixels"):
        for truth in folder.glob("*.truth.json"):
            (both / truth.name).symlink_to(truth.resolve())
    preds = work / "all.jsonl"
    preds.write_text((work / "text.jsonl").read_text() + (work / "pixels.jsonl").read_text())
    return evaluate(preds, both).confidence_auc


if __name__ == "__main__":
    main()
