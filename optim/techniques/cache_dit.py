"""Step caches through cache-dit (`cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(...))` / `disable_cache`),
the second cache provider beside diffusers' own hooks (`optim.techniques.cache`), so that the two libraries can be
measured on the same run.

* `cache_dit_dbcache`: DBCache, dynamic: the first Fn blocks always compute; when their residual changed less than
  the threshold since the last computed step, the middle blocks reuse their cached residual; the last Bn blocks
  always compute. `calibrator: taylorseer` predicts the reused residual (`TaylorSeerCalibratorConfig`).
* `cache_dit_steps_mask`: a fixed schedule (`cache_dit.steps_mask`: a named policy scaled to the run's steps, or
  the user's compute/cache bins) as `steps_computation_mask` with the static policy: a 0 step reuses the cache.

The pipeline's guidance decides `enable_separate_cfg`: true CFG as two transformer calls a step (the embedded
model at guidance > 1, Qwen-Image, Wan) keeps one cache per branch; batched CFG (CogVideoX, SD3) and distilled
guidance (FLUX.1-dev) run one call a step. cache-dit's own statistics (`cache_dit.summary`: the cached steps of
each branch) go into the report, next to the lab's count of the transformer work actually computed
(`optim.workcount`). cache-dit is optional (the `cachedit` extra; requirements-dev installs it): without it these
methods are listed as unavailable, with the install command.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from optim import config as C
from optim.techniques import Applied

INSTALL = "pip install cache-dit==1.5.3 (or: pip install 'diffusion-optimization-lab[cachedit]')"


def quiet_cache_dit() -> None:
    """cache-dit logs every hook and a statistics table at INFO: errors only (before it is imported)."""
    import logging

    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")
    logging.getLogger("CACHE_DIT").setLevel(logging.ERROR)


def cache_dit_available() -> str | None:
    """None if cache-dit can be used here, else why not."""
    import importlib.util

    if importlib.util.find_spec("cache_dit") is None:
        return f"cache-dit is not installed: {INSTALL}"
    return None


def supports_pipeline(pipeline_class: str) -> bool:
    """Whether cache-dit has a block adapter for this pipeline class (its registry lists name prefixes)."""
    quiet_cache_dit()
    import cache_dit

    _, names = cache_dit.supported_pipelines()
    return any(pipeline_class.startswith(name) for name in names)


def separate_cfg(pipe: Any, guidance_scale: float) -> bool:
    """Whether the two guidance branches are separate transformer calls each step (cache-dit then keeps a cache
    per branch)."""
    from optim.generation import guidance_style

    return guidance_style(pipe) == "true_cfg" and guidance_scale > 1.0


def steps_mask(cache: C.CacheDitStepsMask, steps: int) -> list[int]:
    """The schedule of computed (1) and cached (0) steps for a run of `steps` steps."""
    quiet_cache_dit()
    import cache_dit

    if cache.policy == "custom":
        if sum(cache.compute_bins) + sum(cache.cache_bins) < steps:
            from optim.errors import IncompatibleError

            raise IncompatibleError(
                f"cache.compute_bins and cache.cache_bins cover {sum(cache.compute_bins) + sum(cache.cache_bins)} "
                f"steps; the run has {steps}: lengthen the bins or lower run.steps")
        return list(cache_dit.steps_mask(compute_bins=list(cache.compute_bins), cache_bins=list(cache.cache_bins),
                                         total_steps=steps))
    return list(cache_dit.steps_mask(total_steps=steps, mask_policy=cache.policy))


def build_config(pipe: Any, cache: Any, *, steps: int, guidance_scale: float) -> tuple[Any, Any, str]:
    """(cache-dit's DBCacheConfig, its calibrator config or None, a description for the report)."""
    quiet_cache_dit()
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    separate = separate_cfg(pipe, guidance_scale)
    common = dict(Fn_compute_blocks=cache.fn_compute_blocks, Bn_compute_blocks=cache.bn_compute_blocks,
                  enable_separate_cfg=separate, num_inference_steps=steps)
    if isinstance(cache, C.CacheDitDBCache):
        config = DBCacheConfig(residual_diff_threshold=cache.residual_diff_threshold,
                               max_warmup_steps=cache.max_warmup_steps, max_cached_steps=cache.max_cached_steps,
                               max_continuous_cached_steps=cache.max_continuous_cached_steps, **common)
        what = (f"DBCache F{cache.fn_compute_blocks}B{cache.bn_compute_blocks}, residual threshold "
                f"{cache.residual_diff_threshold:g}, {cache.max_warmup_steps} warm-up steps")
    else:
        mask = steps_mask(cache, steps)
        config = DBCacheConfig(steps_computation_mask=mask, steps_computation_policy="static", max_warmup_steps=0,
                               **common)
        what = (f"steps mask {cache.policy} ({mask.count(0)} of {steps} steps cached: "
                f"{''.join(map(str, mask))}), F{cache.fn_compute_blocks}B{cache.bn_compute_blocks}")
    calibrator = None
    if cache.calibrator == "taylorseer":
        order = getattr(cache, "taylorseer_order", 1)
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=order)
        what += f", TaylorSeer calibrator (order {order})"
    what += ", a cache per guidance branch" if separate else ", one transformer call a step"
    return config, calibrator, what


def apply_cache_dit(pipe: Any, cache: Any, applied: Applied, *, steps: int, guidance_scale: float) -> None:
    """Enable cache-dit on the pipeline; `applied` undoes it (`cache_dit.disable_cache`, which restores the
    uncached forward exactly: the baseline after it is bit-identical, tests/test_cache_dit.py)."""
    quiet_cache_dit()
    import cache_dit

    config, calibrator, what = build_config(pipe, cache, steps=steps, guidance_scale=guidance_scale)
    modules = [module for part in pipe.components.values() if isinstance(part, torch.nn.Module)
               for module in part.modules()]
    before = [(dict(vars(module)), dict(module._modules)) for module in modules]
    cache_dit.enable_cache(pipe, cache_config=config, calibrator_config=calibrator)

    def disable() -> None:
        cache_dit.disable_cache(pipe)
        restore_attributes(modules, before)

    applied.add(f"cache: cache-dit {what}", disable)


def restore_attributes(modules: list[Any], before: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Put each module's own attributes and its children (in their order) back as they were. cache-dit 1.5.3's
    `disable_cache` removes its hooks but leaves its patched `forward` (and `_is_patched`, an empty hook registry)
    on the transformer, and its run re-registers FLUX's block lists in another order; a diffusers cache applied
    next on the same loaded side would run through the patched forward, or take a single block for the first one
    (First Block Cache then fails: tests/test_cache_dit.py)."""
    for module, (was, children) in zip(modules, before):
        now = vars(module)
        for name in [name for name in now if name not in was]:
            del now[name]
        for name, value in was.items():
            if now.get(name) is not value:
                now[name] = value
        if list(module._modules.items()) != list(children.items()):
            module._modules.clear()
            module._modules.update(children)


def cache_dit_stats(pipe: Any) -> dict[str, Any] | None:
    """cache-dit's own count of the last run: cached steps per guidance branch and steps executed (None when
    cache-dit is not enabled on the pipeline)."""
    import sys

    if "cache_dit" not in sys.modules:
        return None
    import cache_dit

    try:
        stats = cache_dit.summary(pipe, details=False, logging=False)
    except Exception:  # noqa: BLE001 - statistics are a courtesy; a pipeline without hooks has none
        return None
    if not stats:
        return None
    first = stats[0]
    first = first if isinstance(first, dict) else vars(first)
    return {"cached_steps": list(first.get("cached_steps") or []),
            "cfg_cached_steps": list(first.get("cfg_cached_steps") or []),
            "executed_steps": first.get("accumulated_executed_steps"),
            "transformer_executed_steps": first.get("accumulated_transformer_executed_steps")}


def cache_dit_report(stats: dict[str, Any], work_per_step: list[float]) -> dict[str, Any]:
    """cache-dit's statistics beside the lab's own count: the steps where the lab measured less transformer work
    than the baseline's must be exactly the steps cache-dit says it served from its cache (either branch)."""
    said = sorted(set(stats.get("cached_steps") or []) | set(stats.get("cfg_cached_steps") or []))
    measured = [step for step, work in enumerate(work_per_step) if work < 0.999]
    return {**stats, "lab_reduced_steps": measured, "agrees": said == measured}
