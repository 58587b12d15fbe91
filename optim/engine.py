"""Compare a pipeline with and without a preset's optimizations: the engine's one entry point.

    >>> comparison = compare(RunSpec(), load_preset("first-block-cache"))   # doctest: +SKIP
    >>> comparison.speedup, comparison.quality["psnr_db"]                    # doctest: +SKIP

Data flows one way: `RunSpec` + `Preset` (validated) -> checks before loading (`optim.compat`) -> baseline side
and optimized side, each measured under one protocol (`optim.measure`), each in its own process by default
(`optim.worker`) -> quality metrics -> a `Comparison` of plain data (`to_report()` is report.json).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from optim import capabilities, compat
from optim.config import OptimConfig, RunSpec
from optim.errors import ConfigError
from optim.measure import Progress, SideJob, SideResult, run_side
from optim.metrics import diff_heatmap, image_quality
from optim.models import ModelRef, ResolvedRun, resolve_model, resolve_run
from optim.presets import Preset, make_preset, preset_to_dict
from optim.workcount import work_fractions

ISOLATION_MODES = ("process", "inline")


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
    baseline_reused: bool = False
    elapsed_s: float = 0.0

    @property
    def speedup(self) -> float:
        return self.baseline.median_s / self.optimized.median_s

    def side_report(self, side: SideResult, *, work_fraction: float, work_per_step: list[float]) -> dict[str, Any]:
        return {
            "latency_s": {
                "median": statistics.median(side.latency_s),
                "min": min(side.latency_s),
                "max": max(side.latency_s),
                "runs": side.latency_s,
            },
            "per_step_s": side.per_step_s,
            "peak_memory_mb": side.peak_memory_mb,
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
        }

    def to_report(self) -> dict[str, Any]:
        optimized = self.side_report(
            self.optimized, work_fraction=self.work_fraction, work_per_step=self.work_per_step
        )
        optimized["quantization"] = self.quantized_sizes()
        for key in ("mag_ratios",):
            if key in self.optimized.details:
                optimized[key] = self.optimized.details[key]
        baseline_steps = [1.0] * len(self.baseline.step_work)
        return {
            "schema_version": 1,
            "run": self.run.to_dict(),
            "preset": {**preset_to_dict(self.preset), "optim": self.preset.optim.model_dump(mode="json")},
            "environment": self.environment,
            "baseline": {
                **self.side_report(self.baseline, work_fraction=1.0, work_per_step=baseline_steps),
                "reused": self.baseline_reused,
            },
            "optimized": optimized,
            "speedup": self.speedup,
            "memory_saving_mb": self.baseline.peak_memory_mb - self.optimized.peak_memory_mb,
            "quality": {**self.quality, "heatmap_scale": self.heatmap_scale},
            "elapsed_s": self.elapsed_s,
        }

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
    """Baseline results by run settings, so a server measures the same baseline once (bounded, thread-safe)."""

    def __init__(self, max_entries: int = 16) -> None:
        self._entries: OrderedDict[str, SideResult] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries

    @staticmethod
    def key(model: ModelRef, run: ResolvedRun) -> str:
        data = json.dumps({"model": model.location, "run": run.to_dict()}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()

    def get(self, key: str) -> SideResult | None:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            return None

    def put(self, key: str, result: SideResult) -> None:
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def environment(run: ResolvedRun, isolation: str, side: SideResult) -> dict[str, Any]:
    info = capabilities.device_info()
    return {
        "device": run.device,
        "device_name": side.device_name,
        "python": info.python,
        "torch": info.torch,
        "diffusers": info.diffusers,
        "transformers": info.transformers,
        "cuda_version": info.cuda_version,
        "gpu_memory_gb": info.memory_gb,
        "cpu_count": info.cpu_count,
        "isolation": isolation,
    }


def prepare(
    run_spec: RunSpec, optim: OptimConfig, *, allow_local: bool = True, local_roots: Any = None
) -> tuple[ModelRef, ResolvedRun]:
    """Everything that can fail without loading a model: resolve, fill defaults, check availability and pairs."""
    ref = resolve_model(run_spec.model, allow_local=allow_local, local_roots=local_roots)
    run = resolve_run(run_spec, ref, cuda_available=capabilities.device_info().cuda)
    model = compat.describe_model(ref)
    compat.check(optim, run, model)
    return ref, run


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
) -> Comparison:
    """Measure the baseline and the optimized side under one protocol and compare them.

    `isolation="process"` (default) runs each side in a fresh worker process; `memory_limit_mb` caps what each
    worker may allocate beyond its start (process isolation only)."""
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

    def measure(job: SideJob) -> SideResult:
        if isolation == "process":
            from optim.worker import run_in_subprocess

            return run_in_subprocess(job, side_progress(job.side), should_stop)
        return run_side(job, side_progress(job.side), should_stop)

    key = BaselineCache.key(ref, run)
    baseline = baseline_cache.get(key) if baseline_cache is not None else None
    reused = baseline is not None
    if baseline is None:
        baseline = measure(SideJob("baseline", ref, run, OptimConfig(), memory_limit_mb))
        if baseline_cache is not None:
            baseline_cache.put(key, baseline)
    optimized = measure(SideJob("optimized", ref, run, preset.optim, memory_limit_mb))

    if progress is not None:
        progress("metrics", 0, 1)
    quality = image_quality(baseline.image, optimized.image)
    heatmap, scale = diff_heatmap(baseline.image, optimized.image)
    fraction, per_step = work_fractions(optimized.step_work, baseline.step_work)
    return Comparison(
        run=run,
        preset=preset,
        environment=environment(run, isolation, optimized),
        baseline=baseline,
        optimized=optimized,
        quality=quality,
        heatmap=heatmap,
        heatmap_scale=scale,
        work_fraction=fraction,
        work_per_step=per_step,
        baseline_reused=reused,
        elapsed_s=time.perf_counter() - started,
    )
