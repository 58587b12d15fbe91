"""Compare a pipeline with and without a preset's optimizations: the engine's one entry point.

    >>> comparison = compare(RunSpec(), load_preset("first-block-cache"))   # doctest: +SKIP
    >>> comparison.speedup, comparison.speedup_interval.verdict              # doctest: +SKIP
    (1.21, 'faster')

Data flows one way: `RunSpec` + `Preset` (validated) -> checks before loading (`optim.compat`) -> both sides
prepared (loaded, optimized, probed, warmed up), each in its own process by default (`optim.worker`) -> timed
runs taken in turns, baseline and optimized, in a balanced order (A B B A ...) so that whatever else the machine
does hits both sides alike -> a speedup with its 95% confidence interval and a verdict (`optim.stats`), the
machine's load during each run (`optim.machine`) -> quality metrics -> a `Comparison` of plain data
(`to_report()` is report.json).

When both sides cannot be loaded at once (memory, or inline isolation where they would share process-wide
settings), the runs are taken in blocks instead, baseline - optimized - baseline, and the report says
`timing.mode: "sequential"` with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from optim import capabilities, compat
from optim.config import OptimConfig, RunSpec
from optim.errors import Cancelled, ConfigError, OptimError
from optim.measure import Final, Progress, Setup, Side, SideJob, SideResult, Timing
from optim.metrics import diff_heatmap, image_quality
from optim.models import ModelRef, ResolvedRun, resolve_model, resolve_run
from optim.presets import Preset, make_preset, preset_to_dict
from optim.report_model import REPORT_SCHEMA_VERSION, Interval, Report, TimingReport
from optim.techniques.cache_dit import cache_dit_report
from optim.timing import SEQUENTIAL_AUTO_RUNS, Plan, Turns, run_time, summarize, take_turns
from optim.workcount import work_fractions

ISOLATION_MODES = ("process", "inline")
log = logging.getLogger(__name__)
# Memory a second side needs beyond the first one's peak: allocator slack, a CUDA context.
FIT_MARGIN = 1.10
FIT_EXTRA_MB = {"cuda": 1024.0, "cpu": 256.0}


class SideHandle(Protocol):
    """A prepared side that can be timed on demand: `optim.measure.Side` in this process, or
    `optim.worker.RemoteSide` in its own."""

    def prepare(self) -> Setup: ...
    def timed(self, label: str = ..., item: int = ...) -> Timing: ...
    def footprint(self) -> tuple[float, float, float | None]: ...
    def finish(self) -> Final: ...
    def close(self) -> None: ...


@dataclass
class Comparison:
    """Both sides, measured, with everything derived from them. Plain data; `to_report()` is report.json."""

    run: ResolvedRun
    preset: Preset
    environment: dict[str, Any]
    baseline: SideResult
    optimized: SideResult
    quality: dict[str, Any]
    heatmap: np.ndarray
    heatmap_scale: int
    work_fraction: float
    work_per_step: list[float]
    timing: TimingReport  # report.json's timing section, built by optim.timing.summarize
    baseline_reused: bool = False
    elapsed_s: float = 0.0
    planned: dict[str, dict[str, Any]] | None = None  # on CUDA: each side's planned peak beside its measured one

    @property
    def speedup_interval(self) -> Interval:
        return self.timing.speedup

    @property
    def speedup(self) -> float:
        """Baseline time over optimized time: the geometric mean of the paired ratios (see `optim.stats`)."""
        return self.timing.speedup.estimate

    def side_report(self, side: SideResult, *, work_fraction: float, work_per_step: list[float]) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, Any]:
            return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}

        return {
            "latency_s": stats(side.latency_s),
            # The time the ratio is taken from (`timing.estimator`): wall time, or wall time less run-queue wait.
            "time_s": stats([run_time(t, self.timing.estimator.name) for t in side.timings]),
            "per_step_s": side.per_step_s,
            "peak_memory_mb": side.peak_memory_mb,
            "peak_memory_runs_mb": [t.peak_memory_mb for t in side.timings],
            "reserved_memory_mb": side.reserved_memory_mb,
            "host_peak_memory_mb": side.host_peak_memory_mb,
            "load_s": side.load_s,
            "warmup_s": sum(side.warmup_s),
            "warmup_runs_s": side.warmup_s,
            "compile_s": side.compile_s,
            "compile_cold": side.details.get("compile_cold"),
            "compiled_graphs": side.details.get("compiled_graphs"),
            "work_fraction": work_fraction,
            "work_per_step": work_per_step,
            "component_sizes_mb": side.component_sizes_mb,
            "applied": side.applied,
            "warnings": side.warnings,
            "deterministic": side.deterministic,
            "runs": [{"latency_s": t.latency_s, "time_s": run_time(t, self.timing.estimator.name),
                      "peak_memory_mb": t.peak_memory_mb, **t.load.to_dict()} for t in side.timings],
            **({"planned": self.planned[side.side]} if self.planned else {}),
        }

    def to_report(self) -> dict[str, Any]:
        optimized = self.side_report(
            self.optimized, work_fraction=self.work_fraction, work_per_step=self.work_per_step
        )
        optimized["quantization"] = self.quantized_sizes()
        for key in ("mag_ratios", "aot"):  # (aot: compile mode 'aot', each package built or loaded)
            if key in self.optimized.details:
                optimized[key] = self.optimized.details[key]
        if self.optimized.details.get("cache_dit"):
            optimized["cache_dit"] = cache_dit_report(self.optimized.details["cache_dit"], self.work_per_step)
        baseline_steps = [1.0] * len(self.baseline.step_work)
        speedup = self.timing.speedup
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "run": self.run.to_dict(),
            "preset": {**preset_to_dict(self.preset), "optim": self.preset.optim.model_dump(mode="json")},
            "environment": self.environment,
            "baseline": {
                **self.side_report(self.baseline, work_fraction=1.0, work_per_step=baseline_steps),
                "reused": self.baseline_reused,
            },
            "optimized": optimized,
            "speedup": speedup.estimate,
            "speedup_interval": [speedup.low, speedup.high],
            "verdict": speedup.verdict,
            "timing": self.timing.model_dump(mode="json"),
            # One figure for the saving everywhere: the interval's estimate (`timing.memory_saving_mb`).
            "memory_saving_mb": self.timing.memory_saving_mb.estimate,
            "quality": {**self.quality, "heatmap_scale": self.heatmap_scale},
            "elapsed_s": self.elapsed_s,
            **({"video": self.video_info()} if self.is_video else {}),
        }

    @property
    def is_video(self) -> bool:
        """The sides made videos (frames F x H x W x 3), not images."""
        return self.baseline.image.ndim == 4

    @property
    def fps(self) -> float:
        """The frame rate the videos are written at: the run's, else the model's, else `optim.video.DEFAULT_FPS`."""
        from optim.video import DEFAULT_FPS

        return float(getattr(self.run, "fps", None) or DEFAULT_FPS)

    def video_info(self) -> dict[str, Any]:
        frames, height, width = self.baseline.image.shape[:3]
        return {"frames": int(frames), "fps": self.fps, "width": int(width), "height": int(height),
                "duration_s": frames / self.fps}

    def preview_images(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(baseline, optimized, heatmap) as single images: the images themselves, or for videos every frame in a
        lossless contact sheet (`optim.video.frame_sheet`), for outputs that show one picture."""
        if not self.is_video:
            return self.baseline.image, self.optimized.image, self.heatmap
        from optim.video import frame_sheet

        return frame_sheet(self.baseline.image), frame_sheet(self.optimized.image), frame_sheet(self.heatmap)

    @classmethod
    def from_sides(cls, run: ResolvedRun, preset: Preset, baseline: SideResult, optimized: SideResult, *,
                   environment: dict[str, Any], timing: TimingReport | None = None, baseline_reused: bool = False,
                   started: float | None = None) -> Comparison:
        """Everything derived from two measured sides: quality, the heatmap, the work fraction and (when not
        given) the timing summary of their runs taken as two independent blocks."""
        if timing is None:
            turns = Turns(baseline=list(baseline.timings), optimized=list(optimized.timings),
                          timed_s=sum(baseline.latency_s) + sum(optimized.latency_s),
                          stopped_because="measured separately")
            timing = summarize("sequential", "the two sides were measured separately", run, turns,
                               order="one side, then the other", sequence="")
        if baseline.image.shape != optimized.image.shape:
            from optim.errors import RunError

            raise RunError(f"the two sides made outputs of different shapes ({baseline.image.shape} and "
                              f"{optimized.image.shape}): they cannot be compared")
        # Images (H, W, 3) or videos (F, H, W, 3): videos are compared frame by frame (`optim.metrics`).
        quality = image_quality(baseline.image, optimized.image)
        heatmap, scale = diff_heatmap(baseline.image, optimized.image)
        fraction, per_step = work_fractions(optimized.step_work, baseline.step_work)
        from optim.plan.check import planned_sides

        planned = planned_sides(run, preset.optim, environment.get("gpu_memory_gb"),
                                {name: (side.peak_memory_mb, side.reserved_memory_mb)
                                 for name, side in (("baseline", baseline), ("optimized", optimized))})
        return cls(run=run, preset=preset, environment=environment, baseline=baseline, optimized=optimized,
                   quality=quality, heatmap=heatmap, heatmap_scale=scale, work_fraction=fraction,
                   work_per_step=per_step, timing=timing, baseline_reused=baseline_reused,
                   elapsed_s=time.perf_counter() - started if started is not None else 0.0, planned=planned)

    def report(self) -> Report:
        """report.json as typed data (`optim.report_model.Report`)."""
        return Report.model_validate(self.to_report())

    def quantized_sizes(self) -> dict[str, dict[str, float | None]]:
        """Each quantized component's size before (baseline) and after (optimized), from the weights."""
        quant = self.preset.optim.quantization
        components = getattr(quant, "components", ())
        return {
            name: {
                "before_mb": self.baseline.component_sizes_mb.get(name),
                "after_mb": self.optimized.component_sizes_mb.get(name),
            }
            for name in components
        }


class BaselineCache:
    """Warm baselines a server keeps between comparisons: the side's process stays loaded (probe and warm-up
    done), so the next comparison with the same model and run settings skips its load, and times it again, in
    turns with the new side. A ratio is never taken against runs made at another time. Holds at most
    `max_entries` (each is a loaded pipeline); thread-safe; `clear()` closes them."""

    def __init__(self, max_entries: int = 1) -> None:
        self._entries: OrderedDict[str, tuple[SideHandle, Setup]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    @staticmethod
    def key(model: ModelRef, run: ResolvedRun) -> str:
        data = json.dumps({"model": model.location, "run": run.to_dict()}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()

    def take(self, key: str) -> tuple[SideHandle, Setup] | None:
        """The warm baseline for `key`, removed from the cache while a comparison uses it."""
        with self._lock:
            return self._entries.pop(key, None)

    def put(self, key: str, side: SideHandle, setup: Setup) -> None:
        evicted = []
        with self._lock:
            self._entries[key] = (side, setup)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                evicted.append(self._entries.popitem(last=False)[1][0])
        for old in evicted:
            old.close()

    def clear(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for side, _ in entries:
            side.close()

    def __len__(self) -> int:
        return len(self._entries)


def environment(run: ResolvedRun, isolation: str, setup: Setup) -> dict[str, Any]:
    info = capabilities.device_info()
    return {
        "device": run.device,
        "device_name": setup.device_name,
        "python": info.python,
        "torch": info.torch,
        "diffusers": info.diffusers,
        "transformers": info.transformers,
        "cuda_version": info.cuda_version,
        "gpu_memory_gb": info.memory_gb,
        "cpu_count": info.cpu_count,
        "isolation": isolation,
        "threads": setup.threads,
    }


def prepare(
    run_spec: RunSpec, optim: OptimConfig, *, allow_local: bool = True, local_roots: Any = None
) -> tuple[ModelRef, ResolvedRun]:
    """Everything that can fail without loading a model: resolve, fill defaults, check availability and pairs."""
    ref = resolve_model(run_spec.model, allow_local=allow_local, local_roots=local_roots)
    run = resolve_run(run_spec, ref, cuda_available=capabilities.device_info().cuda)
    model = compat.describe_model(ref)
    try:
        compat.check(optim, run, model)
    except ConfigError:
        raise
    except OptimError as error:
        log.info("refused before loading: %s", error)
        raise
    return ref, run


def fits_together(setup: Setup, free_mb: float | None, device: str) -> tuple[bool, str]:
    """Whether a second side fits beside a prepared one: memory still free against the first side's peak (the
    same model; most optimizations need less, a few more) with a margin."""
    need = setup.setup_peak_mb * FIT_MARGIN + FIT_EXTRA_MB.get(device, 256.0)
    where = "GPU memory" if device == "cuda" else "RAM"
    if free_mb is None:
        return True, f"free {where} unknown"
    text = (f"{free_mb:,.0f} MB of {where} free with the baseline loaded; the optimized side needs about "
            f"{need:,.0f} MB (the baseline's peak {setup.setup_peak_mb:,.0f} MB x {FIT_MARGIN} + "
            f"{FIT_EXTRA_MB.get(device, 256.0):.0f} MB)")
    return free_mb >= need, text


def compare(
    run_spec: RunSpec,
    preset: Preset | OptimConfig,
    *,
    isolation: str = "process",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    baseline_cache: BaselineCache | None = None,
    allow_local: bool = True,
    local_roots: Any = None,
    memory_limit_mb: int | None = None,
    max_runs: int | None = None,
) -> Comparison:
    """Measure the baseline and the optimized side under one protocol and compare them.

    `isolation="process"` (default) runs each side in its own worker process, both loaded at once and timed in
    turns; "inline" runs them in this process, one after the other. `memory_limit_mb` caps what each worker may
    allocate beyond its start (process isolation only). `baseline_cache` keeps the baseline's process warm for
    the next comparison with the same settings. `max_runs` caps "auto" runs per side."""
    if isolation not in ISOLATION_MODES:
        raise ConfigError(f"isolation {isolation!r} is not one of {', '.join(ISOLATION_MODES)}")
    if memory_limit_mb is not None and isolation != "process":
        raise ConfigError("a memory limit needs isolation 'process' (it would limit this whole process)")
    if isinstance(preset, OptimConfig):
        preset = make_preset("custom", preset, description="settings chosen by hand")
    started = time.perf_counter()
    ref, run = prepare(run_spec, preset.optim, allow_local=allow_local, local_roots=local_roots)

    def side_progress(side: str) -> Progress:
        def report(phase: str, done: int, total: int) -> None:
            if progress is not None:
                progress(f"{side}: {phase}", done, total)

        return report

    def open_side(job: SideJob) -> SideHandle:
        if isolation == "process":
            from optim.worker import RemoteSide

            return RemoteSide(job, side_progress(job.side), should_stop)
        return Side(job, side_progress(job.side), should_stop)

    baseline_job = SideJob("baseline", ref, run, OptimConfig(), memory_limit_mb)
    optimized_job = SideJob("optimized", ref, run, preset.optim, memory_limit_mb)
    turns = Turns()
    key = BaselineCache.key(ref, run)
    warm = baseline_cache.take(key) if (baseline_cache is not None and isolation == "process") else None
    reused = warm is not None
    if baseline_cache is not None:
        log.info("baseline %s: %s", key[:12], "kept warm from an earlier comparison" if reused else "loading")
    handles: list[SideHandle] = []
    keep_baseline = False
    try:
        if warm is not None:
            baseline, baseline_setup = warm
            handles.append(baseline)
            free = baseline.footprint()[2]
            # Idle since its last comparison (its caches cold, maybe paged out): one untimed run first, as a
            # freshly prepared side has its warm-up just before its first timed run.
            baseline.timed("warm-up (kept warm since the last comparison)")
        else:
            baseline = open_side(baseline_job)
            handles.append(baseline)
            baseline_setup = baseline.prepare()
            free = baseline_setup.free_mb
        if isolation == "inline":
            mode, reason = "sequential", ("inline isolation: both sides share this process, so they cannot be "
                                          "loaded at once without one's process-wide settings reaching the other")
        elif run.timing == "sequential":
            mode, reason = "sequential", "asked for (timing: sequential)"
        else:
            fits, why = fits_together(baseline_setup, free, run.device)
            if fits or run.timing == "interleaved":
                mode, reason = "interleaved", None if fits else f"asked for although it may not fit: {why}"
            else:
                mode, reason = "sequential", f"both sides do not fit at once: {why}"
        log.info("timing %s%s", mode, f" ({reason})" if reason else "")

        if mode == "interleaved":
            optimized = open_side(optimized_job)
            handles.append(optimized)
            try:
                optimized_setup = optimized.prepare()
            except Cancelled:
                raise  # the user stopped the comparison: both sides' processes are gone
            except OptimError:
                # The optimized side could not load or apply: the baseline did nothing wrong and stays warm for
                # the next comparison (a GPU check goes on to its next case without reloading it), if it is alive.
                keep_baseline = baseline_cache is not None and _alive(baseline)
                raise
            turns = take_turns(baseline, optimized, Plan.for_run(run, max_runs=max_runs), device=run.device)
            baseline_final, optimized_final = baseline.finish(), optimized.finish()
            keep_baseline = baseline_cache is not None
        else:
            baseline_setup, optimized_setup, baseline_final, optimized_final, sequence = _sequential(
                baseline, baseline_setup, open_side, baseline_job, optimized_job, run, turns, handles, max_runs)
    finally:
        for handle in handles:
            if keep_baseline and handle is baseline:
                continue
            handle.close()
        if keep_baseline:
            baseline_cache.put(key, baseline, baseline_setup)

    reuse = ("the baseline's process was kept loaded from an earlier comparison with the same settings: its load, "
             "probe and warm-up were reused; its timed runs were taken now, "
             "in turns with this side") if reused else None
    if progress is not None:
        progress("metrics", 0, 1)
    return Comparison.from_sides(
        run, preset,
        SideResult.build("baseline", baseline_setup, turns.baseline, baseline_final),
        SideResult.build("optimized", optimized_setup, turns.optimized, optimized_final),
        environment=environment(run, isolation, optimized_setup),
        timing=summarize(mode, reason, run, turns, reuse=reuse,
                         sequence=None if mode == "interleaved" else sequence),
        baseline_reused=reused, started=started,
    )


def _alive(side: SideHandle) -> bool:
    """A side still able to run: a worker process that has not ended or been cancelled (an in-process side is)."""
    return getattr(side, "status", None) is None and not getattr(side, "cancelled", False)


def _sequential(baseline: SideHandle, baseline_setup: Setup, open_side: Callable[[SideJob], SideHandle],
                baseline_job: SideJob, optimized_job: SideJob, run: ResolvedRun, runs: Turns,
                handles: list[SideHandle], max_runs: int | None) -> tuple[Setup, Setup, Final, Final, str]:
    """Blocks, one side loaded at a time: baseline, optimized, then the baseline again (reloaded), so a drift of
    the machine over the comparison shows up on both sides of the optimized block. Returns the sides' setups
    and finals and the sequence run ('BBB OOOOOO BBB')."""
    total = run.timed_runs if isinstance(run.timed_runs, int) else min(SEQUENTIAL_AUTO_RUNS, max_runs or 50)
    first = max(1, (total + 1) // 2) if total > 1 else 1

    def block(handle: SideHandle, into: list[Timing], numbers: range) -> None:
        for index in numbers:
            timing = handle.timed(f"timed run {index + 1}/{total}")
            into.append(timing)
            runs.timed_s += timing.latency_s

    block(baseline, runs.baseline, range(first))
    baseline_final = baseline.finish()
    baseline.close()
    handles.remove(baseline)
    optimized = open_side(optimized_job)
    handles.append(optimized)
    optimized_setup = optimized.prepare()
    block(optimized, runs.optimized, range(total))
    optimized_final = optimized.finish()
    optimized.close()
    handles.remove(optimized)
    if total - first > 0:
        again = open_side(baseline_job)
        handles.append(again)
        again.prepare()
        block(again, runs.baseline, range(first, total))
        second = again.finish()
        same = bool(np.array_equal(baseline_final.image, second.image))
        baseline_final = Final(image=second.image, deterministic=baseline_final.deterministic and second.deterministic
                               and same, probe_matches_timed=second.probe_matches_timed)
    runs.stopped_because = f"{total} run{'s' if total != 1 else ''} per side" + (
        " (auto: a fixed count when sequential)" if run.timed_runs == "auto" else "")
    sequence = " ".join(part for part in ("B" * first, "O" * total, "B" * (total - first)) if part)
    return baseline_setup, optimized_setup, baseline_final, optimized_final, sequence

