"""Cache probes: run each diffusers step cache on a family's tiny build and record what happened (hooks placed, the
output changed, restored after disabling). They are how every `CacheSupport` claim in the family modules was
checked, and tests/test_families.py re-checks them; the lab itself never calls them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from optim.families.base import FASTER, FBC, MAG, PAB, TAYLOR, CacheMethod, Guidance
from optim.families.registry import family
from optim.families.tiny import run_tiny, tiny_call_kwargs

# Timestep window for the probe configs: excludes the first step (t = 999-1000 in every family's scheduler) so the
# caches fill before they skip, and includes the second of two steps (t <= ~750 in all five). Ranges are strict.
_PROBE_TIMESTEPS = (-1, 990)
# The hook names each method registers (diffusers hooks/*.py), for removing hooks applied without CacheMixin.
_HOOK_NAMES = {
    FBC: ("fbc_leader_block_hook", "fbc_block_hook"),
    PAB: ("pyramid_attention_broadcast",),
    FASTER: ("faster_cache_denoiser", "faster_cache_block"),
    MAG: ("mag_cache_leader_block_hook", "mag_cache_block_hook"),
    TAYLOR: ("taylorseer_cache",),
}


def probe_cache_config(
    method: str, key: str, *, timestep: Callable[[], Any], steps: int = 2, **overrides: Any
) -> Any:
    """A diffusers cache config that acts within `steps` steps on the tiny build (thresholds wide open, skip
    ranges of 2), with this family's `CacheSupport.needs` applied; `overrides` replace any field.
    `timestep`: the current-timestep callback (PAB, FasterCache), e.g. `lambda: pipe.current_timestep`."""
    import torch
    from diffusers import hooks

    fam = family(key)
    needs = fam.cache_support[method].needs
    if method == FBC:
        fields = dict(threshold=1e9)  # any change counts as small: every step after the first is skipped
        return hooks.FirstBlockCacheConfig(**{**fields, **overrides})
    if method == PAB:
        fields = dict(spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=2,
                      cross_attention_block_skip_range=2, spatial_attention_timestep_skip_range=_PROBE_TIMESTEPS,
                      temporal_attention_timestep_skip_range=_PROBE_TIMESTEPS,
                      cross_attention_timestep_skip_range=_PROBE_TIMESTEPS, current_timestep_callback=timestep)
        return hooks.PyramidAttentionBroadcastConfig(**{**fields, **overrides})
    if method == FASTER:
        fields = dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=_PROBE_TIMESTEPS,
                      unconditional_batch_skip_range=2, unconditional_batch_timestep_skip_range=_PROBE_TIMESTEPS,
                      attention_weight_callback=lambda _module: 0.5, current_timestep_callback=timestep,
                      tensor_format=fam.faster_cache_tensor_format,
                      is_guidance_distilled=fam.guidance is not Guidance.BATCHED_CFG)
        return hooks.FasterCacheConfig(**{**fields, **needs, **overrides})
    if method == MAG:
        # Ratios of 1: no accumulated error, so every step after the first may be skipped.
        fields = dict(threshold=1.0, max_skip_steps=steps, retention_ratio=0.0, num_inference_steps=steps,
                      mag_ratios=torch.ones(steps))
        return hooks.MagCacheConfig(**{**fields, **overrides})
    if method == TAYLOR:
        # Step 0 computes (warm-up), step 1 predicts: (1 - 1 - 1) % 2 != 0 (taylorseer_cache.py,
        # _measure_should_compute).
        fields = dict(cache_interval=2, disable_cache_before_step=1, max_order=1, taylor_factors_dtype=torch.float32)
        return hooks.TaylorSeerCacheConfig(**{**fields, **needs, **overrides})
    raise ValueError(f"unknown cache method {method!r}; known: {', '.join(m.value for m in CacheMethod)}")


def _has_hook(module: Any, method: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and any(registry.get_hook(name) is not None for name in _HOOK_NAMES[method])


def count_hooks(transformer: Any, method: str) -> int:
    """How many modules under `transformer` carry one of `method`'s hooks."""
    return sum(_has_hook(module, method) for module in transformer.modules())


def count_pab_matches(transformer: Any) -> dict[str, int]:
    """Attention modules PAB's default identifiers match, by category: applied with a different skip range per
    category (spatial 2, temporal 3, cross 4), then the hooks are read back and removed."""
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
    from diffusers.hooks.hooks import HookRegistry

    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=3,
        cross_attention_block_skip_range=4, current_timestep_callback=lambda: 0,
    )
    apply_pyramid_attention_broadcast(transformer, config)
    counts = {"spatial": 0, "temporal": 0, "cross": 0}
    by_range = {2: "spatial", 3: "temporal", 4: "cross"}
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_HOOK_NAMES[PAB][0]) if registry is not None else None
        if hook is not None:
            counts[by_range[hook.block_skip_range]] += 1
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_HOOK_NAMES[PAB][0], recurse=True)
    return counts


def _enable(transformer: Any, method: str, config: Any, *, direct: bool) -> None:
    if not direct:
        transformer.enable_cache(config)
        return
    from diffusers import hooks

    apply = {FBC: hooks.apply_first_block_cache, PAB: hooks.apply_pyramid_attention_broadcast,
             FASTER: hooks.apply_faster_cache, MAG: hooks.apply_mag_cache, TAYLOR: hooks.apply_taylorseer_cache}
    apply[method](transformer, config)


def _disable(transformer: Any, method: str, *, direct: bool) -> None:
    if not direct:
        transformer.disable_cache()
        return
    from diffusers.hooks.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in _HOOK_NAMES[method]:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


@dataclass(frozen=True)
class CacheProbe:
    """What happened when a cache ran on a tiny build: `hooks` modules hooked, the cached run's output `changed`
    from the uncached one (it skipped something), and after disabling the output was `restored` exactly."""

    method: str
    enabled: bool
    ran: bool
    hooks: int = 0
    changed: bool = False
    restored: bool = False
    error: str | None = None


def probe_cache(
    pipe: Any, key: str, method: str, *, direct: bool = False, steps: int = 2, **overrides: Any
) -> CacheProbe:
    """Enable `method` on the tiny pipeline (through `enable_cache`, or with `direct` through diffusers'
    `apply_*` functions), run `steps` steps, disable, run again; compare with an uncached run."""
    import numpy as np

    transformer = pipe.transformer
    baseline = run_tiny(pipe, key, steps=steps)
    timestep, recorder = _timestep_source(pipe)
    try:
        config = probe_cache_config(method, key, timestep=timestep, steps=steps, **overrides)
        try:
            _enable(transformer, method, config, direct=direct)
        except Exception as error:  # noqa: BLE001 - the probe reports any failure as data
            return CacheProbe(method, enabled=False, ran=False, error=f"{type(error).__name__}: {error}")
        hooks = count_hooks(transformer, method)
        try:
            cached = run_tiny(pipe, key, steps=steps)
        except Exception as error:  # noqa: BLE001
            return CacheProbe(method, enabled=True, ran=False, hooks=hooks, error=f"{type(error).__name__}: {error}")
        finally:
            _disable(transformer, method, direct=direct)
    finally:
        if recorder is not None:
            recorder.remove()
    after = run_tiny(pipe, key, steps=steps)
    return CacheProbe(method, enabled=True, ran=True, hooks=hooks, changed=not np.array_equal(cached, baseline),
                      restored=np.array_equal(after, baseline))


def _timestep_source(pipe: Any) -> tuple[Callable[[], Any], Any]:
    """The current-timestep callback for PAB / FasterCache: the pipeline's `current_timestep` property where it
    has one; StableDiffusion3Pipeline has none, so there a forward pre-hook on the transformer records the
    `timestep` argument (returned as the hook handle, to remove)."""
    if hasattr(type(pipe), "current_timestep"):
        return (lambda: pipe.current_timestep), None
    seen: list[float] = [1000.0]

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen[0] = float(kwargs["timestep"].flatten()[0])

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    return (lambda: seen[0]), handle


def pab_shares_branches(pipe: Any, key: str, **call_overrides: Any) -> bool | None:
    """Show PAB's per-module state across guidance branches: two steps with PAB skipping every other call, a
    forward hook on the first PAB-hooked attention module. True: the first step's second transformer call
    (uncond) got the first call's (cond) attention output; None: a step makes one call (batched CFG, distilled)."""
    import torch

    transformer = pipe.transformer
    timestep, recorder = _timestep_source(pipe)
    config = probe_cache_config(PAB, key, timestep=timestep, spatial_attention_timestep_skip_range=(-1, 1001),
                                cross_attention_timestep_skip_range=(-1, 1001))
    transformer.enable_cache(config)
    hooked = next(m for m in transformer.modules() if _has_hook(m, PAB))
    outputs: list[Any] = []
    handle = hooked.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        # Two steps: the first step's two calls are compared (one step gives Qwen-Image's scheduler NaN timesteps).
        kwargs = {**tiny_call_kwargs(key, steps=2), "width": 32, "height": 32, **call_overrides}
        pipe(**kwargs, output_type="latent", generator=torch.Generator("cpu").manual_seed(0))
    finally:
        handle.remove()
        transformer.disable_cache()
        if recorder is not None:
            recorder.remove()
    calls_per_step = len(outputs) // 2
    if calls_per_step < 2:
        return None
    return outputs[1] is outputs[0]
