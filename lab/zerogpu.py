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
* Just-in-time torch.compile is not supported there (`optim.capabilities` marks it unavailable).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from optim import config as C
from optim import errors
from optim.config import RunSpec
from optim.engine import Comparison, compare, prepare
from optim.errors import OptimError
from optim.models import ModelDefaults, download_model
from optim.presets import Preset

if TYPE_CHECKING:  # a type only: lab.context imports this module when it makes its GPU runner
    from lab.context import ServerContext

ISOLATION_NOTE = ("ZeroGPU: both sides ran one after the other in ZeroGPU's GPU process, which is reused between "
                  "calls; every change a side makes is undone before the next")


def estimate_gpu_seconds(ctx: ServerContext, run: RunSpec, preset: Preset) -> int:
    """A ZeroGPU duration that fits the request: loading both sides plus every pipeline call, with margin."""
    try:
        defaults = ctx.defaults_for(run.model)
    except OptimError:
        defaults = ModelDefaults()
    steps = run.steps or defaults.steps
    frames = run.num_frames or defaults.num_frames or 1  # a video's transformer work grows with its frames
    megapixels = (run.width or defaults.width) * (run.height or defaults.height) * frames / 1024**2
    timed = run.timed_runs if isinstance(run.timed_runs, int) else 6  # auto runs block-wise, 6 per side, there
    calls_per_side = run.warmup_runs + timed + (1 if isinstance(preset.optim.cache, C.MagCache) else 0)
    seconds_per_step = 0.4 * max(megapixels, 0.25)  # FLUX.1-dev bf16 on an H200: ~0.3 s per 1024² step
    estimate = 30 + 2 * 25 + 2 * calls_per_side * steps * seconds_per_step
    ceiling = int(os.environ.get("OPTIM_ZEROGPU_MAX_DURATION", "300"))
    return int(min(ceiling, max(60, estimate * 1.3)))


class ZeroGpu:
    """Runs comparisons through `spaces.GPU`, with the engine's errors carried out intact."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self._on_gpu = ctx.spaces.GPU(duration=self._duration)(self._compare_on_gpu)

    def _duration(self, run: RunSpec, preset: Preset) -> int:
        return estimate_gpu_seconds(self.ctx, run, preset)

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
        if ref.kind == "hub":
            if progress is not None:
                progress(None, desc="Downloading the model (outside the GPU time)…")
            download_model(ref)
        if progress is not None:
            progress(None, desc=f"Running on ZeroGPU (up to {estimate_gpu_seconds(self.ctx, run, preset)} s)…")
        kind, payload = self._on_gpu(run, preset)
        if kind == "error":
            name, message = payload
            cls = getattr(errors, name, None)
            raise (cls if isinstance(cls, type) and issubclass(cls, OptimError) else errors.RunError)(message)
        return payload
