"""One pipeline call, timed: the call's arguments, a seeded CPU generator, per-step marks, the output as uint8
(an image HxWx3, or a video's frames FxHxWx3).

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
    """'distilled' (guidance embeddings, e.g. FLUX.1-dev: one pass, no negative prompt), 'true_cfg' (the two
    guidance branches as *separate* transformer calls each step: FLUX-architecture models without embeddings
    through `true_cfg_scale`, Qwen-Image, Wan), or 'cfg' (classic classifier-free guidance, the two branches
    batched in one call: SD3, CogVideoX). Known families answer from `optim.families` (what each pipeline's
    `__call__` does, checked by tests/test_families.py); other pipelines by their signature."""
    from optim import families

    found = families.family_of_pipeline(getattr(pipeline_class, "__name__", str(pipeline_class)))
    if found is not None:
        return families.guidance_style(found.key, guidance_embeds)
    if guidance_embeds:
        return "distilled"
    if "true_cfg_scale" in inspect.signature(pipeline_class.__call__).parameters:
        return "true_cfg"
    return "cfg"


def guidance_argument(pipe: Any) -> str:
    """The `__call__` argument the run's guidance scale goes to: `true_cfg_scale` where true CFG runs through it
    (FLUX-architecture models without guidance embeddings, Qwen-Image), else `guidance_scale`."""
    from optim import families

    found = families.family_of_pipeline(type(pipe).__name__)
    if found is not None and found.guidance is not families.Guidance.DISTILLED:
        return found.guidance_argument
    params = inspect.signature(pipe.__call__).parameters
    if guidance_style(pipe) == "true_cfg" and "true_cfg_scale" in params:
        return "true_cfg_scale"
    return "guidance_scale"


def makes_video(pipe: Any) -> bool:
    """Whether the pipeline makes videos (its `__call__` takes `num_frames`)."""
    return "num_frames" in inspect.signature(pipe.__call__).parameters


# Where a video pipeline takes its frame rate, if it takes one at all (most only use it when exporting).
FPS_ARGUMENTS = ("fps", "frame_rate")


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
    argument = guidance_argument(pipe)
    kwargs[argument] = run.guidance_scale
    if argument == "true_cfg_scale":
        # Real classifier-free guidance through `true_cfg_scale` runs only with a negative prompt (FLUX, Qwen-Image:
        # `do_true_cfg`); `guidance_scale` alone would silently do nothing.
        kwargs["negative_prompt"] = run.negative_prompt if run.negative_prompt is not None else ""
    elif run.negative_prompt is not None:
        if "negative_prompt" in params and style != "distilled":
            kwargs["negative_prompt"] = run.negative_prompt
        else:
            warnings.append(
                f"negative_prompt is ignored: {type(pipe).__name__} is guidance-distilled and uses guidance_scale "
                "without a negative prompt"
            )
    if run.max_sequence_length is not None and "max_sequence_length" in params:
        kwargs["max_sequence_length"] = run.max_sequence_length
    video = makes_video(pipe)
    if run.num_frames is not None:
        if video:
            kwargs["num_frames"] = run.num_frames
            from optim import families

            found = families.family_of_pipeline(type(pipe).__name__)
            made = families.frames_made(found.key, run.num_frames) if found is not None else run.num_frames
            if made != run.num_frames:
                warnings.append(f"num_frames={run.num_frames}: {type(pipe).__name__} makes {made} frames for that "
                                "(CogVideoX: ask for 8k+1 frames, e.g. 9, 17, 49; Wan: 4k+1, e.g. 9, 81)")
        else:
            warnings.append(f"num_frames={run.num_frames} is ignored: {type(pipe).__name__} makes images, not videos")
    if run.fps is not None:
        argument = next((name for name in FPS_ARGUMENTS if name in params), None)
        if argument is not None:
            kwargs[argument] = run.fps
        elif not video:
            warnings.append(f"fps={run.fps} is ignored: {type(pipe).__name__} makes images, not videos")
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
    return CallResult(image=to_uint8(pipeline_output(output)), latency_s=latency, per_step_s=per_step)


def pipeline_output(output: Any) -> Any:
    """What a pipeline call made: `images` (image pipelines) or `frames` (video pipelines' outputs)."""
    images = getattr(output, "images", None)
    if images is None:
        images = getattr(output, "frames", None)
    if images is None:
        raise RunError(f"the pipeline returned {type(output).__name__} with neither images nor frames")
    return images


def to_uint8(images: Any) -> np.ndarray:
    """The first output as uint8, as diffusers' own numpy-to-PIL conversion does: an image batch (N, H, W, 3)
    gives its first image (H, W, 3); a video batch (N, F, H, W, 3) its first video's frames (F, H, W, 3), as
    does a list of videos. NaNs are an error.

        >>> to_uint8(np.ones((1, 9, 8, 8, 3))).shape
        (9, 8, 8, 3)
    """
    if isinstance(images, (list, tuple)):
        first = images[0]
        array = np.stack([np.asarray(f) for f in first]) if isinstance(first, (list, tuple)) else np.asarray(first)
    else:
        array = np.asarray(images)
        if array.ndim in (4, 5):  # a batch: images (N, H, W, 3) or videos (N, F, H, W, 3)
            array = array[0]
    if not np.all(np.isfinite(array)):
        bad = float(np.mean(~np.isfinite(array)))
        what = "video" if array.ndim == 4 else "image"
        raise RunError(
            f"the output {what} contains NaN or infinite values ({bad:.0%} of pixels): the computation overflowed. "
            "Try bfloat16 or float32 instead of float16, or drop the setting that caused it"
        )
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
