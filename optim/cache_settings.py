"""The step-cache settings: one small model per method, diffusers' own (First Block Cache, Pyramid Attention
Broadcast, FasterCache, MagCache, TaylorSeer) and cache-dit's (DBCache, steps masks), joined in `CacheConfig` by
their `method`. Applied by `optim.techniques.cache`; which family each works on is `optim.families`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from optim.settings import Dtype, Settings, SkipRange, TimestepRange, _check_range, info, variant

_SKIP = "Recompute {kind} attention every N calls and reuse it in between (empty: never skip it)."
_STEPS = "Timesteps (0-1000 scale, low to high) where {kind} skipping applies."


class NoCache(Settings):
    model_config = variant("none", "No cache: every step computes every block.")
    method: Literal["none"]


class FirstBlockCache(Settings):
    """diffusers `FirstBlockCacheConfig`: skip the remaining blocks while the first block's residual barely moves."""

    model_config = variant("First Block Cache", "Skip the other blocks while the first block's output barely "
                           "changes between steps, reusing their cached residual.")
    method: Literal["first_block_cache"]
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = Field(0.05, **info(
        "Threshold", "When the first block's output changed less than this (relative) since the last computed "
        "step, the other blocks are skipped. Higher: more skipped steps, lower fidelity.", faster_when_higher=True))


class PyramidAttentionBroadcast(Settings):
    """diffusers `PyramidAttentionBroadcastConfig` (arXiv 2408.12588). A skip range N recomputes attention once
    every N calls while the timestep is inside the matching timestep range."""

    model_config = variant("Pyramid Attention Broadcast", "Reuse attention outputs for N-1 of every N calls while "
                           "the timestep is in range; cross attention tolerates the most skipping, spatial the least.")
    method: Literal["pyramid_attention_broadcast"]
    spatial_attention_block_skip_range: SkipRange | None = Field(2, **info(
        "Spatial skip range", _SKIP.format(kind="spatial (self)"), faster_when_higher=True))
    temporal_attention_block_skip_range: SkipRange | None = Field(None, **info(
        "Temporal skip range", _SKIP.format(kind="temporal") + " Only for models with separate temporal attention "
        "blocks.", advanced=True))
    cross_attention_block_skip_range: SkipRange | None = Field(None, **info(
        "Cross skip range", _SKIP.format(kind="cross"), advanced=True))
    spatial_attention_timestep_skip_range: TimestepRange = Field((100, 800), **info(
        "Spatial timesteps", _STEPS.format(kind="spatial")))
    temporal_attention_timestep_skip_range: TimestepRange = Field((100, 800), **info(
        "Temporal timesteps", _STEPS.format(kind="temporal"), advanced=True))
    cross_attention_timestep_skip_range: TimestepRange = Field((100, 800), **info(
        "Cross timesteps", _STEPS.format(kind="cross"), advanced=True))

    @model_validator(mode="after")
    def _ranges(self) -> PyramidAttentionBroadcast:
        for kind in ("spatial", "temporal", "cross"):
            _check_range(
                getattr(self, f"{kind}_attention_timestep_skip_range"), f"{kind}_attention_timestep_skip_range"
            )
        if not any(
            getattr(self, f"{kind}_attention_block_skip_range") for kind in ("spatial", "temporal", "cross")
        ):
            raise ValueError(
                "pyramid_attention_broadcast skips nothing: set at least one of spatial_attention_block_skip_range, "
                "temporal_attention_block_skip_range, cross_attention_block_skip_range"
            )
        return self


class FasterCache(Settings):
    """diffusers `FasterCacheConfig` (arXiv 2410.19355): reuse attention states and approximate the unconditional
    branch. `is_guidance_distilled=None` means "decide from the model" (FLUX.1-dev style guidance embeddings)."""

    model_config = variant("FasterCache", "Reuse attention states across steps with frequency-aware updates, and "
                           "approximate the unconditional branch of batched classifier-free guidance.")
    method: Literal["faster_cache"]
    spatial_attention_block_skip_range: SkipRange | None = Field(2, **info(
        "Spatial skip range", _SKIP.format(kind="spatial")))
    temporal_attention_block_skip_range: SkipRange | None = Field(None, **info(
        "Temporal skip range", _SKIP.format(kind="temporal") + " Video models only.", advanced=True))
    spatial_attention_timestep_skip_range: TimestepRange = Field((-1, 681), **info(
        "Spatial timesteps", _STEPS.format(kind="spatial")))
    temporal_attention_timestep_skip_range: TimestepRange = Field((-1, 681), **info(
        "Temporal timesteps", _STEPS.format(kind="temporal"), advanced=True))
    low_frequency_weight_update_timestep_range: TimestepRange = Field((99, 901), **info(
        "Low-frequency update range", "Timesteps where the low-frequency weight is updated.", advanced=True))
    high_frequency_weight_update_timestep_range: TimestepRange = Field((-1, 301), **info(
        "High-frequency update range", "Timesteps where the high-frequency weight is updated.", advanced=True))
    alpha_low_frequency: Annotated[float, Field(ge=0.0, le=10.0)] = Field(1.1, **info(
        "Low-frequency weight", "How much reused low frequencies count.", advanced=True))
    alpha_high_frequency: Annotated[float, Field(ge=0.0, le=10.0)] = Field(1.1, **info(
        "High-frequency weight", "How much reused high frequencies count.", advanced=True))
    unconditional_batch_skip_range: Annotated[int, Field(ge=1, le=50)] = Field(5, **info(
        "Unconditional skip range", "Approximate the unconditional branch every N steps (pipelines that batch "
        "classifier-free guidance only)."))
    unconditional_batch_timestep_skip_range: TimestepRange = Field((-1, 641), **info(
        "Unconditional skip timesteps", "Timesteps where the approximation applies.", advanced=True))
    attention_weight: Annotated[float, Field(ge=0.0, le=1.0)] = Field(0.5, **info(
        "Attention weight", "Blend of reused and fresh attention.", advanced=True))
    tensor_format: Literal["BCFHW", "BFCHW", "BCHW"] = Field("BCHW", **info(
        "Tensor format", "Layout of the model's hidden states: BCHW for images, BFCHW (CogVideoX) or BCFHW for "
        "video.", advanced=True))
    is_guidance_distilled: bool | None = Field(None, **info(
        "Guidance-distilled model", "Unset decides from the pipeline: the unconditional-branch approximation applies "
        "only where guidance branches are batched in one call."))

    @model_validator(mode="after")
    def _ranges(self) -> FasterCache:
        for name in (
            "spatial_attention_timestep_skip_range",
            "temporal_attention_timestep_skip_range",
            "low_frequency_weight_update_timestep_range",
            "high_frequency_weight_update_timestep_range",
            "unconditional_batch_timestep_skip_range",
        ):
            _check_range(getattr(self, name), name)
        for name in ("spatial_attention_timestep_skip_range", "temporal_attention_timestep_skip_range"):
            value = getattr(self, name)
            # diffusers' FasterCache skips attention on its first call when the first timestep (999, or 1000 for
            # flow matching) is in range, before anything is cached: TypeError 'NoneType' is not subscriptable.
            if value is not None and value[1] > 999:
                raise ValueError(f"{name} must end at 999 or below, got {list(value)}: the first step (timestep "
                                 "999-1000) must be computed in full, FasterCache has nothing to reuse yet")
        return self


class MagCache(Settings):
    """diffusers `MagCacheConfig`. `mag_ratios`: "calibrate" measures the model's ratios in an untimed run first;
    "flux" uses the FLUX.1 ratios shipped with diffusers; a list gives them explicitly."""

    model_config = variant("MagCache", "Skip steps while the ratio of residual magnitudes between steps stays near "
                           "1, up to an error budget.")
    method: Literal["mag_cache"]
    threshold: Annotated[float, Field(gt=0.0, le=2.0)] = Field(0.06, **info(
        "Threshold", "Accumulated error allowed before recomputing. Higher: faster, lower fidelity.",
        faster_when_higher=True))
    max_skip_steps: Annotated[int, Field(ge=1, le=50)] = Field(3, **info(
        "Max skipped steps in a row", "Caps drift between fully computed steps."))
    retention_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = Field(0.2, **info(
        "Retention ratio", "Share of the first steps always computed in full."))
    mag_ratios: Literal["calibrate", "flux"] | Annotated[list[float], Field(min_length=2, max_length=1000)] = Field(
        "calibrate", **info(
            "Magnitude ratios", "calibrate: measure this model's ratios in an untimed run first; flux: FLUX.1's "
            "published ratios; or a list, one number per step."))


class TaylorSeer(Settings):
    """diffusers `TaylorSeerCacheConfig`: predict skipped block outputs with a Taylor expansion."""

    model_config = variant("TaylorSeer", "Compute fully every N steps and predict the block outputs in between "
                           "with a Taylor expansion.")
    method: Literal["taylorseer"]
    cache_interval: Annotated[int, Field(ge=1, le=50)] = Field(5, **info(
        "Cache interval", "Compute fully every N steps, predict in between. Higher: faster, lower fidelity.",
        faster_when_higher=True))
    disable_cache_before_step: Annotated[int, Field(ge=0, le=500)] = Field(3, **info(
        "Full steps first", "Steps computed fully before caching starts."))
    disable_cache_after_step: Annotated[int, Field(ge=0, le=500)] | None = Field(None, **info(
        "Full steps from", "Compute fully from this step on (empty: never)."))
    max_order: Annotated[int, Field(ge=0, le=4)] = Field(1, **info(
        "Taylor order", "Higher orders predict better and keep more tensors."))
    taylor_factors_dtype: Dtype = Field("bfloat16", **info(
        "Factor precision", "dtype of the stored Taylor factors.", advanced=True))
    use_lite_mode: bool = Field(False, **info(
        "Lite mode", "Cache fewer layers: less memory, less speed-up.", advanced=True))


class CacheDitDBCache(Settings):
    """cache-dit's DBCache (`cache_dit.enable_cache` with a `DBCacheConfig`): "dual block" caching. The first Fn
    blocks always compute; their residual decides whether the middle blocks run or their cached residual is
    reused; the last Bn blocks always compute and correct. Optionally a TaylorSeer calibrator predicts the reused
    residual instead of repeating it. A second provider beside diffusers' own caches, so both can be measured on
    the same run."""

    model_config = variant("cache-dit DBCache", "cache-dit's dual-block cache: compute the first Fn (and last Bn) "
                           "blocks every step, skip the rest while the Fn blocks' residual barely moves.")
    method: Literal["cache_dit_dbcache"]
    residual_diff_threshold: Annotated[float, Field(gt=0.0, le=2.0)] = Field(0.08, **info(
        "Residual threshold", "When the first Fn blocks' residual changed less than this (relative) since the last "
        "computed step, the middle blocks are skipped. Higher: faster, lower fidelity.", faster_when_higher=True))
    fn_compute_blocks: Annotated[int, Field(ge=1, le=64)] = Field(1, **info(
        "Fn: first blocks computed", "Blocks at the front computed every step (their residual is the test). More: "
        "a surer test, less skipped."))
    bn_compute_blocks: Annotated[int, Field(ge=0, le=64)] = Field(0, **info(
        "Bn: last blocks computed", "Blocks at the end computed every step to correct the reused residual."))
    max_warmup_steps: Annotated[int, Field(ge=0, le=500)] = Field(4, **info(
        "Warm-up steps", "The first steps always compute (the cache has nothing to reuse yet)."))
    max_cached_steps: Annotated[int, Field(ge=-1, le=500)] = Field(-1, **info(
        "Most cached steps", "At most this many steps reuse the cache (-1: no limit).", advanced=True))
    max_continuous_cached_steps: Annotated[int, Field(ge=-1, le=500)] = Field(-1, **info(
        "Most cached steps in a row", "At most this many consecutive steps reuse the cache (-1: no limit).",
        advanced=True))
    calibrator: Literal["none", "taylorseer"] = Field("none", **info(
        "Calibrator", "taylorseer: predict the skipped residual with a Taylor expansion over the last computed "
        "steps instead of reusing it as it was (cache-dit's TaylorSeerCalibratorConfig)."))
    taylorseer_order: Annotated[int, Field(ge=1, le=4)] = Field(1, **info(
        "TaylorSeer order", "Order of the expansion (1 or 2 recommended).", advanced=True))


class CacheDitStepsMask(Settings):
    """cache-dit's step-computation mask (`cache_dit.steps_mask` into `DBCacheConfig.steps_computation_mask`): a
    fixed schedule of which steps compute and which reuse the cache, a named policy or your own."""

    model_config = variant("cache-dit steps mask", "A fixed schedule: named policies (slow ... ultra) or your own "
                           "compute/cache bins decide which steps reuse the cache.")
    method: Literal["cache_dit_steps_mask"]
    policy: Literal["slow", "medium", "fast", "ultra", "custom"] = Field("medium", **info(
        "Mask policy", "cache-dit's predefined schedules, from slow (fewest steps cached) to ultra (most); custom: "
        "the bins below. Scaled to the run's step count."))
    compute_bins: Annotated[list[Annotated[int, Field(ge=1, le=500)]], Field(min_length=1, max_length=64)] = Field(
        [6, 2, 2, 2, 2, 1], **info(
            "Compute bins (custom)", "Consecutive steps computed, then cached per cache bin, alternating: e.g. 6, 2, "
            "2 computes 6 steps, caches the first cache bin, computes 2 ...", advanced=True))
    cache_bins: Annotated[list[Annotated[int, Field(ge=1, le=500)]], Field(min_length=1, max_length=64)] = Field(
        [1, 3, 3, 3, 3], **info("Cache bins (custom)", "Consecutive steps that reuse the cache, between the compute "
                                "bins.", advanced=True))
    fn_compute_blocks: Annotated[int, Field(ge=1, le=64)] = Field(1, **info(
        "Fn: first blocks computed", "Blocks at the front computed even on cached steps."))
    bn_compute_blocks: Annotated[int, Field(ge=0, le=64)] = Field(0, **info(
        "Bn: last blocks computed", "Blocks at the end computed even on cached steps."))
    calibrator: Literal["none", "taylorseer"] = Field("taylorseer", **info(
        "Calibrator", "taylorseer: predict the skipped residual instead of reusing it (cache-dit recommends it with "
        "masks)."))


CACHE_DIT_METHODS = ("cache_dit_dbcache", "cache_dit_steps_mask")

CacheConfig = Annotated[
    Union[NoCache, FirstBlockCache, PyramidAttentionBroadcast, FasterCache, MagCache, TaylorSeer, CacheDitDBCache,
          CacheDitStepsMask],
    Field(discriminator="method"),
]
