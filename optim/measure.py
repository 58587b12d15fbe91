"""The measurement protocol, written once, for one side (baseline or optimized), as a `Side` that stays loaded
so the parent can time the two sides in turns (`optim.engine`):

    prepare():  load (quantized at load)            -> load_s
                apply attention, cache, offload, VAE
                probe run: eager, work counter on   -> transformer work per step; the first warm-up
                apply compile (if any)
                remaining warm-up runs              -> warmup_s (the first compiled call includes the cold compile)
    timed():    one timed run, same seed each time  -> latency, per-step times, this run's peak memory, and what
                                                       the machine was doing meanwhile (`optim.machine`)
    finish():   the image, whether every timed run gave the same one
    close():    undo process-wide changes, drop the pipeline

Both sides run exactly this with the same resolved settings; the baseline simply has nothing to apply.
`optim.worker` runs each side in its own process so peaks start clean and nothing leaks between sides.
"""

from __future__ import annotations

import gc
import hashlib
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from optim import config as C
from optim import faults
from optim.apply import apply_after_probe, apply_before_probe
from optim.capabilities import device_name
from optim.errors import Cancelled, OptimError, RunError
from optim.generation import call_kwargs, generate
from optim.machine import Load, LoadMeter, thread_settings
from optim.memory import MemoryProbe, freeze_heap, thaw_heap
from optim.models import ModelRef, ResolvedRun, load_pipeline, model_components
from optim.techniques import Applied
from optim.techniques.cache_dit import cache_dit_stats
from optim.techniques.quantization import apply_layerwise_casting, build_quantization_config, component_sizes_mb
from optim.workcount import WorkCounter

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class Item:
    """One prompt and seed a side is run on (a comparison has one; a sweep has a prompt set)."""

    prompt: str
    seed: int


@dataclass(frozen=True)
class SideJob:
    """Everything one side needs; plain data, so it can cross a process boundary."""

    side: str  # "baseline" or "optimized"
    model: ModelRef
    run: ResolvedRun
    optim: C.OptimConfig
    # Worker processes only: the most memory (MB beyond what the process has at start) the side may map.
    memory_limit_mb: int | None = None
    # The prompts and seeds to run (a sweep's prompt set); empty: the run's own prompt and seed.
    items: tuple[Item, ...] = ()


@dataclass(frozen=True)
class Setup:
    """A side after loading, applying, the probe run and the warm-ups: ready for timed runs."""

    load_s: float
    warmup_s: list[float]
    step_work: list[float]
    component_sizes_mb: dict[str, float]
    applied: list[str]
    warnings: list[str]
    details: dict[str, Any]
    resident_mb: float  # memory this side holds now: GPU reserved on CUDA, RSS growth since loading on CPU
    setup_peak_mb: float  # the most it held while loading and warming up (same measure)
    free_mb: float | None  # memory still free for another side (GPU on CUDA, RAM on CPU)
    device_name: str
    threads: dict[str, Any]


@dataclass(frozen=True)
class Timing:
    """One timed run."""

    latency_s: float
    per_step_s: list[float]
    peak_memory_mb: float  # GPU allocated on CUDA; process RSS growth on CPU (since before loading)
    reserved_memory_mb: float | None
    host_peak_memory_mb: float
    load: Load
    image_digest: str


@dataclass(frozen=True)
class Final:
    image: np.ndarray
    deterministic: bool
    probe_matches_timed: bool


@dataclass
class SideResult:
    """One side, measured: its setup, its timed runs (in the order they ran) and its image."""

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
    timings: list[Timing] = field(default_factory=list)
    setup: Setup | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.latency_s)

    @classmethod
    def build(cls, side: str, setup: Setup, timings: list[Timing], final: Final) -> SideResult:
        latencies = [t.latency_s for t in timings]
        compiled = "compiled_graphs" in setup.details
        compile_s = max(0.0, setup.warmup_s[1] - statistics.median(latencies)) if compiled else None
        warnings = list(setup.warnings)
        if not final.deterministic:
            warnings.append("the timed runs did not all give the same image with the same seed (non-deterministic "
                            "kernels)")
        reserved = [t.reserved_memory_mb for t in timings if t.reserved_memory_mb is not None]
        return cls(
            side=side,
            image=final.image,
            latency_s=latencies,
            per_step_s=[statistics.median(values) for values in zip(*(t.per_step_s for t in timings))],
            step_work=setup.step_work,
            load_s=setup.load_s,
            warmup_s=setup.warmup_s,
            compile_s=compile_s,
            peak_memory_mb=max(t.peak_memory_mb for t in timings),
            reserved_memory_mb=max(reserved) if reserved else None,
            host_peak_memory_mb=max(t.host_peak_memory_mb for t in timings),
            component_sizes_mb=setup.component_sizes_mb,
            applied=setup.applied,
            warnings=warnings,
            deterministic=final.deterministic,
            device_name=setup.device_name,
            details={**setup.details, "probe_matches_timed": final.probe_matches_timed},
            timings=timings,
            setup=setup,
        )


@dataclass(frozen=True)
class Probe:
    """The eager, counted run of one item under one configuration: its image and transformer work per step."""

    image: np.ndarray
    step_work: list[float]
    latency_s: float


def swappable(current: C.OptimConfig, new: C.OptimConfig) -> bool:
    """Whether a loaded side configured as `current` can be reconfigured as `new` without reloading: what is
    fixed at load or cannot be undone (quantization, offload, compile) must be the same, and compile off."""
    return (current.quantization == new.quantization and current.offload == new.offload
            and current.compile.mode == "off" and new.compile.mode == "off")


class Side:
    """One side of a comparison, kept loaded between timed runs. Every method raises `OptimError`s with
    user-facing messages; `close()` must be called (it undoes what was applied and drops the pipeline).

    A sweep also runs a side on several items (prompt, seed) and may `reconfigure` it: the attention backend,
    cache and VAE options change in place, with everything before undone (see `swappable`)."""

    def __init__(self, job: SideJob, progress: Progress | None = None,
                 should_stop: Callable[[], bool] | None = None) -> None:
        self.job = job
        self.optim = job.optim
        self.report = progress or (lambda phase, done, total: None)
        self.should_stop = should_stop
        self.phase = "loading"
        self.applied = Applied()
        self.pipe: Any = None
        self.items: list[Item] = list(job.items) or [Item(job.run.prompt, job.run.seed)]
        self.item_kwargs: list[dict[str, Any]] = []
        self.memory: MemoryProbe | None = None
        self.probes: list[Probe] = []
        self._first_image: dict[int, np.ndarray] = {}
        self._last_image: dict[int, np.ndarray] = {}
        self._deterministic = True
        self._timed = 0
        self._mag_ratios: dict[int, list[float]] = {}
        self._sizes: dict[str, float] = {}
        self._load_s = 0.0

    def _on_step(self, step: int, label: str) -> None:
        self.report(label, step + 1, self.job.run.steps)
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled by the user")

    def _failure(self, error: BaseException) -> BaseException:
        if isinstance(error, (OptimError, KeyboardInterrupt, SystemExit)):
            return error
        return explain_failure(error, phase=self.phase, job=replace(self.job, optim=self.optim))

    def _guarded(self, action: Callable[[], Any]) -> Any:
        from optim.logs import quiet_progress_bars

        quiet_progress_bars()
        try:
            return action()
        except BaseException as error:  # noqa: BLE001 - every failure leaves as a user-facing error
            raise self._failure(error) from None

    def prepare(self) -> Setup:
        """Load, apply the job's optimizations, probe every item (eager, work counted), compile, warm up."""
        return self._guarded(self._prepare)

    def _prepare(self) -> Setup:
        run, optim = self.job.run, self.optim
        self.report("loading", 0, 1)
        started = time.perf_counter()
        quant_config = None
        if not isinstance(optim.quantization, C.NoQuantization):
            # Built (and its library imported) before the memory baseline: importing torchao or quanto is not
            # memory the model uses.
            quant_config = build_quantization_config(optim.quantization, model_components(self.job.model))
        self.memory = MemoryProbe(run.device).start()
        self.pipe = pipe = load_pipeline(self.job.model, dtype=run.dtype, quantization_config=quant_config,
                                         quantization=optim.quantization, device=run.device,
                                         offload=optim.offload.mode != "none")
        if optim.offload.mode == "none":
            pipe.to(run.device)
        apply_layerwise_casting(pipe, optim.quantization, compute_dtype=run.dtype)
        self._load_s = time.perf_counter() - started
        pipe.set_progress_bar_config(disable=True)  # progress goes through `report`, not tqdm on stderr
        weights = [name for name, part in pipe.components.items() if hasattr(part, "parameters")]
        self._sizes = component_sizes_mb(pipe, weights)
        warmup_s = self._configure(optim)

        self.phase = "compiling"
        graphs_before = compiled_graph_count()
        apply_after_probe(pipe, optim, self.applied)
        compiled = optim.compile.mode != "off"
        for index in range(run.warmup_runs - 1 + (1 if compiled else 0)):
            self.phase = "compiling" if compiled and index == 0 else "warm-up"
            result = generate(pipe, self.item_kwargs[0], seed=self.items[0].seed, device=run.device,
                              on_step=lambda s, p=self.phase: self._on_step(s, p))
            warmup_s.append(result.latency_s)
        if compiled:
            # Proof that torch.compile really produced graphs (dynamo's own counter), not just that it was asked.
            self.applied.details["compiled_graphs"] = compiled_graph_count() - graphs_before
        self.phase = "timed runs"
        return self._setup(warmup_s)

    def _configure(self, optim: C.OptimConfig) -> list[float]:
        """Apply everything but compile, then probe each item (the first warm-up). Returns the probes' times."""
        run, pipe = self.job.run, self.pipe
        self.phase = "applying optimizations"
        self.optim = optim
        applied = self.applied
        mag_ratios = None
        if isinstance(optim.cache, C.MagCache):
            if optim.cache.mag_ratios == "calibrate" and run.steps in self._mag_ratios:
                mag_ratios = self._mag_ratios[run.steps]
                applied.add(f"MagCache ratios: calibrated on this model ({len(mag_ratios)} steps, untimed run)")
            else:
                mag_ratios = _mag_ratios(pipe, optim.cache, run, applied, self._on_step)
                if optim.cache.mag_ratios == "calibrate":
                    self._mag_ratios[run.steps] = mag_ratios
            applied.details["mag_ratios"] = mag_ratios
        apply_before_probe(pipe, optim, run, applied, mag_ratios=mag_ratios)
        self.item_kwargs = []
        for item in self.items:
            kwargs, call_warnings = call_kwargs(pipe, replace(run, prompt=item.prompt, seed=item.seed))
            self.item_kwargs.append(kwargs)
            for warning in call_warnings:
                applied.warn(warning)

        self.phase = "warm-up (eager probe)"
        self.probes = []
        counter = WorkCounter().attach(pipe.transformer)
        try:
            for item, kwargs in zip(self.items, self.item_kwargs):
                counter.reset()
                result = generate(pipe, kwargs, seed=item.seed, device=run.device,
                                  on_step=counter_step(counter, self._on_step))
                self.probes.append(Probe(result.image, list(counter.per_step), result.latency_s))
                if len(self.probes) == 1 and optim.cache.method in C.CACHE_DIT_METHODS:
                    # cache-dit's own count of the first item's run, checked against the lab's in the report
                    applied.details["cache_dit"] = cache_dit_stats(pipe)
        finally:
            counter.detach()
        self._first_image, self._last_image, self._deterministic, self._timed = {}, {}, True, 0
        return [probe.latency_s for probe in self.probes[:1]]

    def _setup(self, warmup_s: list[float]) -> Setup:
        freeze_heap()  # what is loaded now stays until reconfigure or close (both thaw it first)
        resident, setup_peak, free = self.memory.footprint()
        return Setup(load_s=self._load_s, warmup_s=warmup_s, step_work=self.probes[0].step_work,
                     component_sizes_mb=self._sizes, applied=list(self.applied.steps),
                     warnings=list(self.applied.warnings), details=dict(self.applied.details),
                     resident_mb=resident, setup_peak_mb=setup_peak, free_mb=free,
                     device_name=device_name(self.job.run.device), threads=thread_settings())

    def reconfigure(self, optim: C.OptimConfig) -> Setup:
        """Undo the current optimizations and apply `optim` in place (no reload: see `swappable`), then probe
        every item again."""
        if not swappable(self.optim, optim):
            raise RunError("this side cannot be reconfigured in place (quantization, offload or compile differ); "
                           "it needs a fresh worker")

        def change() -> Setup:
            thaw_heap()
            self.applied.undo_all()
            self.applied = Applied()
            warmup_s = self._configure(optim)
            self.phase = "timed runs"
            return self._setup(warmup_s)

        return self._guarded(change)

    def timed(self, label: str = "timed run", item: int = 0) -> Timing:
        """One timed run of item `item`, with this run's memory peak and the machine's load during it."""
        return self._guarded(lambda: self._timed_run(label, item))

    def _timed_run(self, label: str, item: int) -> Timing:
        run = self.job.run
        if self._timed == 0:
            fault = faults.requested(run.prompt, self.job.side)
            if fault:
                faults.inject(fault, height=run.height, width=run.width, should_stop=self.should_stop)
        self.memory.reset_peaks()
        meter = LoadMeter().start()
        result = generate(self.pipe, self.item_kwargs[item], seed=self.items[item].seed, device=run.device,
                          on_step=lambda s: self._on_step(s, label))
        load = meter.stop(result.latency_s)
        peaks = self.memory.read()
        self._timed += 1
        if item not in self._first_image:
            self._first_image[item] = result.image
        elif self._deterministic and not np.array_equal(self._first_image[item], result.image):
            self._deterministic = False
        self._last_image[item] = result.image
        return Timing(latency_s=result.latency_s, per_step_s=result.per_step_s,
                      peak_memory_mb=peaks["peak_memory_mb"], reserved_memory_mb=peaks["reserved_memory_mb"],
                      host_peak_memory_mb=peaks["host_peak_memory_mb"], load=load,
                      image_digest=hashlib.sha1(result.image.tobytes()).hexdigest())

    def footprint(self) -> tuple[float, float, float | None]:
        """(held now, the most held so far, still free) in MB (`MemoryProbe.footprint`)."""
        return self.memory.footprint()

    def images(self) -> list[np.ndarray]:
        """Each item's image: from its last timed run, else from its probe."""
        return [self._last_image.get(index, probe.image) for index, probe in enumerate(self.probes)]

    def finish(self) -> Final:
        if 0 not in self._last_image:
            raise RunError(f"the {self.job.side} side was finished before any timed run")
        return Final(image=self._last_image[0], deterministic=self._deterministic,
                     probe_matches_timed=bool(np.array_equal(self.probes[0].image, self._last_image[0])))

    def close(self) -> None:
        thaw_heap()
        try:
            self.applied.undo_all()
        finally:
            self.pipe = None
            gc.collect()
            if self.job.run.device == "cuda":
                import torch

                torch.cuda.empty_cache()


def run_side(
    job: SideJob, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None
) -> SideResult:
    """Measure one side on its own, in this process: prepare, `run.timed_runs` timed runs (at least 1, or 3 for
    "auto"), finish, close. Raises `OptimError` subclasses with user-facing messages."""
    side = Side(job, progress, should_stop)
    try:
        setup = side.prepare()
        count = job.run.timed_runs if isinstance(job.run.timed_runs, int) else 3
        timings = [side.timed(f"timed run {i + 1}/{count}") for i in range(count)]
        return SideResult.build(job.side, setup, timings, side.finish())
    finally:
        side.close()


def compiled_graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (its `unique_graphs` counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def counter_step(counter: WorkCounter, on_step: Callable[[int, str], None]) -> Callable[[int], None]:
    def step(index: int) -> None:
        counter.mark_step()
        on_step(index, "warm-up")

    return step


def _mag_ratios(
    pipe: Any, cache: C.MagCache, run: ResolvedRun, applied: Applied, on_step: Callable[[int, str], None]
) -> list[float]:
    from optim.techniques.cache import calibrate_mag_ratios, flux_mag_ratios

    if cache.mag_ratios == "flux":
        applied.add("MagCache ratios: FLUX.1 (shipped with diffusers)")
        return flux_mag_ratios()
    if cache.mag_ratios == "calibrate":
        kwargs, _ = call_kwargs(pipe, run)
        ratios = calibrate_mag_ratios(
            pipe,
            steps=run.steps,
            run=lambda: generate(
                pipe, kwargs, seed=run.seed, device=run.device, on_step=lambda s: on_step(s, "calibrating MagCache")
            ),
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
    # Allocation failures surface in many places: Python (MemoryError), PyTorch ("can't allocate memory", CUDA's
    # OutOfMemoryError), C++ (std::bad_alloc), and oneDNN, which under an address-space cap reports a failed
    # allocation as "could not create a primitive".
    capped = job.memory_limit_mb is not None and job.run.device != "cuda"
    if (
        isinstance(error, MemoryError)
        or "out of memory" in lowered
        or "can't allocate memory" in lowered
        or "bad_alloc" in lowered
        or "failed to allocate" in lowered
        or type(error).__name__ == "OutOfMemoryError"
        or (capped and "could not create a primitive" in lowered)
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
