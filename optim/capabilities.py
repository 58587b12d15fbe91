"""What this machine can run: every option, available or not, and why not. The one place for version and
feature checks (which packages, which GPU, ZeroGPU or not).

    >>> caps = detect()
    >>> sorted(caps)
    ['attention_backends', 'cache_methods', 'compile', 'device', 'offload', 'quantization']

Package checks for attention backends are diffusers' own (`optim.techniques.attention.backend_requirement`), so we
never claim a backend diffusers would refuse; device needs (CUDA, Hopper, NPU/XLA, the Hub) come from the
diffusers attention-backends page and from running each backend on CPU (see FACTS in the project notes).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from functools import lru_cache
from typing import Any

from optim.config import ATTENTION_BACKENDS, CACHE_METHODS

# The seed's table: backend -> family. Names diffusers registers beyond it get a family by prefix.
SEED_BACKENDS: dict[str, str] = {
    "native": "PyTorch native",
    "flex": "FlexAttention",
    "_native_cudnn": "PyTorch native",
    "_native_efficient": "PyTorch native",
    "_native_flash": "PyTorch native",
    "_native_math": "PyTorch native",
    "_native_npu": "PyTorch native",
    "_native_xla": "PyTorch native",
    "flash": "FlashAttention",
    "flash_varlen": "FlashAttention",
    "_flash_3": "FlashAttention",
    "_flash_varlen_3": "FlashAttention",
    "_flash_3_hub": "FlashAttention",
    "sage": "SageAttention",
    "sage_varlen": "SageAttention",
    "_sage_qk_int8_pv_fp8_cuda": "SageAttention",
    "_sage_qk_int8_pv_fp8_cuda_sm90": "SageAttention",
    "_sage_qk_int8_pv_fp16_cuda": "SageAttention",
    "_sage_qk_int8_pv_fp16_triton": "SageAttention",
    "xformers": "xFormers",
}

# Backends that run on a CPU (measured: the others fail when set or at run time without CUDA).
CPU_ATTENTION = ("native", "_native_math", "_native_flash", "flex")

GPU_EXTRAS_HINT = "pip install -r requirements-gpu.txt on a CUDA machine"


def family(backend: str) -> str:
    if backend in SEED_BACKENDS:
        return SEED_BACKENDS[backend]
    name = backend.lstrip("_")
    if name.startswith("sage"):
        return "SageAttention"
    if name.startswith(("flash", "aiter")):
        return "FlashAttention"
    return "other"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def on_zero_gpu() -> bool:
    """Hugging Face ZeroGPU Spaces set SPACES_ZERO_GPU."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


@lru_cache(maxsize=1)
def device_info() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "cuda": cuda,
        "device": "cuda" if cuda else "cpu",
        "name": None,
        "memory_gb": None,
        "compute_capability": None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "ram_gb": _ram_gb(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "cuda_version": torch.version.cuda,
        "zero_gpu": on_zero_gpu(),
        "compiler": shutil.which("gcc") or shutil.which("cc") or shutil.which("clang"),
    }
    if cuda:
        properties = torch.cuda.get_device_properties(0)
        info["name"] = properties.name
        info["memory_gb"] = round(properties.total_memory / 1024**3, 1)
        info["compute_capability"] = f"{properties.major}.{properties.minor}"
    else:
        from optim.measure import device_name

        info["name"] = device_name("cpu")
    return info


def _ram_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        return None


def _capability(info: dict[str, Any]) -> float:
    return float(info["compute_capability"] or 0.0)


def _option(name: str, reason: str | None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "available": reason is None, "reason": reason, **extra}


# ------------------------------------------------------------------------------------------------ attention


def attention_reason(backend: str, info: dict[str, Any]) -> str | None:
    """None if this backend can run here, else why not."""
    from optim.techniques.attention import backend_requirement

    cuda = info["cuda"]
    sm = _capability(info)
    if backend in ("native", "_native_math"):
        return None
    if backend == "flex":
        return backend_requirement(backend)
    if backend in ("_native_flash",):
        return None if not cuda or sm >= 8.0 else "PyTorch's flash kernel needs an Ampere or newer GPU"
    if backend in ("_native_efficient", "_native_cudnn"):
        return None if cuda else "needs CUDA: PyTorch has no CPU kernel for it ('No viable backend')"
    if backend == "_native_npu":
        return "needs an Ascend NPU and torch_npu"
    if backend == "_native_xla":
        return "needs an XLA device (TPU) and torch_xla"
    if backend.endswith("_hub"):
        if backend.startswith("aiter"):
            return "needs an AMD ROCm GPU, the kernels package and the Hugging Face Hub"
        missing = backend_requirement(backend)
        needs = "needs the Hugging Face Hub (the kernels package downloads the kernel at run time)"
        if os.environ.get("HF_HUB_OFFLINE"):
            return needs + "; the Hub is offline here"
        if missing:
            return f"{needs} and the kernels package, which is not installed"
        if not cuda:
            return "needs CUDA"
        if "_3" in backend and sm < 9.0:
            return "FlashAttention-3 needs a Hopper GPU (sm90); use 'flash'"
        return None
    missing = backend_requirement(backend)
    package = {"flash": "flash-attn", "sage": "sageattention", "xformers": "xformers"}
    if backend.startswith(("_flash_3", "_flash_varlen_3")):
        if cuda and sm < 9.0:
            return "FlashAttention-3 needs a Hopper GPU (sm90); use 'flash'"
        if missing:
            return "FlashAttention-3 (flash_attn_interface) is not installed: build it from source on a Hopper GPU"
    for prefix, dist in package.items():
        if backend.lstrip("_").startswith(prefix) and missing:
            return f"{dist} is not installed ({GPU_EXTRAS_HINT}); it needs CUDA"
    if missing:
        return missing
    if not cuda:
        return "needs CUDA"
    if backend.endswith("_sm90") and sm < 9.0:
        return "needs a Hopper GPU (sm90)"
    if "fp8" in backend and sm < 8.9:
        return "FP8 needs an Ada or Hopper GPU (sm89+)"
    return None


def attention_backends(info: dict[str, Any]) -> list[dict[str, Any]]:
    from optim.techniques.attention import registered_backends

    names = list(dict.fromkeys([*SEED_BACKENDS, *ATTENTION_BACKENDS, *registered_backends()]))
    return [
        _option(name, attention_reason(name, info), family=family(name), in_seed_table=name in SEED_BACKENDS)
        for name in names
    ]


# --------------------------------------------------------------------------------------------------- caches

CACHE_DESCRIPTIONS = {
    "none": "no cache",
    "first_block_cache": "First Block Cache: skip the other blocks while the first block's residual barely changes",
    "pyramid_attention_broadcast": "Pyramid Attention Broadcast: reuse attention outputs every N steps",
    "faster_cache": "FasterCache: reuse attention and approximate the unconditional branch",
    "mag_cache": "MagCache: skip steps while the residual magnitude ratio stays near 1",
    "taylorseer": "TaylorSeer: predict skipped block outputs with a Taylor expansion",
}


def cache_methods(info: dict[str, Any]) -> list[dict[str, Any]]:
    out = [_option(name, None, description=CACHE_DESCRIPTIONS[name]) for name in CACHE_METHODS]
    out.append(
        _option(
            "sea_cache",
            "not offered: diffusers' SeaCache targets other architectures and skipped nothing on FLUX",
            description="SeaCache",
        )
    )
    out.append(
        _option(
            "text_kv_cache",
            "not offered: diffusers' TextKVCache targets models with separate text key/value projections, not FLUX",
            description="TextKVCache",
        )
    )
    return out


# ---------------------------------------------------------------------------------------------- quantization


def quantization_options(info: dict[str, Any]) -> list[dict[str, Any]]:
    cuda = info["cuda"]
    sm = _capability(info)
    bnb = _installed("bitsandbytes")
    torchao = _installed("torchao")
    quanto = _installed("optimum.quanto")
    bnb_reason = None
    if not bnb:
        bnb_reason = "bitsandbytes is not installed"
    elif not cuda:
        bnb_reason = (
            "bitsandbytes on a diffusers model (the transformer, the VAE) needs a CUDA GPU; on this CPU it can "
            "quantize the text encoders only"
        )
    out = [
        _option("none", None),
        _option("bitsandbytes_4bit", bnb_reason, variants=["nf4", "fp4"], partial=bnb and not cuda),
        _option("bitsandbytes_8bit", bnb_reason, partial=bnb and not cuda),
    ]
    for quant_type in ("int8_weight_only", "int8_dynamic", "float8_weight_only", "float8_dynamic"):
        reason = None if torchao else "torchao is not installed"
        if reason is None and quant_type == "float8_dynamic" and not (cuda and sm >= 8.9):
            reason = "float8 dynamic activation quantization needs an Ada or Hopper GPU (sm89+)"
        out.append(_option(f"torchao:{quant_type}", reason))
    for weights in ("int8", "int4", "int2", "float8"):
        out.append(_option(f"quanto:{weights}", None if quanto else "optimum-quanto is not installed"))
    return out


# ---------------------------------------------------------------------------------------------------- offload


def offload_options(info: dict[str, Any]) -> list[dict[str, Any]]:
    cuda = info["cuda"]
    needs = None if cuda else "needs an accelerator (CUDA) to onload to; diffusers refuses it on a CPU-only machine"
    return [
        _option("none", None),
        _option("model_cpu", needs),
        _option("sequential_cpu", needs),
        _option("group", None, note=None if cuda else "on CPU only offload_to_disk saves memory"),
        _option("group:use_stream", None if cuda else "CUDA streams need a CUDA GPU"),
        _option("vae_slicing", None),
        _option("vae_tiling", None),
    ]


# ---------------------------------------------------------------------------------------------------- compile


def compile_options(info: dict[str, Any]) -> list[dict[str, Any]]:
    if info["zero_gpu"]:
        jit = "ZeroGPU does not support just-in-time torch.compile (use ahead-of-time compilation)"
    elif not info["cuda"] and not info["compiler"]:
        jit = "torch.compile on CPU needs a C compiler (gcc), which is not installed"
    else:
        jit = None
    cuda_graphs = None if info["cuda"] else "reduce-overhead uses CUDA graphs: needs a CUDA GPU"
    return [
        _option("off", None),
        _option("regional", jit),
        _option("full", jit),
        _option("mode:default", jit),
        _option("mode:reduce-overhead", jit or cuda_graphs),
        _option("mode:max-autotune", jit),
        _option("mode:max-autotune-no-cudagraphs", jit),
    ]


@lru_cache(maxsize=1)
def _detect_cached() -> dict[str, Any]:
    info = device_info()
    return {
        "device": info,
        "attention_backends": attention_backends(info),
        "cache_methods": cache_methods(info),
        "quantization": quantization_options(info),
        "offload": offload_options(info),
        "compile": compile_options(info),
    }


def detect() -> dict[str, Any]:
    """Everything, as JSON values (cached: the answer does not change while the process runs)."""
    return _detect_cached()


def reason(section: str, name: str) -> str | None:
    """Why option `name` of `section` is unavailable here (None if it is available or unknown)."""
    for option in detect()[section]:
        if option["name"] == name:
            return option["reason"]
    return None
