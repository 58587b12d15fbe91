"""Comparisons on a ZeroGPU Space: the GPU work runs inside `@spaces.GPU`, in the GPU process ZeroGPU keeps.

What ZeroGPU does (spaces 0.51, `spaces/zero/wrappers.py`), and what this module does about it:

* The decorated function runs in a worker process that ZeroGPU forks once and **reuses** for later calls while
  it is idle. So both sides run inline there, one after the other, in a long-lived process: isolation is the
  engine's undo of every process-wide change (attention dispatcher, dynamo settings, inductor cache, hooks on a
  pipeline that is then dropped), which tests/test_zerogpu.py checks over consecutive calls.
* An exception other than `gr.Error` raised inside comes back as `gr.Error("ZeroGPU worker error", <class
  name>)`: the user would see "RunError" and nothing else. So the engine's errors are returned as values and
  raised again outside, with their message.
* GPU time is a quota: everything that can fail without a GPU (limits, the model's files, the compatibility
  checks) runs before entering, and a Hub model is downloaded outside the GPU function.
* The duration asked for is the request's own (`@spaces.GPU(duration=callable)`: spaces calls it with the GPU
  function's arguments): `estimate_gpu_seconds(gpu_work(...))`, from the model, steps, size, frames, warm-up and
  timed runs and the compile (cold or warm). OPTIM_ZEROGPU_MAX_DURATION (seconds, default 120) bounds it: a
  request estimated over it is refused before the GPU function is called, naming the estimate, the bound and
  what to lower (`check_duration`), so it costs the user no quota and is not cut off halfway.
* Just-in-time torch.compile is not supported there (`optim.capabilities` marks it unavailable); compile mode
  `aot` is: it builds inside this GPU function with `spaces.aoti_capture` and `spaces.aoti_compile` (the one place
  is `optim.techniques.aot.spaces_toolchain`), and the package, on the Space's disk, is loaded by later calls.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from optim import config as C
from optim import errors
from optim.config import RunSpec
from optim.engine import Comparison, compare, prepare
from optim.errors import ConfigError, OptimError
from optim.models import ModelDefaults, download_model
from optim.presets import Preset
from optim.techniques.compile import cold_compile

if TYPE_CHECKING:  # a type only: lab.context imports this module when it makes its GPU runner
    from lab.context import ServerContext

ISOLATION_NOTE = ("ZeroGPU: both sides ran one after the other in ZeroGPU's GPU process, which is reused between "
                  "calls; every change a side makes is undone before the next")


# What a comparison costs on ZeroGPU's GPU, in seconds of the reference card (spaces 0.51 scales the requested
# duration itself for a smaller slice: its `duration_factor` is 1.5 on half an RTX Pro 6000, 1.0 on an H200 or
# a whole card). Full size: FLUX.1-dev in bf16 takes ~0.24 s per 1024² step on an H100, eager (xDiT's table), and
# ~0.3 s on an H200 slice, hence 0.3 s per megapixel-step; the margin covers the rest. Small (the embedded and
# tiny builds): bound by kernel launches rather than pixels. Compile: the small models' figures were measured
# on a CPU (regional ~19 s, full ~30 s cold; ~3.5 s warm from inductor's disk cache: FACTS.md); the full-size
# ones are published orders of magnitude (minutes for a whole FLUX transformer, about one for its blocks).
SMALL_MODEL_KINDS = ("embedded", "tiny")
AUTO_TIMED_RUNS = 6  # "auto" runs block-wise, 6 per side, inside the GPU function
OVERHEAD_S = 10.0  # entering the GPU process (forked once, then reused), metrics, images
LOAD_S = {"small": 3.0, "full": 25.0}  # one side's pipeline, from disk to the GPU
STEP_S_PER_MEGAPIXEL = {"small": 0.05, "full": 0.3}
MIN_STEP_S = {"small": 0.01, "full": 0.1}
COMPILE_S = {  # (cold, warm); only the optimized side compiles
    "small": {"off": (0.0, 0.0), "regional": (20.0, 4.0), "full": (30.0, 4.0), "aot": (30.0, 3.0)},
    "full": {"off": (0.0, 0.0), "regional": (60.0, 10.0), "full": (180.0, 20.0), "aot": (120.0, 5.0)},
}
MARGIN = 1.3  # ZeroGPU stops the function at its duration: ask for a little more than expected
MIN_DURATION_S = 20  # the embedded model's comparisons take a few seconds on a GPU
MAX_DURATION_ENV = "OPTIM_ZEROGPU_MAX_DURATION"
DEFAULT_MAX_DURATION_S = 120  # an unauthenticated visitor's whole daily ZeroGPU quota is 2 minutes


@dataclass(frozen=True)
class GpuWork:
    """What one comparison asks of ZeroGPU's GPU, as plain values: the estimate's only inputs."""

    model_kind: str  # embedded, tiny (small builds); hub, local, synthetic (full size)
    steps: int
    width: int
    height: int
    frames: int = 1  # a video's transformer work grows with its frames
    warmup_runs: int = 1
    timed_runs: int = AUTO_TIMED_RUNS  # per side
    extra_calls: int = 0  # untimed calls per side beyond warm-up (MagCache's calibration run)
    compile_mode: str = "off"  # off, regional, full, aot
    compile_warm: bool = False  # the compiled code is already cached on disk

    @property
    def size(self) -> str:
        return "small" if self.model_kind in SMALL_MODEL_KINDS else "full"

    @property
    def calls_per_side(self) -> int:
        return self.warmup_runs + self.timed_runs + self.extra_calls

    @property
    def step_s(self) -> float:
        megapixels = self.width * self.height * self.frames / 1024**2
        return max(MIN_STEP_S[self.size], STEP_S_PER_MEGAPIXEL[self.size] * megapixels)

    @property
    def compile_s(self) -> float:
        cold, warm = COMPILE_S[self.size].get(self.compile_mode, COMPILE_S[self.size]["full"])
        return warm if self.compile_warm else cold


def estimate_gpu_seconds(work: GpuWork) -> int:
    """The ZeroGPU duration (seconds) one comparison needs: both sides loaded, every pipeline call of both sides,
    the optimized side's compile, with a margin. Pure: the same work, the same answer."""
    pipeline_s = 2 * work.calls_per_side * work.steps * work.step_s
    expected = OVERHEAD_S + 2 * LOAD_S[work.size] + pipeline_s + work.compile_s
    return max(MIN_DURATION_S, math.ceil(expected * MARGIN))


def gpu_work(ctx: ServerContext, run: RunSpec, preset: Preset, *, compile_warm: bool | None = None) -> GpuWork:
    """The request as `GpuWork`: the model's own defaults for what the run leaves unset. A just-in-time compile
    is warm when OPTIM_COLD_COMPILE=0 keeps inductor's cache; an ahead-of-time one is counted cold unless the
    caller says it is warm (its package already built for this model and shape)."""
    try:
        ref = ctx.resolve(run.model)
        kind, defaults = ref.kind, ctx.defaults_for(run.model)
    except OptimError:
        kind, defaults = "hub", ModelDefaults()
    mode = preset.optim.compile.mode
    if compile_warm is None:
        compile_warm = mode in ("regional", "full") and not cold_compile()
    return GpuWork(
        model_kind=kind,
        steps=run.steps or defaults.steps,
        width=run.width or defaults.width,
        height=run.height or defaults.height,
        frames=run.num_frames or defaults.num_frames or 1,
        warmup_runs=run.warmup_runs,
        timed_runs=run.timed_runs if isinstance(run.timed_runs, int) else AUTO_TIMED_RUNS,
        extra_calls=1 if isinstance(preset.optim.cache, C.MagCache) else 0,
        compile_mode=mode,
        compile_warm=compile_warm,
    )


def max_duration(environ: Mapping[str, str] | None = None) -> int:
    """OPTIM_ZEROGPU_MAX_DURATION: the longest duration this Space asks ZeroGPU for (seconds, default 120)."""
    env = os.environ if environ is None else environ
    text = env.get(MAX_DURATION_ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_DURATION_S
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"environment variable {MAX_DURATION_ENV}={text!r} must be a whole number of seconds") \
            from None
    if value < MIN_DURATION_S:
        raise ConfigError(f"environment variable {MAX_DURATION_ENV}={text!r} must be at least {MIN_DURATION_S}")
    return value


def what_to_lower(work: GpuWork, bound: int) -> list[str]:
    """The settings that make `work` shorter, the largest saving first, each with what it costs now."""
    hints: list[tuple[float, str]] = []
    per_call = 2 * work.steps * work.step_s
    if work.compile_s:
        state = "warm" if work.compile_warm else "cold"
        hints.append((work.compile_s, f"compile.mode ({work.compile_mode}: ~{work.compile_s:.0f} s {state} compile; "
                                      "off compiles nothing)"))
    fixed = OVERHEAD_S + 2 * LOAD_S[work.size] + work.compile_s
    calls = 2 * work.calls_per_side * work.step_s
    fitting_steps = int((bound / MARGIN - fixed) // calls) if calls else work.steps
    steps_hint = f"at most {fitting_steps} fit with the rest unchanged" if fitting_steps >= 1 else "even 1 is over"
    hints.append((per_call * work.calls_per_side * (1 - 1 / max(work.steps, 1)),
                  f"run.steps ({work.steps}; {steps_hint})"))
    if work.timed_runs > 1:
        hints.append((per_call * (work.timed_runs - 1),
                      f"run.timed_runs ({work.timed_runs} per side; 'auto' counts {AUTO_TIMED_RUNS})"))
    if work.warmup_runs > 1:
        hints.append((per_call * (work.warmup_runs - 1), f"run.warmup_runs ({work.warmup_runs})"))
    if work.step_s > MIN_STEP_S[work.size]:
        size = f"{work.width}x{work.height}" + (f", {work.frames} frames" if work.frames > 1 else "")
        hints.append((per_call * work.calls_per_side / 2, f"run.width x run.height ({size})"))
    return [text for _, text in sorted(hints, key=lambda hint: -hint[0])]


def check_duration(work: GpuWork, bound: int | None = None) -> int:
    """The estimate for `work`, or a ConfigError if it is over the bound: refused before any GPU time (the user's
    quota) is spent, with the estimate, the bound and what to lower."""
    bound = max_duration() if bound is None else bound
    estimate = estimate_gpu_seconds(work)
    if estimate > bound:
        raise ConfigError(
            f"ZeroGPU: this comparison is estimated at {estimate} s of GPU time, over this Space's limit of {bound} s "
            f"({MAX_DURATION_ENV}); it was not started and used none of your GPU quota. Lower "
            + ", or ".join(what_to_lower(work, bound)) + "."
        )
    return estimate


class ZeroGpu:
    """Runs comparisons through `spaces.GPU`, with the engine's errors carried out intact."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        max_duration()  # a bad OPTIM_ZEROGPU_MAX_DURATION stops the server at start, not a visitor's request
        self._on_gpu = ctx.spaces.GPU(duration=self._duration)(self._compare_on_gpu)

    def _duration(self, run: RunSpec, preset: Preset) -> int:
        """What `spaces.GPU` asks ZeroGPU for, from the same arguments as the GPU function: the estimate (a request
        over the bound never gets here: `compare` refuses it first)."""
        return estimate_gpu_seconds(gpu_work(self.ctx, run, preset))

    def _compare_on_gpu(self, run: RunSpec, preset: Preset) -> tuple[str, Any]:
        """Inside ZeroGPU's GPU process. Returns ("ok", comparison) or ("error", (class name, message))."""
        try:
            comparison = compare(run, preset, isolation="inline", allow_local=self.ctx.limits.allow_local_models,
                                 local_roots=self.ctx.limits.local_model_roots)
        except OptimError as error:
            return "error", (type(error).__name__, str(error))
        comparison.environment["isolation_note"] = ISOLATION_NOTE
        return "ok", comparison

    def compare(self, run: RunSpec, preset: Preset, *, progress: Any = None) -> Comparison:
        limits = self.ctx.limits
        # Everything that can fail without a GPU fails here, before any GPU time is spent.
        ref, _ = prepare(run, preset.optim, allow_local=limits.allow_local_models, local_roots=limits.local_model_roots)
        seconds = check_duration(gpu_work(self.ctx, run, preset))  # over the bound: refused, no quota spent
        if ref.kind == "hub":
            if progress is not None:
                progress(None, desc="Downloading the model (outside the GPU time)…")
            download_model(ref)
        if progress is not None:
            progress(None, desc=f"Running on ZeroGPU (up to {seconds} s)…")
        kind, payload = self._on_gpu(run, preset)
        if kind == "error":
            name, message = payload
            cls = getattr(errors, name, None)
            raise (cls if isinstance(cls, type) and issubclass(cls, OptimError) else errors.RunError)(message)
        return payload
