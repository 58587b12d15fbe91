"""report.json as typed data: `Report` is what `Comparison.report()` returns, what the CLI, report.md, the charts
and the app read (by attribute, not by string key), and its JSON Schema is docs/report.schema.json
(`python -m optim report-schema`; tests/test_engine.py checks the file is current).

Units are in the names: `_s` seconds, `_mb` megabytes (2**20 bytes), `_db` decibels. Differences and motion are
in levels of 0-255.

Video comparisons add `video` (frames, frame rate, size) and `quality.video` (per-frame and temporal figures);
image reports have neither key, exactly as before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPORT_SCHEMA_VERSION = 3


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyStats(_Data):
    median: float
    min: float
    max: float
    runs: list[float] = Field(description="every timed run, in the order it ran")


class RunRecord(_Data):
    """One timed run and what the machine was doing meanwhile."""

    latency_s: float = Field(description="wall time of the pipeline call")
    time_s: float = Field(description="the time the ratio is taken from (timing.estimator): wall time, or on a CPU "
                          "wall time less run-queue wait")
    peak_memory_mb: float
    cpu_s: float = Field(description="this side's process CPU time during the run (all its threads)")
    others_cpu_s: float | None = Field(description="CPU time foreign processes used meanwhile (from /proc/stat): not "
                                       "the lab's own processes, not the browser showing its page")
    steal_s: float | None
    busy: bool = Field(description="foreign processes used more than a quarter of a core, or the hypervisor stole "
                       "time")
    wait_s: float | None = Field(None, description="time this side's threads were ready to run but waited for a "
                                 "CPU (the kernel's run-queue wait, from schedstat)")
    core_start: int | None = Field(None, description="the CPU core this side ran on when the run started")
    core_end: int | None = Field(None, description="the CPU core it ran on when the run ended")
    preempted: int | None = Field(None, description="involuntary context switches during the run")
    lab_cpu_s: float | None = Field(None, description="CPU time of the lab's own other processes (its server or CLI, "
                                    "its other workers)")
    page_cpu_s: float | None = Field(None, description="CPU time of the browser showing the lab's page")


class Quantized(_Data):
    before_mb: float | None
    after_mb: float | None


class CacheDitStats(_Data):
    cached_steps: list[int] = Field(description="steps (0-based) served from cache-dit's cache")
    cfg_cached_steps: list[int] = Field(description="the same for the second guidance branch (separate CFG)")
    executed_steps: int | None
    transformer_executed_steps: int | None
    lab_reduced_steps: list[int] = Field(description="steps where the lab counted less transformer work")
    agrees: bool = Field(description="the two lists of steps are the same")


class PlannedMemory(_Data):
    predicted_peak_mb: float = Field(description="the memory planner's peak of a generation (optim.plan)")
    measured_peak_mb: float = Field(description="peak_memory_mb: the most torch.cuda.max_memory_allocated of a run")
    error: float | None = Field(description="predicted / measured - 1")
    predicted_reserved_mb: float | None = Field(description="the plan's upper bound of the allocator's reserve")
    measured_reserved_mb: float | None
    predicted_load_mb: float = Field(description="the plan's GPU memory while loading")
    peak_phase: str = Field(description="where the plan puts the peak (encode, denoise, decode)")
    fits: bool = Field(description="the plan says this side fits this GPU with its margins")
    combination: str = Field(description="the combination planned, in the planner's words")


class AotPackage(_Data):
    """One AoT package (compile mode 'aot'): a compiled class at one input signature."""

    target: str = Field(description="the class compiled: a repeated block, or the transformer")
    key: str = Field(description="the package's folder in the cache: the class and the digest of its key")
    inputs: str = Field(description="the input shapes it was exported for")
    status: str = Field(description="built (cold: exported and compiled) or loaded (from the disk cache)")
    export_s: float = Field(description="torch.export of the module on the captured call")
    build_s: float | None = Field(None, description="AOTInductor compile and packaging (built only)")
    load_s: float = Field(description="loading the package and binding each module's own weights, all modules")
    modules: int = Field(description="modules running this package, each with its own weights")
    toolchain: str = Field(description="torch, or spaces (ZeroGPU's helpers)")


class AotReport(_Data):
    """Compile mode 'aot': whether the packages were built (cold) or loaded, and what each took."""

    status: str | None = Field(description="built, loaded, or built and loaded (some of each)")
    build_s: float = Field(description="AOTInductor build time, all packages (0 when every one was loaded)")
    load_s: float = Field(description="package load and weight binding time, all packages and modules")
    export_s: float = Field(description="torch.export time, all packages (made for the cache key, built or not)")
    cache_dir: str
    toolchain: str = Field(description="torch, or spaces (ZeroGPU's helpers)")
    packages: list[AotPackage]


class SideReport(_Data):
    latency_s: LatencyStats = Field(description="wall time of the timed runs")
    time_s: LatencyStats = Field(description="the time the ratio is taken from (timing.estimator)")
    per_step_s: list[float] = Field(description="median time of each denoising step over the timed runs")
    peak_memory_mb: float = Field(
        description="GPU allocated on CUDA; process RSS growth on a CPU (the most of any run)")
    peak_memory_runs_mb: list[float]
    reserved_memory_mb: float | None
    host_peak_memory_mb: float
    load_s: float
    warmup_s: float
    warmup_runs_s: list[float]
    compile_s: float | None = Field(description="cold compile: the first compiled call minus a steady one")
    compile_cold: bool | None
    compiled_graphs: int | None = Field(description="graphs dynamo compiled (its own counter)")
    work_fraction: float = Field(description="share of the baseline's transformer work this side computed")
    work_per_step: list[float]
    component_sizes_mb: dict[str, float]
    applied: list[str]
    warnings: list[str]
    deterministic: bool
    runs: list[RunRecord]
    reused: bool | None = None
    quantization: dict[str, Quantized] | None = None
    mag_ratios: list[float] | None = None
    cache_dit: CacheDitStats | None = Field(
        None, description="cache-dit's own statistics of the first item's run, checked against the lab's count")
    aot: AotReport | None = Field(
        None, description="compile mode 'aot': each package built (with its build time) or loaded (its load time)")
    planned: PlannedMemory | None = Field(
        None, description="on CUDA: the memory planner's prediction for this side beside its measured peak")


class Interval(_Data):
    estimate: float
    low: float | None
    high: float | None
    runs: int
    method: str
    verdict: str
    confidence: float
    half_width: float | None
    text: str


class DifferenceInterval(_Data):
    estimate: float
    low: float | None
    high: float | None
    runs: int
    verdict: str = Field(description="less, more, equivalent (the whole interval within +-band), inconclusive, or "
                         "too few runs")
    method: str
    band: float = Field(description="MB too small to count as a difference")
    text: str


class Contention(_Data):
    busy_runs: int
    runs: int
    busy_share: float
    busy_threshold_cores: float
    others_cores_mean: float | None = Field(description="foreign processes' CPU use during the runs, in cores")
    lab_cores_mean: float | None = Field(description="the lab's own other processes, in cores (not contention)")
    page_cores_mean: float | None = Field(description="the browser showing the lab's page, in cores (not contention)")
    wait_share_mean: float | None = Field(description="share of a run's wall time its process waited for a CPU")
    note: str | None


class Estimator(_Data):
    name: str = Field(description="own (wall time less run-queue wait) or wall")
    description: str
    why: str


class TimingReport(_Data):
    mode: str = Field(description="interleaved (both sides loaded, runs in turns) or sequential (blocks)")
    reason: str | None
    order: str
    sequence: str = Field(description="the order the runs were taken in: each pair's order (BO: baseline first), "
                          "or the sequential blocks")
    runs_per_side: int
    auto: bool
    target_precision: float
    time_budget_s: float
    timed_s: float
    stopped_because: str
    target_met: bool | None
    estimator: Estimator
    speedup: Interval = Field(description="the headline ratio, from the estimator's times")
    speedup_wall: Interval = Field(description="the same ratio from wall times, for reference")
    memory_saving_mb: DifferenceInterval
    contention: Contention
    baseline_reuse: str | None


class VideoQuality(_Data):
    """A video's quality frame by frame, and how its motion differs from the baseline's."""

    frames: int
    psnr_db_per_frame: list[float | None] = Field(description="None where the frame is identical")
    ssim_per_frame: list[float]
    mean_abs_diff_per_frame: list[float]
    max_abs_diff_per_frame: list[int]
    psnr_db_mean: float | None = Field(description="mean over the frames that differ (None: none differs)")
    psnr_db_worst: float | None = Field(description="the lowest frame PSNR (None: no frame differs)")
    ssim_mean: float
    ssim_worst: float
    worst_frame: int = Field(description="index of the frame that differs most (largest squared error)")
    motion_baseline_per_transition: list[float] = Field(
        description="mean absolute change from each frame to the next, baseline (levels)")
    motion_optimized_per_transition: list[float]
    temporal_diff_per_transition: list[float] = Field(
        description="mean |(o[t+1] - o[t]) - (b[t+1] - b[t])|: how much the optimized side's frame-to-frame change "
                    "differs from the baseline's (levels; flicker or frozen motion)")
    motion_baseline: float | None
    motion_optimized: float | None
    temporal_diff_mean: float | None
    temporal_diff_max: float | None


class Quality(_Data):
    max_abs_diff: int
    mean_abs_diff: float
    psnr_db: float | None = Field(description="None when the images are identical (videos: pooled over all frames)")
    ssim: float = Field(description="videos: the mean of the frames' SSIM")
    ms_ssim: float | None = Field(None, description="multi-scale SSIM (optim.perceptual; videos: the frames' mean)")
    lpips: float | None = Field(None, description="LPIPS alex v0.1, lower is closer; None where its weights are "
                                "not on the machine (optim.perceptual.lpips_status)")
    changed_pixels: float
    heatmap_scale: int
    video: VideoQuality | None = None


class VideoInfo(_Data):
    """What a video comparison made: both sides' clips have these frames, rate and size."""

    frames: int
    fps: float
    width: int
    height: int
    duration_s: float


class PresetReport(_Data):
    schema_version: int
    name: str
    description: str
    hardware: str
    optim: dict[str, Any]


class Report(_Data):
    schema_version: int = REPORT_SCHEMA_VERSION
    run: dict[str, Any] = Field(description="the resolved run settings both sides used")
    preset: PresetReport
    environment: dict[str, Any]
    baseline: SideReport
    optimized: SideReport
    speedup: float = Field(description="baseline time / optimized time: the geometric mean of the paired ratios")
    speedup_interval: list[float | None] = Field(description="its 95% confidence interval [low, high]")
    verdict: str = Field(description="faster or slower (the whole interval beyond the 5% band), equivalent (wholly "
                         "inside it), inconclusive, or too few runs")
    timing: TimingReport
    memory_saving_mb: float = Field(description="baseline peak - optimized peak: timing.memory_saving_mb's estimate")
    quality: Quality
    elapsed_s: float
    files: list[str] = Field(default_factory=list)
    video: VideoInfo | None = None

    @property
    def is_video(self) -> bool:
        return self.video is not None

    def to_json(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        # Image reports stay exactly as they were: the video keys only appear on videos.
        if data.get("video") is None:
            data.pop("video", None)
        if data["quality"].get("video") is None:
            data["quality"].pop("video", None)
        return data


def report_json_schema() -> dict[str, Any]:
    schema = Report.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Diffusion optimization lab: report.json"
    return schema
