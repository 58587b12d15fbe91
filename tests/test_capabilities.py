"""What this machine can run, and why not: every seed backend listed, correct on a CPU-only machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from optim.capabilities import SEED_BACKENDS, detect
from optim.techniques.attention import registered_backends

CPU_ONLY = not detect()["device"]["cuda"]


def _by_name(section: str) -> dict[str, dict]:
    return {option["name"]: option for option in detect()[section]}


def test_json_shape_and_every_backend_name():
    out = subprocess.run([sys.executable, "-m", "optim", "capabilities", "--json"], capture_output=True, text=True, check=True)
    caps = json.loads(out.stdout)
    assert set(caps) == {"device", "attention_backends", "cache_methods", "quantization", "offload", "compile"}
    for section in ("attention_backends", "cache_methods", "quantization", "offload", "compile"):
        for option in caps[section]:
            assert {"name", "available", "reason"} <= set(option)
            assert (option["reason"] is None) == option["available"], option
    names = {option["name"] for option in caps["attention_backends"]}
    assert set(SEED_BACKENDS) <= names
    assert set(registered_backends()) <= names
    assert all(o["family"] for o in caps["attention_backends"])


@pytest.mark.skipif(not CPU_ONLY, reason="checks the CPU-only answers")
def test_cpu_machine_answers():
    attention = _by_name("attention_backends")
    assert {n for n, o in attention.items() if o["available"]} == {"native", "_native_math", "_native_flash", "flex"}
    assert "flash-attn is not installed" in attention["flash"]["reason"]
    assert "sageattention is not installed" in attention["sage"]["reason"]
    assert "xformers is not installed" in attention["xformers"]["reason"]
    assert "needs CUDA" in attention["_native_efficient"]["reason"]
    assert "Hugging Face Hub" in attention["_flash_3_hub"]["reason"]
    assert "Hopper" in attention["_flash_3"]["reason"] or "from source" in attention["_flash_3"]["reason"]
    assert "torch_npu" in attention["_native_npu"]["reason"]
    quantization = _by_name("quantization")
    assert "needs a CUDA GPU" in quantization["bitsandbytes_4bit"]["reason"]
    assert quantization["torchao:int8_weight_only"]["available"] and quantization["quanto:int4"]["available"]
    offload = _by_name("offload")
    assert not offload["model_cpu"]["available"] and not offload["sequential_cpu"]["available"]
    assert offload["group"]["available"] and not offload["group:use_stream"]["available"]
    compile_options = _by_name("compile")
    assert compile_options["regional"]["available"] and not compile_options["mode:reduce-overhead"]["available"]
    caches = _by_name("cache_methods")
    assert all(caches[m]["available"] for m in ("first_block_cache", "pyramid_attention_broadcast", "faster_cache", "mag_cache", "taylorseer"))


def test_zero_gpu_disables_just_in_time_compile(monkeypatch):
    from optim import capabilities

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    info = {**capabilities.device_info(), "zero_gpu": capabilities.on_zero_gpu()}
    options = {o["name"]: o for o in capabilities.compile_options(info)}
    assert "ZeroGPU" in options["regional"]["reason"] and options["off"]["available"]
