"""tools/gpu_check.py without a GPU: the real configuration is GLM-4.6V-Flash's, and every step (inputs,
model, measurements, the JSON report) runs end to end on CPU with the small configuration."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules.setdefault("gpu_check", gpu_check)
spec.loader.exec_module(gpu_check)


def test_the_real_configuration_is_the_checkpoints():
    config = gpu_check.real_config()
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_key_value_heads, text.vocab_size) == (
        40,
        4096,
        2,
        151552,
    )
    assert text.hidden_size // text.num_attention_heads == 128 and text.rope_parameters["mrope_section"] == [8, 12, 12]
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size) == (24, 1536, 4096)
    assert config.image_token_id == 151363 and text.eos_token_id == [151329, 151336, 151338]
    assert gpu_check.page_grid(1240, 1754) == (1, 126, 88)  # an A4 page at 150 dpi: 2,772 visual tokens


def test_every_step_runs_and_lands_in_the_report(tmp_path):
    config = gpu_check.small_config()
    data = gpu_check.run(tmp_path, config, "cpu", ["bf16"], tests=False, rows=(1, 2), pages=(2, 1), size=(280, 336))
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report == data and report["finished"]
    steps = report["steps"]
    failed = {name: step.get("error") for name, step in steps.items() if not step["ok"]}
    assert not failed, failed
    assert steps["bf16/prefill_page"]["prompt_tokens"] > 10 * 12  # a 280 x 336 page: 120 visual tokens
    assert steps["bf16/decode_2"]["tokens_per_s"] > 0 and steps["bf16/pages_per_s"]["pages_per_s"] > 0
    assert steps["bf16/largest_batch_24gb"]["skipped"] == "needs CUDA"
    assert "bf16/decode_32" in report["plan"] and "4bit/build" not in report["plan"]
