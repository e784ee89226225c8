"""The GPU check: GLM-4.6V-Flash at full size with random weights, measured on one CUDA GPU, no network.

    make gpu-wheels      # here: wheels for what a GPU machine lacks (build/gpu-wheels, under 64 MiB)
    make gpu-check       # there: installs them offline, runs this, writes $GLMV_GPU_CHECK_OUT/gpu-check.json

The model is built from the real configuration (../shared/glm46v/FACTS.md: 40 layers of 4096, 2 KV
heads of 128, the 24-layer vision tower) straight onto the GPU, so nothing is downloaded. Every
part is a step that records its figures or its error and lets the rest run; the report is written
after each step, so a check cut short still leaves what it measured. The steps:

- the `gpu`-marked tests (4-bit loading with the vision tower unquantised, the stock processor);
- in bf16, then in 4-bit NF4 where bitsandbytes is there (the vision tower left in bf16): load
  time and peak memory, the prefill of one A4 page at 150 dpi (2,772 visual tokens), decode
  tokens/s at 1, 8 and 32 rows, and the largest batch of page prompts that fits in 24 GB;
- pages/s for 32 page prompts, prefilled and decoded to a fixed length in batches of 8 (glmv
  extract's shape of work; glmv's own pipeline needs a tokenizer with the real ids, which no
  machine here has).

Every part that needs no GPU (the configurations, the inputs, the plan, the report) runs on CPU in
tests/test_gpu_check.py with a small configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Ids and sizes from ../shared/glm46v/FACTS.md
IDS = {
    "endoftext": 151329, "gmask": 151331, "sop": 151333, "user": 151336, "assistant": 151337,
    "observation": 151338, "begin_image": 151339, "end_image": 151340, "image": 151363, "video": 151364,
}  # fmt: skip
A4_150DPI = (1240, 1754)  # pixels
BUDGET_24GB = 24 * 2**30


def real_config() -> Any:
    """GLM-4.6V-Flash's configuration as the checkpoint ships it (FACTS.md); the vision tower is transformers'
    GLM-4V default, which is the checkpoint's (depth 24, hidden 1536, out 4096)."""
    from transformers import Glm4vConfig

    return Glm4vConfig(
        text_config={
            "vocab_size": 151552,
            "hidden_size": 4096,
            "intermediate_size": 13696,
            "num_hidden_layers": 40,
            "num_attention_heads": 32,
            "num_key_value_heads": 2,
            "max_position_embeddings": 131072,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 500000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [8, 12, 12],
            },
            "pad_token_id": IDS["endoftext"],
            "eos_token_id": [IDS["endoftext"], IDS["user"], IDS["observation"]],
        },
        vision_config={"depth": 24, "hidden_size": 1536, "out_hidden_size": 4096, "intermediate_size": 13696},
        image_token_id=IDS["image"],
        video_token_id=IDS["video"],
        image_start_token_id=IDS["begin_image"],
        image_end_token_id=IDS["end_image"],
    )


def small_config() -> Any:
    """The same layout, tiny: for the CPU test of everything but the GPU."""
    config = real_config()
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 256, 256, 2
    text.num_attention_heads, text.num_key_value_heads = 2, 1  # heads of 128, as the real ones
    vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads = 1, 64, 128, 2
    vision.out_hidden_size = 256
    return config


def page_grid(width: int, height: int, patch: int = 14, merge: int = 2) -> tuple[int, int, int]:
    """The processor's (t, h, w) patch grid for a page: sides rounded to the 28-pixel unit."""
    unit = patch * merge
    return 1, max(1, round(height / unit)) * merge, max(1, round(width / unit)) * merge


def page_inputs(config: Any, rows: int = 1, prompt_tokens: int = 256, size: tuple[int, int] = A4_150DPI) -> dict:
    """Random inputs shaped like glmv's prompt for one page per row: the chat head, the image's
    tokens, the prompt, the generation prompt (ids from FACTS.md; random pixels and prompt text)."""
    import torch

    t, h, w = page_grid(*size)
    visual = t * h * w // 4
    head = [IDS["gmask"], IDS["sop"], IDS["user"], 198, IDS["begin_image"]]
    tail = [IDS["end_image"]] + [1000 + (i * 7919) % 100000 for i in range(prompt_tokens)] + [IDS["assistant"], 198]
    ids = torch.tensor([head + [IDS["image"]] * visual + tail] * rows)
    vision = config.vision_config
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == IDS["image"]).long(),
        "pixel_values": torch.randn(rows * t * h * w, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[t, h, w]] * rows),
    }


def text_inputs(rows: int, tokens: int) -> dict:
    import torch

    ids = torch.tensor([[IDS["gmask"], IDS["sop"]] + [1000 + (i * 104729) % 100000 for i in range(tokens)]] * rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class Report:
    """The JSON report, rewritten after every step."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": {}}
        path.parent.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            result = {"ok": True, **fn()}
        except Exception as exc:  # noqa: BLE001 - a failed step is a figure too; the others still run
            result = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
        result["seconds"] = round(time.perf_counter() - started, 2)
        self.data["steps"][name] = result
        self.write()
        return result if result["ok"] else None

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        tmp.replace(self.path)


def environment() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__}
    info["python"] = sys.version.split()[0]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"device": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
    for name in ("bitsandbytes", "llguidance", "pypdfium2", "torchvision"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: noted
            info[name] = None
    return info


def build(config: Any, device: str, quant: str) -> tuple[Any, dict[str, Any]]:
    """The model with random weights, made on `device` directly (bf16), then its text Linears in NF4 for 4bit."""
    import torch
    from transformers import Glm4vForConditionalGeneration

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device == "cuda" else torch.float32)
    try:
        with torch.device(device):
            model = Glm4vForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    if quant == "4bit":
        quantize_nf4(model.model.language_model)
    sync()
    figures = {"load_s": round(time.perf_counter() - started, 2)}
    figures["parameters_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    if device == "cuda":
        figures["memory_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        figures["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return model, figures


def quantize_nf4(module: Any) -> None:
    """Every Linear of `module` as a bitsandbytes NF4 Linear4bit (bf16 compute), layer by layer."""
    import bitsandbytes as bnb
    import torch

    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            q = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=torch.bfloat16, quant_type="nf4", device="meta",
            )  # fmt: skip
            q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, name, q.to(child.weight.device))
            del child
        else:
            quantize_nf4(child)


def _on(inputs: dict, device: str, model: Any) -> dict:
    out = {k: v.to(device) for k, v in inputs.items()}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(next(model.model.visual.parameters()).dtype)
    return out


def prefill_page(model: Any, config: Any, device: str, size: tuple[int, int] = A4_150DPI) -> dict[str, Any]:
    inputs = _on(page_inputs(config, size=size), device, model)
    _timed(lambda: _prefill(model, inputs), device)  # warm-up
    seconds = _timed(lambda: _prefill(model, inputs), device)
    return {"prompt_tokens": int(inputs["input_ids"].shape[1]), "prefill_s": round(seconds, 3)}


def _prefill(model: Any, inputs: dict) -> tuple[Any, Any, Any]:
    """A prefill as glmv's engine runs it (explicit M-RoPE positions): its cache, next tokens, rope offsets."""
    from transformers import DynamicCache

    from glmv_cli.engine.decode import mrope_positions

    positions, deltas = mrope_positions(model, inputs)
    cache = DynamicCache(config=model.config)
    out = model(**inputs, position_ids=positions, cache=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1].argmax(-1, keepdim=True), deltas.to(inputs["input_ids"].device)


def _decode(model: Any, inputs: dict, cache: Any, nxt: Any, deltas: Any, tokens: int) -> None:
    """`tokens` greedy steps after a prefill (EOS ignored: random weights never stop)."""
    import torch

    mask = inputs["attention_mask"]
    length = mask.shape[1]
    for step in range(tokens):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = (deltas + length + step).view(1, -1, 1).expand(3, -1, -1)
        out = model(input_ids=nxt, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)


def decode_speed(model: Any, device: str, rows: int, prompt: int = 512, tokens: int = 64) -> dict[str, Any]:
    """Greedy decode of `tokens` tokens for `rows` text prompts: tokens/s after the prefill."""
    import torch

    inputs = _on(text_inputs(rows, prompt), device, model)
    with torch.inference_mode():
        cache, nxt, deltas = _prefill(model, inputs)
        seconds = _timed(lambda: _decode(model, inputs, cache, nxt, deltas, tokens), device)
    return {
        "rows": rows,
        "tokens_per_s": round(rows * tokens / seconds, 1),
        "row_tokens_per_s": round(tokens / seconds, 1),
    }


def largest_batch(model: Any, config: Any, device: str, budget: int = BUDGET_24GB, limit: int = 256) -> dict[str, Any]:
    """The most A4-page prompts one prefill holds within `budget` bytes of GPU memory (doubling, then halving)."""
    import torch

    if device != "cuda":
        return {"skipped": "needs CUDA"}
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))

    def fits(rows: int) -> bool:
        try:
            inputs = _on(page_inputs(config, rows=rows), device, model)
            with torch.inference_mode():
                _prefill(model, inputs)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    try:
        if not fits(1):
            return {"rows": 0}
        low, high = 1, 2
        while high <= limit and fits(high):
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return {"rows": low, "budget_gb": budget / 2**30}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def pages_per_s(
    model: Any, config: Any, device: str, pages: int = 32, batch: int = 8, tokens: int = 64, size=A4_150DPI
) -> dict:
    """`pages` page prompts, prefilled and decoded to `tokens` tokens in batches of `batch`."""

    def run() -> None:
        for _ in range(pages // batch):
            inputs = _on(page_inputs(config, rows=batch, size=size), device, model)
            cache, nxt, deltas = _prefill(model, inputs)
            _decode(model, inputs, cache, nxt, deltas, tokens - 1)

    seconds = _timed(run, device)
    return {"pages": pages, "batch": batch, "output_tokens": tokens, "pages_per_s": round(pages / seconds, 3)}


def _timed(fn: Callable[[], Any], device: str) -> float:
    import torch

    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - started


def gpu_tests() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-300:]}


def plan(device: str, quants: list[str], tests: bool) -> list[str]:
    """The steps, in order."""
    steps = ["environment"] + (["gpu_tests"] if tests else [])
    for quant in quants:
        steps += [f"{quant}/build", f"{quant}/prefill_page"]
        steps += [f"{quant}/decode_{rows}" for rows in (1, 8, 32)]
        steps += [f"{quant}/largest_batch_24gb", f"{quant}/pages_per_s"]
    return steps


def run(
    out: Path,
    config: Any,
    device: str,
    quants: list[str],
    tests: bool,
    rows: tuple[int, ...] = (1, 8, 32),
    pages: tuple[int, int] = (32, 8),
    size: tuple[int, int] = A4_150DPI,
) -> dict:
    """Every step for each quantisation in turn; `pages` is (pages, batch) for the pages/s step."""
    import torch

    report = Report(out / "gpu-check.json")
    report.data["plan"] = plan(device, quants, tests)
    report.step("environment", environment)
    if tests:
        report.step("gpu_tests", gpu_tests)
    for quant in quants:
        built: dict[str, Any] = {}

        def make(quant: str = quant, built: dict[str, Any] = built) -> dict[str, Any]:
            built["model"], figures = build(config, device, quant)
            return figures

        if report.step(f"{quant}/build", make) is None:
            continue
        model = built.pop("model")
        report.step(f"{quant}/prefill_page", lambda m=model: prefill_page(m, config, device, size))
        for n in rows:
            report.step(f"{quant}/decode_{n}", lambda m=model, n=n: decode_speed(m, device, n))
        report.step(f"{quant}/largest_batch_24gb", lambda m=model: largest_batch(m, config, device))
        report.step(
            f"{quant}/pages_per_s", lambda m=model: pages_per_s(m, config, device, pages[0], pages[1], size=size)
        )
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    report.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report.write()
    return report.data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tools/gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("GLMV_GPU_CHECK_OUT", ROOT / "build" / "gpu-check"))
    )
    parser.add_argument("--small", action="store_true", help="the small configuration (a dry run, CPU is fine)")
    parser.add_argument("--no-tests", action="store_true", help="skip the gpu-marked tests")
    args = parser.parse_args(argv)
    import importlib.util

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    quants = ["bf16"] + (["4bit"] if device == "cuda" and importlib.util.find_spec("bitsandbytes") else [])
    config = small_config() if args.small or device == "cpu" else real_config()
    data = run(args.out, config, device, quants, tests=not args.no_tests)
    failed = [name for name, step in data["steps"].items() if not step["ok"]]
    print(json.dumps({"report": str(args.out / "gpu-check.json"), "failed_steps": failed}, indent=2))


if __name__ == "__main__":
    main()
