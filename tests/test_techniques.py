"""Every CPU-capable option, run on the embedded model: it does what it says (its effect is measured: work skipped,
weights shrunk, files on disk, a compile) or it changes nothing where it should not, and nothing stays behind.

Runs inline (one process) so the tests can look inside; the engine's default runs each side in a fresh process.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from conftest import ModuleBaselines

from optim import scratch
from optim.config import OptimConfig, parse_optim, parse_run
from optim.engine import compare
from optim.measure import SideJob, run_side
from optim.models import load_pipeline, resolve_model, resolve_run
from optim.techniques import Applied

RUN = {"steps": 8, "warmup_runs": 1, "timed_runs": 1}


# One baseline per run settings for the whole module (see conftest.ModuleBaselines).
BASELINES = ModuleBaselines()


def _report(settings: dict, **run_changes) -> dict:
    return BASELINES.report(parse_optim(settings), parse_run({**RUN, **run_changes}))


def _registry():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry


# ------------------------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("backend", ["_native_math", "_native_flash", "flex"])
def test_attention_backend_is_really_used_and_restored(backend, monkeypatch):
    registry = _registry()
    calls = {"n": 0}
    original = registry._backends[backend]

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setitem(registry._backends, backend, counting)
    monkeypatch.setitem(registry._supported_arg_names, backend, registry._supported_arg_names[backend])
    before = str(registry._active_backend)
    report = _report({"attention": {"backend": backend}})
    assert calls["n"] > 0, f"{backend} was set but never called"
    assert report["quality"]["max_abs_diff"] <= 2
    assert str(registry._active_backend) == before == "AttentionBackendName.NATIVE"


def test_attention_checks_run_only_when_asked(monkeypatch):
    registry = _registry()
    calls = {"n": 0}

    def check(**kwargs):
        calls["n"] += 1

    monkeypatch.setitem(registry._constraints, registry._active_backend, [check])
    _report({"attention": {"backend": "native"}, "cache": {"method": "first_block_cache", "threshold": 0.01}})
    assert calls["n"] == 0
    _report({"attention": {"checks": True}})
    assert calls["n"] > 0
    assert registry._checks_enabled is False


def test_reset_really_returns_to_native():
    """diffusers' reset_attention_backend leaves the global active backend set; our undo restores it."""
    ref = resolve_model("embedded")
    pipe = load_pipeline(ref, dtype="float32")
    applied = Applied()
    from optim.techniques.attention import apply_attention, attention_state

    apply_attention(pipe, parse_optim({"attention": {"backend": "_native_math"}}).attention, applied)
    assert attention_state(pipe.transformer) == {"modules": ["_native_math"], "active": "_native_math", "checks": False}
    applied.undo_all()
    assert attention_state(pipe.transformer) == {"modules": ["None"], "active": "native", "checks": False}


# --------------------------------------------------------------------------------------------------- caches

CACHES = {
    "first_block_cache": {"method": "first_block_cache", "threshold": 0.2},
    "pyramid_attention_broadcast": {"method": "pyramid_attention_broadcast", "spatial_attention_timestep_skip_range": [100, 950]},
    "faster_cache": {"method": "faster_cache", "spatial_attention_timestep_skip_range": [-1, 950]},
    "mag_cache_calibrated": {"method": "mag_cache", "threshold": 0.3, "retention_ratio": 0.1},
    "mag_cache_flux_ratios": {"method": "mag_cache", "mag_ratios": "flux", "threshold": 0.3},
    "taylorseer": {"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2, "taylor_factors_dtype": "float32"},
}


@pytest.mark.parametrize("name", list(CACHES))
def test_cache_skips_work_and_changes_the_image_a_little(name):
    report = _report({"cache": CACHES[name]}, steps=12)
    work = report["optimized"]["work_fraction"]
    assert work < 0.95, f"{name} skipped almost nothing (work {work:.2f})"
    assert any(step < 1.0 for step in report["optimized"]["work_per_step"])
    assert report["quality"]["max_abs_diff"] > 0
    assert report["quality"]["psnr_db"] > 15
    if name == "mag_cache_calibrated":
        assert len(report["optimized"]["mag_ratios"]) == 12


def test_disabling_a_cache_returns_the_exact_baseline_output():
    ref = resolve_model("embedded")
    run = resolve_run(parse_run(RUN), ref, cuda_available=False)
    base = run_side(SideJob("baseline", ref, run, OptimConfig()))
    pipe = load_pipeline(ref, dtype="float32")
    from optim.generation import call_kwargs, generate
    from optim.techniques.cache import apply_cache

    applied = Applied()
    apply_cache(pipe, parse_optim({"cache": CACHES["first_block_cache"]}).cache, applied, steps=run.steps, batched_cfg=False)
    kwargs, _ = call_kwargs(pipe, run)
    cached = generate(pipe, kwargs, seed=run.seed, device="cpu").image
    applied.undo_all()
    restored = generate(pipe, kwargs, seed=run.seed, device="cpu").image
    assert not np.array_equal(cached, base.image)
    assert np.array_equal(restored, base.image)


# --------------------------------------------------------------------------------------------- quantization

QUANTIZATIONS = {
    "torchao-int8-weight-only": ({"backend": "torchao", "quant_type": "int8_weight_only"}, 0.35),
    "torchao-int8-dynamic": ({"backend": "torchao", "quant_type": "int8_dynamic"}, 0.35),
    "torchao-float8-weight-only": ({"backend": "torchao", "quant_type": "float8_weight_only"}, 0.35),
    "quanto-int8": ({"backend": "quanto", "weights": "int8"}, 0.35),
    "quanto-int4": ({"backend": "quanto", "weights": "int4"}, 0.2),
    "quanto-float8": ({"backend": "quanto", "weights": "float8"}, 0.35),
}


@pytest.mark.parametrize("name", list(QUANTIZATIONS))
def test_quantization_shrinks_the_weights_it_claims(name):
    settings, ratio = QUANTIZATIONS[name]
    # A small image: the size check does not depend on it, and int4 matmuls are slow on a CPU.
    report = _report({"quantization": settings}, steps=4, width=64, height=64)
    size = report["optimized"]["quantization"]["transformer"]
    assert size["after_mb"] < ratio * size["before_mb"], size
    assert report["quality"]["max_abs_diff"] > 0
    assert report["quality"]["ssim"] > 0.5
    assert report["optimized"]["component_sizes_mb"]["vae"] == report["baseline"]["component_sizes_mb"]["vae"]


@pytest.mark.parametrize("backend", ["bitsandbytes_4bit", "bitsandbytes_8bit"])
def test_bitsandbytes_quantizes_the_text_encoder_on_cpu(backend):
    extra = {"compute_dtype": "float32"} if backend.endswith("4bit") else {}
    report = _report({"quantization": {"backend": backend, "components": ["text_encoder_2"], **extra}})
    size = report["optimized"]["quantization"]["text_encoder_2"]
    assert size["after_mb"] < 0.6 * size["before_mb"]


def test_measured_quantized_size_matches_the_serialized_weights(tmp_path):
    from optim.models import read_model_index
    from optim.techniques.quantization import build_quantization_config, module_bytes, quantizable_components

    ref = resolve_model("embedded")
    quant = parse_optim({"quantization": {"backend": "quanto", "weights": "int8"}}).quantization
    config = build_quantization_config(quant, quantizable_components(read_model_index(ref)))
    pipe = load_pipeline(ref, dtype="float32", quantization_config=config)
    measured = module_bytes(pipe.transformer)
    pipe.transformer.save_pretrained(tmp_path)
    on_disk = sum(os.path.getsize(p) for p in glob.glob(str(tmp_path / "*.safetensors")))
    assert abs(measured - on_disk) / on_disk < 0.1, (measured, on_disk)


# --------------------------------------------------------------------------------------------------- offload


@pytest.mark.parametrize("settings", [
    {"mode": "group", "offload_type": "block_level", "num_blocks_per_group": 2},
    {"mode": "group", "offload_type": "leaf_level", "low_cpu_mem_usage": True},
])
def test_group_offload_on_cpu_keeps_the_image_and_warns_it_saves_nothing(settings):
    report = _report({"offload": settings})
    assert report["quality"]["max_abs_diff"] <= 1
    assert report["optimized"]["applied"][0].startswith("offload: group offload")
    assert any("saves no memory" in w for w in report["optimized"]["warnings"])


def test_group_offload_to_disk_really_writes_the_weights_to_disk():
    seen = []

    def progress(phase, done, total):
        if phase.startswith("optimized: timed"):
            seen.extend(path for folder in scratch.folders_of(os.getpid(), "offload") for path in glob.glob(os.path.join(folder, "*")))

    report = compare(parse_run(RUN), parse_optim({"offload": {"mode": "group", "offload_to_disk": True}}), isolation="inline", progress=progress).to_report()
    assert any(path.endswith(".safetensors") for path in seen), seen[:5]
    assert report["quality"]["max_abs_diff"] <= 1
    assert not scratch.folders_of(os.getpid(), "offload"), "the offload folder must be removed afterwards"


# ------------------------------------------------------------------------------------------------------- VAE


def test_vae_tiling_changes_nothing_at_one_tile_and_warns():
    report = _report({"vae": {"tiling": True, "slicing": True}})
    assert report["quality"]["max_abs_diff"] == 0
    warnings = " ".join(report["optimized"]["warnings"])
    assert "changes nothing" in warnings and "slicing" in warnings


def test_vae_tiling_tiles_a_larger_image():
    report = _report({"vae": {"tiling": True}}, width=256, height=256, steps=4)
    assert report["quality"]["max_abs_diff"] > 0, "a 256 px image is decoded in 128 px tiles: the seams differ"
    assert not report["optimized"]["warnings"]


# --------------------------------------------------------------------------------------------------- compile


@pytest.mark.parametrize("settings", [{"mode": "regional"}, {"mode": "full", "fullgraph": True, "dynamic": False}])
def test_compile_compiles_cold_and_keeps_the_image(settings):
    report = _report({"compile": settings}, steps=4, width=64, height=64)
    assert report["optimized"]["compiled_graphs"] > 0, "dynamo compiled no graph"  # its own counter
    assert report["optimized"]["compile_s"] > 0.5
    assert report["optimized"]["compile_cold"] is True
    assert report["quality"]["max_abs_diff"] <= 3
    # inductor sets the variable to its default cache itself once it runs; it must not point at our temp cache
    assert "optim-inductor-" not in os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    assert not scratch.folders_of(os.getpid(), "inductor"), "the fresh inductor cache must be removed"


def test_channels_last_reaches_the_vae_and_says_the_transformer_has_no_convolutions():
    import torch

    from optim.techniques.compile import apply_channels_last

    pipe = load_pipeline(resolve_model("embedded"), dtype="float32")
    applied = Applied()
    apply_channels_last(pipe, parse_optim({"compile": {"mode": "regional", "channels_last": True}}).compile, applied)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert applied.steps == ["channels_last on vae"]
    assert "FluxTransformer2DModel has none" in applied.warnings[0]


def test_recommended_dynamo_settings_are_set_and_restored():
    import torch._dynamo

    from optim.techniques.compile import apply_dynamo_settings

    config = parse_optim({"compile": {"mode": "full"}}).compile
    before = (torch._dynamo.config.capture_dynamic_output_shape_ops, torch._dynamo.config.cache_size_limit)
    applied = Applied()
    apply_dynamo_settings(config, applied, bitsandbytes=True, many_recompiles=True)
    assert torch._dynamo.config.capture_dynamic_output_shape_ops is True
    assert torch._dynamo.config.cache_size_limit == 1000
    applied.undo_all()
    assert (torch._dynamo.config.capture_dynamic_output_shape_ops, torch._dynamo.config.cache_size_limit) == before
