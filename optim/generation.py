"""One pipeline call, timed: the call's arguments, a seeded CPU generator, per-step marks, the image as uint8.

Per-step time comes from `callback_on_step_end` marks; step 0 is measured from the end of the last text-encoder
call, so prompt encoding is excluded. On CUDA the marks are CUDA events (no synchronize inside the loop, which
would perturb what we measure); the whole call is bracketed by a synchronize and the wall clock.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from optim.errors import RunError
from optim.models import ResolvedRun


def guidance_style(pipe: Any) -> str:
    """How this pipeline takes guidance (see `guidance_style_of`)."""
    embeds = bool(getattr(getattr(getattr(pipe, "transformer", None), "config", None), "guidance_embeds", False))
    return guidance_style_of(type(pipe), embeds)


def guidance_style_of(pipeline_class: Any, guidance_embeds: bool) -> str:
    """'distilled' (guidance embeddings, e.g. FLUX.1-dev: one pass, no negative prompt), 'true_cfg' (FLUX-style
    pipelines without embeddings: real CFG through `true_cfg_scale`, the two branches as *separate* calls), or
    'cfg' (classic classifier-free guidance, the two branches batched in one call)."""
    if guidance_embeds:
        return "distilled"
    if "true_cfg_scale" in inspect.signature(pipeline_class.__call__).parameters:
        return "true_cfg"
    return "cfg"


def call_kwargs(pipe: Any, run: ResolvedRun) -> tuple[dict[str, Any], list[str]]:
    """The pipeline's keyword arguments for these settings, and warnings for settings it cannot honour."""
    params = inspect.signature(pipe.__call__).parameters
    warnings: list[str] = []
    kwargs: dict[str, Any] = {
        "prompt": run.prompt,
        "num_inference_steps": run.steps,
        "height": run.height,
        "width": run.width,
        "output_type": "np",
    }
    style = guidance_style(pipe)
    if style == "true_cfg":
        # FLUX-architecture models without guidance embeddings do real classifier-free guidance through
        # `true_cfg_scale` + a negative prompt; `guidance_scale` alone would silently do nothing.
        kwargs["true_cfg_scale"] = run.guidance_scale
        kwargs["negative_prompt"] = run.negative_prompt if run.negative_prompt is not None else ""
    else:
        kwargs["guidance_scale"] = run.guidance_scale
        if run.negative_prompt is not None:
            if "negative_prompt" in params and style == "cfg":
                kwargs["negative_prompt"] = run.negative_prompt
            else:
                warnings.append(
                    f"negative_prompt is ignored: {type(pipe).__name__} is guidance-distilled and uses guidance_scale "
                    "without a negative prompt"
                )
    if run.max_sequence_length is not None and "max_sequence_length" in params:
        kwargs["max_sequence_length"] = run.max_sequence_length
    return kwargs, warnings


class _Clock:
    """Marks on the wall clock (CPU) or CUDA events (GPU), read after the call."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> Any:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def between(start: Any, end: Any) -> float:
        if isinstance(start, float):
            return end - start
        return start.elapsed_time(end) / 1000.0


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


@dataclass
class CallResult:
    image: np.ndarray
    latency_s: float
    per_step_s: list[float] = field(default_factory=list)


def generate(
    pipe: Any,
    kwargs: dict[str, Any],
    *,
    seed: int,
    device: str,
    on_step: Callable[[int], None] | None = None,
) -> CallResult:
    """Run the pipeline once with a fresh CPU generator seeded `seed`; time it and each step."""
    import torch

    clock = _Clock(device)
    encoder_done: list[Any] = []
    step_marks: list[Any] = []
    handles = []
    for name, component in pipe.components.items():
        if name.startswith("text_encoder") and isinstance(component, torch.nn.Module):
            handles.append(component.register_forward_hook(lambda *_: encoder_done.append(clock.mark())))

    def callback(_pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        step_marks.append(clock.mark())
        if on_step is not None:
            on_step(step)
        return callback_kwargs

    generator = torch.Generator("cpu").manual_seed(seed)
    try:
        synchronize(device)
        start_wall = time.perf_counter()
        start_mark = clock.mark()
        output = pipe(**kwargs, generator=generator, callback_on_step_end=callback)
        synchronize(device)
        latency = time.perf_counter() - start_wall
    finally:
        for handle in handles:
            handle.remove()

    loop_start = encoder_done[-1] if encoder_done else start_mark
    edges = [loop_start, *step_marks]
    per_step = [clock.between(a, b) for a, b in zip(edges, edges[1:])]
    return CallResult(image=to_uint8(output.images), latency_s=latency, per_step_s=per_step)


def to_uint8(images: Any) -> np.ndarray:
    """The first image as HxWx3 uint8, as diffusers' own numpy-to-PIL conversion does; NaNs are an error."""
    array = np.asarray(images[0] if isinstance(images, (list, tuple)) or getattr(images, "ndim", 0) == 4 else images)
    if not np.all(np.isfinite(array)):
        bad = float(np.mean(~np.isfinite(array)))
        raise RunError(
            f"the output image contains NaN or infinite values ({bad:.0%} of pixels): the computation overflowed. "
            "Try bfloat16 or float32 instead of float16, or drop the setting that caused it"
        )
    return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
