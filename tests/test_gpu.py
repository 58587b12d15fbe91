"""The CUDA-only paths, on the embedded model in bfloat16 on the GPU, and the seed's FLUX table on a synthetic
FLUX.1-dev. Run them on their own, on a machine with an NVIDIA GPU:

    pip install -r requirements.txt -r requirements-gpu.txt
    python -m pytest -m gpu

Needs: any CUDA GPU for the embedded-model tests (under 2 GB of GPU memory); the synthetic FLUX.1-dev test needs
48 GB of GPU memory (it is skipped below that) and about 35 GB of disk for its weights, written once into
OPTIM_MODEL_CACHE (default ~/.cache/optim-lab). Backends whose packages are not installed are skipped with the
reason. In the default (CPU) suite every test here is skipped: `python -m pytest` hides the GPU.

Each test checks the option really did something: the backend's kernel ran, the weights shrank, GPU memory
dropped, dynamo compiled graphs, and the image stayed close to the baseline.
"""

from __future__ import annotations

import importlib.util

import pytest

from optim.capabilities import detect, device_info
from optim.config import parse_optim, parse_run
from optim.engine import compare

pytestmark = pytest.mark.gpu

RUN = {"steps": 8, "dtype": "bfloat16", "device": "cuda", "warmup_runs": 1, "timed_runs": 2}


def _compare(settings: dict, *, isolation: str = "process", **run_changes):
    return compare(parse_run({**RUN, **run_changes}), parse_optim(settings), isolation=isolation).to_report()


def _reason(path: str, value: str) -> str | None:
    option = detect().option(path, value)
    return option.reason if option is not None else "unknown option"


@pytest.mark.parametrize(
    "backend",
    ["_native_efficient", "_native_cudnn", "_native_flash", "flex", "flash", "sage", "xformers", "_flash_3",
     "_sage_qk_int8_pv_fp16_cuda", "_sage_qk_int8_pv_fp8_cuda_sm90"],
)
def test_cuda_attention_backend_kernel_runs_and_stays_close(backend, monkeypatch):
    from diffusers.models.attention_dispatch import AttentionBackendName
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry

    reason = _reason("attention.backend", backend)
    if reason:
        pytest.skip(f"{backend}: {reason}")
    key = AttentionBackendName(backend)
    calls = {"n": 0}
    original = registry._backends[key]

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setitem(registry._backends, key, counting)
    report = _compare({"attention": {"backend": backend}}, isolation="inline")
    assert calls["n"] > 0, f"{backend} was set but its kernel was never called"
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
    if quant["backend"] == "torchao":
        reason = _reason("quantization.torchao.quant_type", quant["quant_type"])
        if reason:
            pytest.skip(reason)
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
def test_cuda_offload_moves_weights_off_the_gpu_and_keeps_the_image(offload):
    report = _compare({"offload": offload})
    base, opt = report["baseline"], report["optimized"]
    assert opt["peak_memory_mb"] < base["peak_memory_mb"]
    # The offloaded weights wait in host memory: at least most of the transformer's size shows up there.
    transformer_mb = base["component_sizes_mb"]["transformer"]
    assert opt["host_peak_memory_mb"] > base["host_peak_memory_mb"] + 0.5 * transformer_mb
    assert report["quality"]["max_abs_diff"] <= 2


@pytest.mark.parametrize("compile_settings", [
    {"mode": "regional"},
    {"mode": "full", "fullgraph": True},
    {"mode": "full", "inductor_mode": "reduce-overhead"},
    {"mode": "full", "inductor_mode": "max-autotune-no-cudagraphs", "channels_last": True},
])
def test_cuda_compile_compiles_cold_and_keeps_the_image(compile_settings):
    report = _compare({"compile": compile_settings})
    assert report["optimized"]["compiled_graphs"] > 0, "dynamo compiled no graph"
    assert report["optimized"]["compile_cold"] is True
    assert report["quality"]["ssim"] > 0.95


def test_reduce_overhead_with_true_cfg_keeps_the_first_transformer_output():
    """The embedded model runs true CFG (two transformer calls a step): CUDA graphs would overwrite the first
    output; the lab copies it (see optim.techniques.compile.clone_outputs)."""
    report = _compare({"compile": {"mode": "full", "inductor_mode": "reduce-overhead"}}, guidance_scale=3.0)
    assert any("outputs copied" in step for step in report["optimized"]["applied"])
    assert report["quality"]["ssim"] > 0.95


@pytest.mark.skipif(not device_info().cuda or (device_info().memory_gb or 0) < 48,
                    reason="the synthetic FLUX.1-dev needs a GPU with 48 GB or more")
def test_seed_flux_table_quantization_on_synthetic_flux_dev_uses_less_memory():
    """Row 1 of the seed's table (bitsandbytes 4-bit transformer and T5) against the bf16 baseline, on FLUX.1-dev's
    real dimensions, at 512x512 and 4 steps to keep the test short."""
    if not importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is not installed")
    from optim.presets import load_preset

    run = parse_run({"model": "synthetic:flux-dev", "steps": 4, "width": 512, "height": 512, "timed_runs": 2})
    report = compare(run, load_preset("flux-table-quantization")).to_report()
    assert report["optimized"]["peak_memory_mb"] < 0.75 * report["baseline"]["peak_memory_mb"]
    sizes = report["optimized"]["quantization"]["transformer"]
    assert sizes["after_mb"] < 0.4 * sizes["before_mb"]  # 4-bit of bf16: about 0.28 with the scales
    assert report["quality"]["ssim"] > 0.3  # random weights: the images are noise; they must not be unrelated
