"""The measurement protocol, written once, for one side (baseline or optimized).

    load (quantized at load)            -> load_s
    apply attention, cache, offload, VAE
    probe run: eager, work counter on   -> how much transformer work each step computed; the first warm-up
    apply compile (if any)
    remaining warm-up runs              -> warmup_s (the first compiled call includes the cold compile: compile_s)
    reset memory peaks
    timed runs, same seed each          -> latency_s (median, min, max), per_step_s, peak memory
    undo process-wide changes, drop the pipeline

Both sides run exactly this with the same resolved settings; the baseline simply has nothing to apply.
`optim.worker` runs it in a fresh process per side so peaks start clean and nothing leaks between sides.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from optim import config as C
from optim import faults
from optim.apply import apply_after_probe, apply_before_probe
from optim.capabilities import device_name
from optim.errors import Cancelled, OptimError, RunError
from optim.generation import CallResult, call_kwargs, generate
from optim.memory import MemoryProbe
from optim.models import ModelRef, ResolvedRun, load_pipeline, model_components
from optim.techniques import Applied
from optim.techniques.quantization import build_quantization_config, component_sizes_mb
from optim.workcount import WorkCounter

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class SideJob:
    """Everything one side needs; plain data, so it can cross a process boundary."""

    side: str  # "baseline" or "optimized"
    model: ModelRef
    run: ResolvedRun
    optim: C.OptimConfig
    # Worker processes only: the most memory (MB beyond what the process has at start) the side may map.
    memory_limit_mb: int | None = None


@dataclass
class SideResult:
    side: str
    image: np.ndarray
    latency_s: list[float]
    per_step_s: list[float]
    step_work: list[float]
    load_s: float
    warmup_s: list[float]
    compile_s: float | None
    peak_memory_mb: float
    reserved_memory_mb: float | None
    host_peak_memory_mb: float
    component_sizes_mb: dict[str, float]
    applied: list[str]
    warnings: list[str]
    deterministic: bool
    device_name: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.latency_s)


def run_side(job: SideJob, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> SideResult:
    """Measure one side under the protocol. Raises `OptimError` subclasses with user-facing messages."""
    from optim.logs import quiet_progress_bars

    quiet_progress_bars()
    report = progress or (lambda phase, done, total: None)
    run, optim = job.run, job.optim
    phase = "loading"

    def on_step(step: int, label: str) -> None:
        report(label, step + 1, run.steps)
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the user")

    applied = Applied()
    pipe = None
    quant_config = None
    try:
        report("loading", 0, 1)
        started = time.perf_counter()
        if not isinstance(optim.quantization, C.NoQuantization):
            # Built (and its library imported) before the memory baseline: importing torchao or quanto is not
            # memory the model uses.
            quant_config = build_quantization_config(optim.quantization, model_components(job.model))
        memory = MemoryProbe(run.device).start()
        pipe = load_pipeline(job.model, dtype=run.dtype, quantization_config=quant_config)
        if optim.offload.mode == "none":
            pipe.to(run.device)
        load_s = time.perf_counter() - started
        pipe.set_progress_bar_config(disable=True)  # progress goes through `report`, not tqdm on stderr
        weights = [name for name, part in pipe.components.items() if hasattr(part, "parameters")]
        sizes = component_sizes_mb(pipe, weights)

        phase = "applying optimizations"
        mag_ratios = None
        if isinstance(optim.cache, C.MagCache):
            mag_ratios = _mag_ratios(pipe, optim.cache, run, applied, on_step)
        apply_before_probe(pipe, optim, run, applied, mag_ratios=mag_ratios)
        kwargs, call_warnings = call_kwargs(pipe, run)
        for warning in call_warnings:
            applied.warn(warning)

        phase = "warm-up (eager probe)"
        counter = WorkCounter().attach(pipe.transformer)
        try:
            probe = generate(pipe, kwargs, seed=run.seed, device=run.device, on_step=counter_step(counter, on_step))
        finally:
            counter.detach()
        warmup_s = [probe.latency_s]

        phase = "compiling"
        graphs_before = compiled_graph_count()
        apply_after_probe(pipe, optim, applied)
        compiled = optim.compile.mode != "off"
        compile_s = None
        for index in range(run.warmup_runs - 1 + (1 if compiled else 0)):
            phase = "compiling" if compiled and index == 0 else "warm-up"
            result = generate(pipe, kwargs, seed=run.seed, device=run.device, on_step=lambda s, p=phase: on_step(s, p))
            warmup_s.append(result.latency_s)

        if compiled:
            # Proof that torch.compile really produced graphs (dynamo's own counter), not just that it was asked.
            applied.details["compiled_graphs"] = compiled_graph_count() - graphs_before
        phase = "timed runs"
        fault = faults.requested(run.prompt, job.side)
        if fault:
            faults.inject(fault, height=run.height, width=run.width, should_stop=should_stop)
        memory.reset_peaks()
        timed: list[CallResult] = []
        for index in range(run.timed_runs):
            label = f"timed run {index + 1}/{run.timed_runs}"
            timed.append(generate(pipe, kwargs, seed=run.seed, device=run.device, on_step=lambda s, text=label: on_step(s, text)))
        peaks = memory.read()
        latencies = [r.latency_s for r in timed]
        if compiled:
            # The first compiled call = cold compile + one steady call.
            compile_s = max(0.0, warmup_s[1] - statistics.median(latencies))
        per_step = [statistics.median(values) for values in zip(*(r.per_step_s for r in timed))]
        images = [r.image for r in timed]
        deterministic = all(np.array_equal(images[0], other) for other in images[1:])
        if not deterministic:
            applied.warn("the timed runs did not all give the same image with the same seed (non-deterministic kernels)")
        details = dict(applied.details)
        if mag_ratios is not None:
            details["mag_ratios"] = mag_ratios
        details["probe_matches_timed"] = bool(np.array_equal(probe.image, images[-1]))
        return SideResult(
            side=job.side,
            image=images[-1],
            latency_s=latencies,
            per_step_s=per_step,
            step_work=list(counter.per_step),
            load_s=load_s,
            warmup_s=warmup_s,
            compile_s=compile_s,
            peak_memory_mb=peaks["peak_memory_mb"],
            reserved_memory_mb=peaks["reserved_memory_mb"],
            host_peak_memory_mb=peaks["host_peak_memory_mb"],
            component_sizes_mb=sizes,
            applied=list(applied.steps),
            warnings=list(applied.warnings),
            deterministic=deterministic,
            device_name=device_name(run.device),
            details=details,
        )
    except OptimError:
        raise
    except BaseException as error:  # noqa: BLE001 - every failure leaves as a user-facing RunError
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise explain_failure(error, phase=phase, job=job) from None
    finally:
        try:
            applied.undo_all()
        finally:
            del pipe
            gc.collect()
            if run.device == "cuda":
                import torch

                torch.cuda.empty_cache()


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (its `unique_graphs` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def counter_step(counter: WorkCounter, on_step: Callable[[int, str], None]) -> Callable[[int], None]:
    def step(index: int) -> None:
        counter.mark_step()
        on_step(index, "warm-up")

    return step


def _mag_ratios(pipe: Any, cache: C.MagCache, run: ResolvedRun, applied: Applied, on_step: Callable[[int, str], None]) -> list[float]:
    from optim.techniques.cache import calibrate_mag_ratios, flux_mag_ratios

    if cache.mag_ratios == "flux":
        applied.add("MagCache ratios: FLUX.1 (shipped with diffusers)")
        return flux_mag_ratios()
    if cache.mag_ratios == "calibrate":
        kwargs, _ = call_kwargs(pipe, run)
        ratios = calibrate_mag_ratios(
            pipe, steps=run.steps, run=lambda: generate(pipe, kwargs, seed=run.seed, device=run.device, on_step=lambda s: on_step(s, "calibrating MagCache"))
        )
        applied.add(f"MagCache ratios: calibrated on this model ({len(ratios)} steps, untimed run)")
        return ratios
    return list(cache.mag_ratios)


def explain_failure(error: BaseException, *, phase: str, job: SideJob) -> RunError:
    """Turn an unexpected exception into a message that says what failed, with which settings, what to try."""
    text = str(error).strip().splitlines()[0][:400] if str(error).strip() else type(error).__name__
    settings = C.minimal_dict(job.optim) or "no optimizations"
    where = f"{job.side} side, while {phase}, settings {settings}"
    lowered = text.lower()
    if (
        isinstance(error, MemoryError)
        or "out of memory" in lowered
        or "can't allocate memory" in lowered
        or type(error).__name__ == "OutOfMemoryError"
    ):
        hint = "lower the size or steps, quantize, or offload (model_cpu or group) to fit in memory"
        return RunError(f"out of memory ({where}): {text}. Try: {hint}")
    if phase == "compiling" or "dynamo" in type(error).__module__ or "inductor" in type(error).__module__:
        return RunError(
            f"torch.compile failed ({where}): {text}. Try compile mode 'regional', fullgraph off, or compile off"
        )
    if "scaled_dot_product_attention" in lowered or "attention" in lowered and job.optim.attention.backend != "native":
        return RunError(
            f"attention backend {job.optim.attention.backend!r} failed at run time ({where}): {text}. "
            "Try 'native' or another backend listed as available"
        )
    families = list(C.minimal_dict(job.optim))
    if families:
        hint = f"Try turning off {', '.join(families)} one at a time to find which setting fails"
    else:
        hint = "The model itself failed with these run settings: try another size, step count or dtype"
    return RunError(f"{type(error).__name__} ({where}): {text}. {hint}")
