"""Step caches through diffusers' public `CacheMixin`: `transformer.enable_cache(config)` / `disable_cache()`.

Our JSON configs become diffusers configs here, with the callables attached that presets never store:
the current-timestep callback (Pyramid Attention Broadcast, FasterCache), FasterCache's attention weight and,
left at its default, its tensor layout from the model's family (CogVideoX's hidden states are BFCHW), MagCache's
step count and ratios. Which cache works on which family is `optim.families.CACHE_SUPPORT`, refused before
loading by `optim.compat`.
"""

from __future__ import annotations

from typing import Any

from optim import config as C
from optim.errors import IncompatibleError
from optim.techniques import Applied


def build_cache_config(pipe: Any, cache: Any, *, steps: int, batched_cfg: bool, mag_ratios: list[float] | None) -> Any:
    """The diffusers config object for one of our cache settings. `batched_cfg`: the pipeline runs both guidance
    branches in one batch (what FasterCache's unconditional-branch approximation needs)."""
    import torch
    from diffusers import hooks

    def timestep() -> Any:
        # The pipeline sets `_current_timestep` before every transformer call (public property since 0.33).
        return pipe.current_timestep

    if isinstance(cache, C.FirstBlockCache):
        return hooks.FirstBlockCacheConfig(threshold=cache.threshold)
    if isinstance(cache, C.PyramidAttentionBroadcast):
        return hooks.PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=cache.spatial_attention_block_skip_range,
            temporal_attention_block_skip_range=cache.temporal_attention_block_skip_range,
            cross_attention_block_skip_range=cache.cross_attention_block_skip_range,
            spatial_attention_timestep_skip_range=tuple(cache.spatial_attention_timestep_skip_range),
            temporal_attention_timestep_skip_range=tuple(cache.temporal_attention_timestep_skip_range),
            cross_attention_timestep_skip_range=tuple(cache.cross_attention_timestep_skip_range),
            current_timestep_callback=timestep,
        )
    if isinstance(cache, C.FasterCache):
        # diffusers' flag means "no batched unconditional branch to approximate": true for guidance-distilled
        # models and for pipelines that run the two guidance branches as separate calls (FLUX's true CFG).
        distilled = (not batched_cfg) if cache.is_guidance_distilled is None else cache.is_guidance_distilled
        weight = cache.attention_weight
        tensor_format = faster_cache_tensor_format(pipe, cache)
        return hooks.FasterCacheConfig(
            spatial_attention_block_skip_range=cache.spatial_attention_block_skip_range,
            temporal_attention_block_skip_range=cache.temporal_attention_block_skip_range,
            spatial_attention_timestep_skip_range=tuple(cache.spatial_attention_timestep_skip_range),
            temporal_attention_timestep_skip_range=tuple(cache.temporal_attention_timestep_skip_range),
            low_frequency_weight_update_timestep_range=tuple(cache.low_frequency_weight_update_timestep_range),
            high_frequency_weight_update_timestep_range=tuple(cache.high_frequency_weight_update_timestep_range),
            alpha_low_frequency=cache.alpha_low_frequency,
            alpha_high_frequency=cache.alpha_high_frequency,
            unconditional_batch_skip_range=cache.unconditional_batch_skip_range,
            unconditional_batch_timestep_skip_range=tuple(cache.unconditional_batch_timestep_skip_range),
            attention_weight_callback=lambda _module: weight,
            tensor_format=tensor_format,
            is_guidance_distilled=distilled,
            current_timestep_callback=timestep,
        )
    if isinstance(cache, C.MagCache):
        if mag_ratios is None:
            raise ValueError("MagCache needs ratios: pass the calibrated or chosen ones")
        return hooks.MagCacheConfig(
            threshold=cache.threshold,
            max_skip_steps=cache.max_skip_steps,
            retention_ratio=cache.retention_ratio,
            num_inference_steps=steps,
            mag_ratios=torch.tensor(mag_ratios, dtype=torch.float32),
        )
    if isinstance(cache, C.TaylorSeer):
        return hooks.TaylorSeerCacheConfig(
            cache_interval=cache.cache_interval,
            disable_cache_before_step=cache.disable_cache_before_step,
            disable_cache_after_step=cache.disable_cache_after_step,
            max_order=cache.max_order,
            taylor_factors_dtype=getattr(torch, cache.taylor_factors_dtype),
            use_lite_mode=cache.use_lite_mode,
        )
    raise TypeError(f"not a cache setting: {cache!r}")


def faster_cache_tensor_format(pipe: Any, cache: Any) -> str:
    """FasterCache's `tensor_format`: the user's, unless left at the default, where the model's family decides
    (CogVideoX: BFCHW, Wan: BCFHW; images: BCHW)."""
    from optim.families import family_of_pipeline

    fam = family_of_pipeline(type(pipe).__name__)
    if fam is None or cache.tensor_format != C.FasterCache.model_fields["tensor_format"].default:
        return cache.tensor_format
    return fam.faster_cache_tensor_format


def flux_mag_ratios() -> list[float]:
    """The FLUX.1 MagCache ratios that ship with diffusers."""
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    return [float(x) for x in FLUX_MAG_RATIOS]


def apply_cache(
    pipe: Any, cache: Any, applied: Applied, *, steps: int, batched_cfg: bool, mag_ratios: list[float] | None = None
) -> None:
    if isinstance(cache, C.NoCache):
        return
    transformer = pipe.transformer
    if not hasattr(transformer, "enable_cache"):
        raise IncompatibleError(
            f"cache {cache.method!r} needs a diffusers transformer with cache support; "
            f"{type(transformer).__name__} has none"
        )
    diffusers_config = build_cache_config(
        pipe, cache, steps=steps, batched_cfg=batched_cfg, mag_ratios=mag_ratios
    )
    transformer.enable_cache(diffusers_config)
    applied.add(f"cache: {describe_cache(cache)}", transformer.disable_cache)
    if isinstance(cache, C.FasterCache) and cache.is_guidance_distilled is None:
        applied.add(
            f"FasterCache is_guidance_distilled={diffusers_config.is_guidance_distilled} "
            f"({'guidance branches batched' if batched_cfg else 'no batched unconditional branch in this pipeline'})"
        )
    if isinstance(cache, C.FasterCache) and diffusers_config.tensor_format != cache.tensor_format:
        applied.add(f"FasterCache tensor_format={diffusers_config.tensor_format} (the layout of "
                    f"{type(transformer).__name__}'s hidden states; the setting was left at its default)")
    _warn_shared_branch_state(pipe, cache, applied)


def _warn_shared_branch_state(pipe: Any, cache: Any, applied: Applied) -> None:
    """PAB and FasterCache keep one state per hooked module, not one per guidance branch: with true CFG (FLUX-
    architecture models without guidance embeddings, at guidance > 1 with a negative prompt) the unconditional
    call can reuse the conditional call's attention. Refused on Qwen-Image and Wan (`optim.compat`); on FLUX
    models kept, with this warning, because it is how the shipped presets run on the embedded model."""
    from optim.families import family_of_pipeline
    from optim.generation import guidance_style

    if not isinstance(cache, (C.PyramidAttentionBroadcast, C.FasterCache)) or guidance_style(pipe) != "true_cfg":
        return
    fam = family_of_pipeline(type(pipe).__name__)
    if fam is not None and fam.key != "flux":
        return  # Qwen-Image and Wan reach here only at guidance <= 1: one call a step, nothing shared
    applied.warn(
        f"{cache.method} keeps one state per attention module, not per guidance branch: when true CFG runs (guidance "
        "above 1 with a negative prompt, two transformer calls a step) the unconditional call may reuse the "
        "conditional call's attention output, which weakens guidance (diffusers' hook state is per module)"
    )


def describe_cache(cache: Any) -> str:
    """A short human description: the method and the settings that differ from its defaults."""
    settings = C.minimal_dict(C.OptimConfig(cache=cache)).get("cache", {})
    extras = ", ".join(f"{key}={value}" for key, value in settings.items() if key != "method")
    return cache.method + (f" ({extras})" if extras else "")


def calibrate_mag_ratios(pipe: Any, *, steps: int, run: Any) -> list[float]:
    """Measure this model's MagCache ratios with diffusers' own calibration mode, in one untimed run.

    diffusers reports the ratios only through its logger (and a print) when the last step finishes, then forgets
    them; we listen on that logger. With true CFG each guidance branch reports its own list; we take the first
    (the conditional branch, as MagCache's published ratios are).
    """
    import contextlib
    import io
    import json
    import logging

    from diffusers import hooks

    logger = logging.getLogger("diffusers.hooks.mag_cache")
    found: list[list[float]] = []

    class _Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            prefix = "MagCache Calibration Results:"
            if message.startswith(prefix):
                found.append([float(x) for x in json.loads(message[len(prefix) :].strip())])

    listener = _Listener(level=logging.INFO)
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.addHandler(listener)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # keep the calibration out of the user's console
    transformer = pipe.transformer
    transformer.enable_cache(hooks.MagCacheConfig(calibrate=True, num_inference_steps=steps))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run()
    finally:
        transformer.disable_cache()
        logger.removeHandler(listener)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
    if not found or len(found[0]) != steps:
        raise RuntimeError("MagCache calibration reported no ratios; give mag_ratios explicitly")
    return found[0]
