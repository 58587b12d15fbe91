"""The CUDA-only paths, on the embedded model in bfloat16 on the GPU. Skipped without CUDA (CI has none).

Each test checks the option really did something: the backend ran, the weights shrank, GPU memory dropped, the
compile happened, and that the image stayed close to the baseline.
"""

from __future__ import annotations

import importlib.util

import pytest

from optim.capabilities import detect
from optim.config import parse_optim, parse_run
from optim.engine import compare

pytestmark = pytest.mark.gpu

RUN = {"steps": 8, "dtype": "bfloat16", "device": "cuda", "warmup_runs": 1, "timed_runs": 2}


def _compare(settings: dict, **run_changes):
    return compare(parse_run({**RUN, **run_changes}), parse_optim(settings)).to_report()


def _available(backend: str) -> bool:
    return any(o["name"] == backend and o["available"] for o in detect()["attention_backends"])


@pytest.mark.parametrize(
    "backend",
    ["_native_efficient", "_native_cudnn", "_native_flash", "flex", "flash", "sage", "xformers", "_flash_3",
     "_sage_qk_int8_pv_fp16_cuda", "_sage_qk_int8_pv_fp8_cuda_sm90"],
)
def test_cuda_attention_backend_runs_and_stays_close(backend):
    if not _available(backend):
        pytest.skip(f"{backend} is not available on this GPU machine")
    report = _compare({"attention": {"backend": backend}})
    assert report["optimized"]["applied"] == [f"attention backend: {backend}"]
    assert report["quality"]["ssim"] > 0.9


@pytest.mark.parametrize("quant", [
    {"backend": "bitsandbytes_4bit", "quant_type": "nf4"},
    {"backend": "bitsandbytes_4bit", "quant_type": "fp4", "double_quant": True},
    {"backend": "bitsandbytes_8bit"},
    {"backend": "torchao", "quant_type": "float8_dynamic"},
])
def test_cuda_quantization_shrinks_the_transformer(quant):
    if quant["backend"].startswith("bitsandbytes") and not importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is not installed")
    report = _compare({"quantization": {**quant, "components": ["transformer"]}})
    sizes = report["optimized"]["quantization"]["transformer"]
    assert sizes["after_mb"] < 0.7 * sizes["before_mb"]
    assert report["quality"]["ssim"] > 0.5


@pytest.mark.parametrize("offload", [
    {"mode": "model_cpu"},
    {"mode": "sequential_cpu"},
    {"mode": "group", "offload_type": "block_level", "num_blocks_per_group": 1, "use_stream": True},
    {"mode": "group", "offload_type": "block_level", "num_blocks_per_group": 1, "use_stream": True, "record_stream": True},
    {"mode": "group", "offload_type": "leaf_level", "use_stream": True, "low_cpu_mem_usage": True},
])
def test_cuda_offload_lowers_gpu_memory_and_keeps_the_image(offload):
    report = _compare({"offload": offload})
    assert report["optimized"]["peak_memory_mb"] < report["baseline"]["peak_memory_mb"]
    assert report["optimized"]["host_peak_memory_mb"] is not None
    assert report["quality"]["max_abs_diff"] <= 2


@pytest.mark.parametrize("compile_settings", [
    {"mode": "regional"},
    {"mode": "full", "fullgraph": True},
    {"mode": "full", "inductor_mode": "reduce-overhead"},
    {"mode": "full", "inductor_mode": "max-autotune-no-cudagraphs", "channels_last": True},
])
def test_cuda_compile_compiles_cold_and_keeps_the_image(compile_settings):
    report = _compare({"compile": compile_settings})
    assert report["optimized"]["compile_s"] > 0 and report["optimized"]["compile_cold"] is True
    assert report["quality"]["ssim"] > 0.95


def test_seed_flux_table_combination_runs_on_cuda():
    report = _compare({
        "quantization": {"backend": "bitsandbytes_4bit", "components": ["transformer", "text_encoder_2"]},
        "compile": {"mode": "full"},
        "offload": {"mode": "model_cpu"},
    })
    assert report["optimized"]["applied"][0].startswith("quantization: bitsandbytes_4bit")
    assert "dynamo: capture_dynamic_output_shape_ops=True" in report["optimized"]["applied"]


def test_synthetic_flux_dev_builds_on_cuda():
    from optim.synthetic import build_synthetic_pipeline
    import torch

    pipe = build_synthetic_pipeline("flux-dev", torch_dtype=torch.bfloat16, device="cuda")
    count = sum(p.numel() for p in pipe.transformer.parameters())
    assert 11.8e9 < count < 12.0e9
    del pipe
    torch.cuda.empty_cache()
