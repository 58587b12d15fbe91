"""What this machine can run, and why not: every seed backend listed, correct on a CPU-only machine."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from optim.capabilities import SEED_BACKENDS, detect
from optim.techniques.attention import registered_backends

CPU_ONLY = not detect().device.cuda


def _by_value(path: str) -> dict:
    return {option.value: option for option in detect().options[path]}


def test_json_shape_and_every_backend_name():
    out = subprocess.run([sys.executable, "-m", "optim", "capabilities", "--json"], capture_output=True, text=True, check=True)
    caps = json.loads(out.stdout)
    assert set(caps) == {"device", "options"}
    assert set(caps["options"]) == {"attention.backend", "cache.method", "quantization.backend",
                                    "quantization.torchao.quant_type", "quantization.quanto.weights", "offload.mode",
                                    "offload.use_stream", "compile.mode", "compile.inductor_mode", "quality.metric"}
    for options in caps["options"].values():
        for option in options:
            assert {"value", "available", "reason"} <= set(option)
            assert (option["reason"] is None) == option["available"], option
    names = {option["value"] for option in caps["options"]["attention.backend"]}
    assert set(SEED_BACKENDS) <= names
    assert set(registered_backends()) <= names
    assert all(o["family"] for o in caps["options"]["attention.backend"])
    metrics = {o["value"]: o["available"] for o in caps["options"]["quality.metric"]}
    from optim.perceptual import lpips_status
    from optim.sweep import QUALITY_METRICS  # every metric a sweep ranks by is listed as available

    ranked = {name.removesuffix("_mean").removesuffix("_worst") for name in QUALITY_METRICS}
    assert ranked <= set(metrics)
    assert all(metrics[name] for name in ranked - {"lpips"})
    # LPIPS where its weights are on the machine (never downloaded at run time), never CLIP score.
    assert metrics["lpips"] is lpips_status()[0] and metrics["clip_score"] is False


@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU-only answers")
def test_cpu_machine_answers():
    attention = _by_value("attention.backend")
    assert {n for n, o in attention.items() if o.available} == {"native", "_native_math", "_native_flash", "flex"}
    assert "flash-attn is not installed" in attention["flash"].reason
    assert "sageattention is not installed" in attention["sage"].reason
    assert "xformers is not installed" in attention["xformers"].reason
    assert "needs CUDA" in attention["_native_efficient"].reason
    assert "Hugging Face Hub" in attention["_flash_3_hub"].reason
    assert "Hopper" in attention["_flash_3"].reason or "from source" in attention["_flash_3"].reason
    assert "torch_npu" in attention["_native_npu"].reason
    quantization = _by_value("quantization.backend")
    assert quantization["bitsandbytes_4bit"].available and "text encoders only" in quantization["bitsandbytes_4bit"].note
    assert _by_value("quantization.torchao.quant_type")["int8_weight_only"].available
    assert "sm89" in _by_value("quantization.torchao.quant_type")["float8_dynamic"].reason
    assert _by_value("quantization.quanto.weights")["int4"].available
    offload = _by_value("offload.mode")
    assert not offload["model_cpu"].available and not offload["sequential_cpu"].available
    assert offload["group"].available and not _by_value("offload.use_stream")[True].available
    assert _by_value("compile.mode")["regional"].available
    assert not _by_value("compile.inductor_mode")["reduce-overhead"].available
    assert _by_value("compile.inductor_mode")["max-autotune"].available  # no CUDA graphs on a CPU
    caches = _by_value("cache.method")
    assert all(caches[m].available for m in ("first_block_cache", "pyramid_attention_broadcast", "faster_cache",
                                             "mag_cache", "taylorseer"))


def test_zero_gpu_disables_just_in_time_compile():
    from optim import capabilities

    info = dataclasses.replace(capabilities.device_info(), zero_gpu=True)
    modes = {o.value: o for o in capabilities.compile_modes(info)}
    assert "ZeroGPU" in modes["regional"].reason and modes["off"].available


def test_the_cuda_needs_of_options_come_from_the_settings_facts():
    """One source: the reason a choice is unavailable on a CPU is the text beside its field in optim/config.py."""
    from optim import config as C

    if not CPU_ONLY:
        pytest.skip("checks a CPU-only machine")
    assert detect().reason("offload.mode", "model_cpu") == C.facts(C.OffloadConfig, "mode").cuda_reason("model_cpu")
    assert detect().reason("offload.use_stream", True) == C.facts(C.OffloadConfig, "use_stream").cuda_reason(True)
