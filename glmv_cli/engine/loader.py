"""Load GLM-4.6V-Flash (hub id or local folder) with its own processor, on the right device.

Only the local backend imports this module: it is where torch and transformers come in.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from glmv_cli.errors import ModelLoadError, UsageError

QUANT_CHOICES = ("auto", "none", "8bit", "4bit")
DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
# The vision tower and the output head stay unquantised: a quantised ViT reads garbage values.
SKIP_QUANT_MODULES = ["model.visual", "lm_head"]
BIG_GPU_BYTES = 40 * 2**30  # bf16 weights are 20.6 GB; below this, 4-bit leaves room for KV cache
BF16_MIN_CAPABILITY = (8, 0)  # Ampere and later; T4 (7.5) and V100 (7.0) have no bf16 units


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    tokenizer: Any
    model_id: str
    revision: str | None
    device: str
    dtype: str
    quant: str
    eos_ids: list[int]
    vocab_size: int
    processor_kind: str  # "stock" or "image-only" (no torchvision)
    load_s: float
    kv_dtype: torch.dtype | None = None  # the KV cache's, where it differs from the model's (pick_kv_dtype)
    grammar: Any = None  # the llguidance compiler, built on first constrained request
    closer: Any = None  # the closing rule, likewise


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device} asked for, but no CUDA GPU is available", "use --device cpu")
    return device


def auto_cuda_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 on GPUs that compute it natively (compute capability 8.0+), fp16 on older ones (T4, V100)."""
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """--dtype wins; auto is float32 on CPU and the GPU's best half precision on CUDA."""
    if dtype == "auto":
        if device.startswith("cuda"):
            # Not torch.cuda.is_bf16_supported(): by default it counts emulated bf16, so says yes on a T4.
            return auto_cuda_dtype(torch.cuda.get_device_capability(torch.device(device)))
        return torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {dtype!r}", f"choose from auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic in hardware (AMX or AVX512-BF16), by torch's own probes."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    try:
        return any(probe() for probe in probes if probe is not None)
    except Exception:  # noqa: BLE001 - a private probe that changed: take the safe answer
        return False


def pick_kv_dtype(dtype: str, device: str, compute: torch.dtype) -> torch.dtype | None:
    """The KV cache's dtype where it differs from the model's (None: the model's): bfloat16 under
    `--dtype auto` on a CPU that computes bfloat16.

    There the model decodes in float32 (a decoding step's small products are faster so on CPU) and
    keeps its keys and values in bfloat16, as llama.cpp keeps a half-precision cache: decoding reads
    the whole cache at every step and is bound by memory, so half the bytes is nearly half the
    attention time (tiny checkpoint, 32 rows: 1.9 ms a layer-step down to 1.0 ms), and the cache
    takes half the memory. An explicit --dtype keeps the cache in that dtype too.

    Prefilling prompts under bfloat16 autocast (AMX) was tried too: 8 prompts of 984 tokens in 0.17 s
    instead of 0.26 s, but over 1,000 real-size pages the process's memory grew from 3.3 GB to 4.4 GB
    (the allocator fragments on the mixed-dtype temporaries; malloc_trim won back only a third).
    """
    if dtype == "auto" and device == "cpu" and compute == torch.float32 and cpu_computes_bf16():
        return torch.bfloat16
    return None


def pick_quant(quant: str, device: str) -> str:
    """The default rule: 4-bit on GPUs under 40 GB, none on big GPUs and on CPU."""
    if quant not in QUANT_CHOICES:
        raise UsageError(f"unknown --quant {quant!r}", "choose from auto, none, 8bit, 4bit")
    if quant != "auto":
        return quant
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        return "none" if total >= BIG_GPU_BYTES else "4bit"
    return "none"


def looks_like_path(model: str) -> bool:
    """A hub id is `org/name`; anything on disk, absolute, relative or deeper is a folder."""
    return Path(model).expanduser().exists() or model.startswith((".", "/", "~")) or model.count("/") > 1


def _check_folder(model: str) -> Path:
    folder = Path(model).expanduser()
    if not folder.exists():
        raise ModelLoadError(
            f"model folder {folder} does not exist",
            "pass --model with a folder holding config.json, or a hub id such as zai-org/GLM-4.6V-Flash",
        )
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{folder} is not a model folder (no config.json)",
            "download one with `hf download zai-org/GLM-4.6V-Flash --local-dir DIR`, then --model DIR",
        )
    return folder


def _check_hub(model: str, revision: str | None) -> tuple[str, bool]:
    """(model, local_files_only): a cached model loads without touching the network; an uncached
    one needs the hub, and when it cannot be reached we say so at once instead of retrying."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
        return model, True
    hint = f"download it with `hf download {model}` on a connected machine, or pass --model PATH to a local folder"
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"model {model!r} is not in the local Hugging Face cache and glmv is offline (HF_HUB_OFFLINE=1)", hint
        )
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelLoadError(
            f"model {model!r} is not in the local Hugging Face cache and {constants.ENDPOINT} cannot be reached", hint
        )
    return model, False


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds, not after minutes of retries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the download try
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _image_only_processor_class():
    """GLM's processor without its video slot, for machines without torchvision."""
    from transformers.models.glm46v.processing_glm46v import Glm46VProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyGlmProcessor(Glm46VProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.video_start_id = tokenizer.convert_tokens_to_ids("<|begin_of_video|>")
            self.video_end_id = tokenizer.convert_tokens_to_ids("<|end_of_video|>")

    return ImageOnlyGlmProcessor


def load_processor(source: str, revision: str | None, local_only: bool = True) -> tuple[Any, str]:
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        try:
            return AutoProcessor.from_pretrained(source, revision=revision, local_files_only=local_only), "stock"
        except ImportError:
            pass  # torchvision present but unusable beside this torch
    processor = _image_only_processor_class().from_pretrained(source, revision=revision, local_files_only=local_only)
    return processor, "image-only"


@dataclass(frozen=True)
class LoadPlan:
    """How the model will be loaded: decided before any weight is read, so it can be tested anywhere."""

    device: str
    dtype: torch.dtype
    quant: str
    quantization_config: Any  # a BitsAndBytesConfig on CUDA, else None
    kv_dtype: torch.dtype | None = None  # the KV cache's; None: the model's


def plan_load(device: str = "auto", dtype: str = "auto", quant: str = "auto") -> LoadPlan:
    """Device, dtype and quantisation from the flags and the hardware; 4-bit computes in the model's dtype."""
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    quant = pick_quant(quant, device)
    qconfig = _quantization_config(quant, device, torch_dtype)
    return LoadPlan(device, torch_dtype, quant, qconfig, pick_kv_dtype(dtype, device, torch_dtype))


def _quantization_config(quant: str, device: str, compute_dtype: torch.dtype):
    if quant == "none":
        return None
    if not device.startswith("cuda"):
        if quant == "4bit":
            raise UsageError("--quant 4bit needs a CUDA GPU (bitsandbytes nf4)", "on CPU use --quant 8bit or none")
        return None  # CPU int8 is applied after loading
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelLoadError(
            f"--quant {quant} needs bitsandbytes, which is not installed", "pip install 'glmv[gpu]' or use --quant none"
        ) from exc
    if quant == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=SKIP_QUANT_MODULES,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=SKIP_QUANT_MODULES)


def _quantize_cpu_int8(model: Any) -> None:
    """Dynamic int8 weights for the text decoder's Linear layers (torch built-in, CPU only)."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.model.language_model = quantize_dynamic(model.model.language_model, {torch.nn.Linear}, dtype=torch.qint8)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    for token in ("<|endoftext|>", "<|user|>", "<|observation|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", quant: str = "auto", revision: str | None = None
) -> LoadedModel:
    """Load model + processor once; every failure becomes one ModelLoadError line."""
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    started = time.perf_counter()
    plan = plan_load(device, dtype, quant)
    device, torch_dtype, quant, qconfig = plan.device, plan.dtype, plan.quant, plan.quantization_config
    if looks_like_path(model):
        source, local_only = str(_check_folder(model)), True
    else:
        source, local_only = _check_hub(model, revision)
    hf_logging.set_verbosity_error()
    if local_only:
        hf_logging.disable_progress_bar()  # nothing to download: the weight-loading bar is noise
    else:
        hf_logging.enable_progress_bar()  # a first run downloads ~20 GB: show it
    try:
        processor, kind = load_processor(source, revision, local_only)
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "revision": revision, "local_files_only": local_only}
        if qconfig is not None:
            kwargs.update(quantization_config=qconfig, device_map={"": device})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (UsageError, ModelLoadError):
        raise
    except OSError as exc:
        raise ModelLoadError(
            f"model {model!r} could not be downloaded: {_first_line(exc)}",
            f"download it with `hf download {model}` on a connected machine, or pass --model PATH to a local folder",
        ) from exc
    except Exception as exc:  # a broken or incompatible checkpoint
        raise ModelLoadError(
            f"model {model!r} failed to load: {_first_line(exc)}",
            "check the folder is a complete GLM-4.6V checkpoint and transformers >= 5.2",
        ) from exc
    if qconfig is None:
        net.to(device)
        if quant == "8bit":
            _quantize_cpu_int8(net)
    if plan.kv_dtype is not None:  # attention meets the cache in its dtype
        from glmv_cli.engine.decode import KV_ATTENTION, register_kv_attention

        register_kv_attention()
        net.set_attn_implementation(KV_ATTENTION)
    _patch_embeds_as_products(net)
    net.eval()
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    return LoadedModel(
        model=net,
        processor=processor,
        tokenizer=tokenizer,
        model_id=model,
        revision=revision or getattr(net.config, "_commit_hash", None),
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
        quant=quant,
        eos_ids=_eos_ids(net, tokenizer),
        vocab_size=int(net.config.text_config.vocab_size),
        processor_kind=kind,
        load_s=time.perf_counter() - started,
        kv_dtype=plan.kv_dtype,
    )


class PatchProduct(torch.nn.Module):
    """A patch embedding's Conv3d, whose kernel is its stride and its whole input, as the matrix product it is.

    The same weights (`weight`, `bias`: the state dict keeps its names) and the same sums in another
    order. oneDNN's 3-D convolution is slow at this shape: a page group's patches (8 pages, 4,608
    patches of 3 x 2 x 14 x 14) took 15 ms, the product 3.5 ms; vLLM embeds these patches with a
    linear layer too.
    """

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        flat = patches.reshape(patches.shape[0], -1)
        out = torch.nn.functional.linear(flat, self.weight.reshape(self.weight.shape[0], -1), self.bias)
        return out.view(*out.shape, 1, 1, 1)


def _patch_embeds_as_products(net: Any) -> None:
    """Swap each vision patch embedding's Conv3d for PatchProduct where it is a plain, unquantised one
    whose input is exactly one kernel (GLM-4V's Glm4vVisionPatchEmbed)."""
    for module in net.modules():
        conv = getattr(module, "proj", None)
        if (
            type(conv) is torch.nn.Conv3d
            and type(conv.weight) is torch.nn.Parameter
            and conv.weight.dtype.is_floating_point
            and tuple(conv.kernel_size) == tuple(conv.stride)
            and conv.padding == (0, 0, 0)
            and conv.groups == 1
            and tuple(conv.kernel_size)
            == tuple(getattr(module, k, None) for k in ("temporal_patch_size", "patch_size", "patch_size"))
        ):
            module.proj = PatchProduct(conv)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
