"""Every technique on every pipeline family, on the tiny random-weight builds (`tiny:KEY`, `optim.families`):
each cell of the matrix either runs with the technique really applied (its effect seen: the attention kernel
called, transformer work skipped, weights shrunk, groups offloaded, the VAE tiling, graphs compiled) or is
refused before anything loads, with the reason `optim.families.technique_support` gives.

Cheap by construction: 2 steps at 32x32 (9 frames for video), one warm-up and one timed run, inline (one
process); the baseline of each family is measured once per module; torch.compile only on Wan (the other
regional-compile cells are refusals or covered by tests/test_techniques.py on FLUX).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from optim import families as F
from optim.config import OptimConfig, parse_optim, parse_run
from optim.engine import prepare
from optim.errors import IncompatibleError
from optim.measure import SideJob, run_side
from optim.workcount import work_fractions

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEYS = list(F.FAMILIES)
RUN = {"steps": 2, "width": 32, "height": 32, "warmup_runs": 1, "timed_runs": 1}
# A MagCache that must skip step 2 of 2 on any model (ratios of 1: no error accumulates; nothing retained).
SKIPPING_MAG_CACHE = {"method": "mag_cache", "mag_ratios": [1.0, 1.0], "threshold": 2.0, "retention_ratio": 0.0,
                      "max_skip_steps": 2}
# The technique families of the matrix: (settings, the support entry that decides the cell).
TECHNIQUES = {
    "attention": ({"attention": {"backend": "_native_math"}}, "attention.backend"),
    "cache": ({"cache": SKIPPING_MAG_CACHE}, "cache.mag_cache"),
    "torchao": ({"quantization": {"backend": "torchao", "quant_type": "int8_weight_only"}}, "quantization.torchao"),
    "group_offload": ({"offload": {"mode": "group"}}, "offload.group"),
    "vae": ({"vae": {"tiling": True, "slicing": True}}, "vae.tiling"),
}
COMPILED = ("wan",)  # regional compile runs here (about 20 s); elsewhere it is refused or not run


def run_spec(key: str, **changes):
    fam = F.FAMILIES[key]
    frames = {"num_frames": 9} if fam.video else {}
    return parse_run({"model": f"tiny:{key}", **RUN, **frames, **changes})


class Baselines:
    """One measured baseline side per family for the module."""

    def __init__(self) -> None:
        self.sides: dict[str, object] = {}

    def __call__(self, key: str):
        if key not in self.sides:
            ref, run = prepare(run_spec(key), OptimConfig())
            self.sides[key] = run_side(SideJob("baseline", ref, run, OptimConfig()))
        return self.sides[key]


BASELINES = Baselines()


def measure(key: str, settings: dict):
    optim = parse_optim(settings)
    ref, run = prepare(run_spec(key), optim)
    return run_side(SideJob("optimized", ref, run, optim))


def _registry():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry


@pytest.fixture
def counting_backend(monkeypatch):
    """Counts calls of the _native_math attention kernel through diffusers' dispatcher."""
    registry = _registry()
    calls = {"n": 0}
    original = registry._backends["_native_math"]

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setitem(registry._backends, "_native_math", counting)
    return calls


# ------------------------------------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("technique", list(TECHNIQUES))
@pytest.mark.parametrize("key", KEYS)
def test_technique_on_family_runs_applied_or_is_refused_up_front(key, technique, counting_backend):
    settings, entry = TECHNIQUES[technique]
    support = F.technique_support(key)[entry]
    if not support.supported:
        with pytest.raises(IncompatibleError) as refused:
            prepare(run_spec(key), parse_optim(settings))
        assert support.reason in str(refused.value)
        return
    side = measure(key, settings)
    fam = F.FAMILIES[key]
    expected_shape = (9, 32, 32, 3) if fam.video else (32, 32, 3)
    assert side.image.shape == expected_shape and side.image.std() > 0
    applied = " | ".join(side.applied)
    baseline = BASELINES(key)
    if technique == "attention":
        assert "attention backend: _native_math" in applied
        assert counting_backend["n"] > 0, f"_native_math was set on {key} but never called"
    elif technique == "cache":
        fraction, per_step = work_fractions(side.step_work, baseline.step_work)
        assert per_step[0] == 1.0 and fraction < 0.75, (fraction, per_step)
    elif technique == "torchao":
        assert "quantization: torchao" in applied
        assert side.component_sizes_mb["transformer"] < 0.6 * baseline.component_sizes_mb["transformer"]
    elif technique == "group_offload":
        assert "offload: group offload (block_level" in applied
        np.testing.assert_allclose(side.image, baseline.image, atol=1)  # moves weights, changes no result
    elif technique == "vae":
        assert "VAE slicing" in applied and "VAE tiling" in applied
        # 32 px is inside one tile and one clip is a batch of one: both say they change nothing, and nothing does.
        assert sum("changes nothing" in w for w in side.warnings) == 2
        assert np.array_equal(side.image, baseline.image)


@pytest.mark.parametrize("key", KEYS)
def test_regional_compile_runs_where_the_family_has_repeated_blocks(key, monkeypatch):
    monkeypatch.setenv("OPTIM_COLD_COMPILE", "0")  # reuse inductor's on-disk cache: what is checked is the graphs
    support = F.technique_support(key)["compile.regional"]
    settings = {"compile": {"mode": "regional"}}
    if not support.supported:
        with pytest.raises(IncompatibleError, match="_repeated_blocks"):
            prepare(run_spec(key), parse_optim(settings))
        return
    if key not in COMPILED:
        prepare(run_spec(key), parse_optim(settings))  # accepted; compiled below on Wan only (cost)
        return
    side = measure(key, settings)
    assert any(step.startswith("torch.compile: regional") for step in side.applied)
    assert side.details["compiled_graphs"] > 0
    np.testing.assert_allclose(side.image, BASELINES(key).image, atol=2)


# ------------------------------------------------------------------------------------------------ caches


@pytest.mark.parametrize("key", KEYS)
def test_the_work_counter_holds_on_every_family(key):
    """The per-step work counter (Linear MACs in the transformer's ModuleList blocks) counts every block of every
    family: the same work each baseline step; the matrix's cache cells show it dropping where a cache skips.
    SD3 supports no cache at all (no CacheMixin), so nothing there can lower it."""
    support = F.technique_support(key)
    baseline = BASELINES(key)
    assert len(baseline.step_work) == 2 and baseline.step_work[0] == baseline.step_work[1] > 0
    if not any(support[f"cache.{m.value}"].supported for m in F.CacheMethod):
        with pytest.raises(IncompatibleError, match="no CacheMixin"):
            prepare(run_spec(key), parse_optim({"cache": {"method": "first_block_cache", "threshold": 1.0}}))


def test_first_block_cache_skips_on_a_video_family():
    """FBC with a wide-open threshold on CogVideoX (one cond_uncond context): step 2's tail blocks are skipped."""
    side = measure("cogvideox", {"cache": {"method": "first_block_cache", "threshold": 1.0}})
    fraction, per_step = work_fractions(side.step_work, BASELINES("cogvideox").step_work)
    assert per_step[0] == 1.0 and per_step[1] < 1.0 and fraction < 1.0


@pytest.mark.parametrize("key", ["qwen-image", "wan"])
@pytest.mark.parametrize("method", ["pyramid_attention_broadcast", "faster_cache"])
def test_branch_sharing_caches_are_refused_with_separate_guidance_calls_and_allowed_without(key, method):
    """PAB's and FasterCache's per-module state would mix Qwen-Image's and Wan's cond/uncond calls (two a step
    at guidance > 1); at guidance 1 there is one call a step, which they handle."""
    optim = parse_optim({"cache": {"method": method}})
    with pytest.raises(IncompatibleError, match="separate calls"):
        prepare(run_spec(key), optim)
    prepare(run_spec(key, guidance_scale=1.0), optim)


def test_video_cache_settings_are_checked_against_the_family():
    with pytest.raises(IncompatibleError, match="use_lite_mode"):
        prepare(run_spec("cogvideox"), parse_optim({"cache": {"method": "taylorseer"}}))
    prepare(run_spec("wan"), parse_optim({"cache": {"method": "taylorseer", "use_lite_mode": True}}))
    with pytest.raises(IncompatibleError, match="BFCHW"):
        prepare(run_spec("cogvideox"), parse_optim({"cache": {"method": "faster_cache", "tensor_format": "BCFHW"}}))
    # Left at "decide from the model", guidance 1 (no unconditional branch) is handled; forced off, it is refused.
    prepare(run_spec("cogvideox", guidance_scale=1.0), parse_optim({"cache": {"method": "faster_cache"}}))
    with pytest.raises(IncompatibleError, match="is_guidance_distilled to true"):
        prepare(run_spec("cogvideox", guidance_scale=1.0),
                parse_optim({"cache": {"method": "faster_cache", "is_guidance_distilled": False}}))
    with pytest.raises(IncompatibleError, match="FLUX.1-dev's"):
        prepare(run_spec("wan"), parse_optim({"cache": {"method": "mag_cache", "mag_ratios": "flux"}}))


def test_faster_cache_on_cogvideox_takes_the_layout_from_the_family():
    """Left at its default (BCHW), FasterCache's tensor_format becomes CogVideoX's BFCHW, and says so."""
    side = measure("cogvideox", {"cache": {"method": "faster_cache", "spatial_attention_timestep_skip_range": [-1, 990],
                                           "unconditional_batch_skip_range": 2,
                                           "unconditional_batch_timestep_skip_range": [-1, 990]}})
    applied = " | ".join(side.applied)
    assert "FasterCache tensor_format=BFCHW" in applied and "is_guidance_distilled=False" in applied
    fraction, _ = work_fractions(side.step_work, BASELINES("cogvideox").step_work)
    assert fraction < 1.0


# ------------------------------------------------------------------------------------------------ facts


@pytest.mark.parametrize("key", KEYS)
def test_the_attention_dispatcher_fact_holds(key):
    """Where `attention_dispatcher` is False a backend set on the transformer is never called: the refusal's
    reason is true, not a guess."""
    import torch

    registry = _registry()
    calls = {"n": 0}
    original = registry._backends["_native_math"]

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    pipe = F.build_tiny_pipeline(key)
    registry._backends["_native_math"] = counting
    previous = registry._active_backend
    try:
        pipe.transformer.set_attention_backend("_native_math")
        with torch.no_grad():
            F.run_tiny(pipe, key, steps=1 if key != "qwen-image" else 2)
    finally:
        registry._backends["_native_math"] = original
        pipe.transformer.reset_attention_backend()
        registry.set_active_backend(previous)
    assert (calls["n"] > 0) == F.FAMILIES[key].attention_dispatcher, calls


def test_guidance_styles_follow_the_families():
    import diffusers

    from optim.generation import guidance_style_of

    styles = {key: guidance_style_of(getattr(diffusers, fam.pipeline_class), False) for key, fam in F.FAMILIES.items()}
    assert styles == {"flux": "true_cfg", "qwen-image": "true_cfg", "sd3": "cfg", "cogvideox": "cfg",
                      "wan": "true_cfg"}
    assert guidance_style_of(diffusers.FluxPipeline, True) == "distilled"
    assert guidance_style_of(diffusers.StableDiffusionXLPipeline, False) == "cfg"  # no family: by signature
