"""Apply an `OptimConfig` to a loaded pipeline, in the fixed order.

    quantize (at load, `optim.techniques.quantization`) -> attention backend -> cache -> offload -> VAE
    -> [eager probe run, in `optim.measure`] -> dynamo settings, channels_last, torch.compile (last)

Compile comes last because it traces whatever the earlier steps installed (cache hooks, offload hooks), and
after the probe run because the work counter must not live inside a compiled graph.
"""

from __future__ import annotations

from typing import Any

from optim import config as C
from optim.generation import guidance_style
from optim.models import ResolvedRun
from optim.techniques import Applied
from optim.techniques.attention import apply_attention
from optim.techniques.cache import apply_cache
from optim.techniques.cache_dit import apply_cache_dit
from optim.techniques.compile import apply_channels_last, apply_compile, apply_dynamo_settings, resolve_fullgraph
from optim.techniques.offload import apply_offload
from optim.techniques.quantization import describe_quantization
from optim.techniques.vae import apply_vae


def apply_before_probe(
    pipe: Any, optim: C.OptimConfig, run: ResolvedRun, applied: Applied, *, mag_ratios: list[float] | None = None
) -> None:
    """Everything except compile. Quantization already happened at load; it is recorded here for the report."""
    if not isinstance(optim.quantization, C.NoQuantization):
        # A synthetic model built in memory was quantized after it was built (`optim.models.load_pipeline`).
        when = "after load" if isinstance(optim.quantization, C.LayerwiseCasting) else "at load"
        lines = getattr(pipe, "_lab_quantized", None) or [f"{describe_quantization(optim.quantization)} ({when})"]
        for line in lines:
            applied.add(f"quantization: {line}")
    apply_attention(pipe, optim.attention, applied)
    # Both guidance branches batched in one call, which only happens at guidance > 1 (do_classifier_free_guidance).
    batched_cfg = guidance_style(pipe) == "cfg" and run.guidance_scale > 1.0
    if optim.cache.method in C.CACHE_DIT_METHODS:  # the second cache provider (optim.techniques.cache_dit)
        apply_cache_dit(pipe, optim.cache, applied, steps=run.steps, guidance_scale=run.guidance_scale)
    else:
        apply_cache(pipe, optim.cache, applied, steps=run.steps, batched_cfg=batched_cfg, mag_ratios=mag_ratios)
    apply_offload(pipe, optim.offload, applied, device=run.device, quantization=optim.quantization.backend)
    apply_vae(pipe, optim.vae, applied, width=run.width, height=run.height)


def apply_after_probe(pipe: Any, optim: C.OptimConfig, applied: Applied) -> None:
    """Compile and what goes with it."""
    repeated_calls = guidance_style(pipe) in ("true_cfg", "separate")
    bitsandbytes = optim.quantization.backend.startswith("bitsandbytes")
    # Offload hooks (the seed's advice) and cache hooks (measured: FBC + compile hit dynamo's limit of 8
    # recompiles and fell back to eager) make dynamo recompile often.
    recompiles = optim.offload.mode != "none" or optim.cache.method != "none"
    apply_dynamo_settings(optim.compile, applied, bitsandbytes=bitsandbytes, many_recompiles=recompiles)
    apply_channels_last(pipe, optim.compile, applied)
    apply_compile(pipe, optim.compile, applied, fullgraph=resolve_fullgraph(optim), repeated_calls=repeated_calls)
