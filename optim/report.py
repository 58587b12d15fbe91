"""Write a comparison to disk (report.json, report.md, the images, the charts) and format its summary.

Images: `baseline.png`, `optimized.png`, `diff.png` (lossless). Videos: `baseline.mp4`, `optimized.mp4` and
`diff.mp4` (H.264, to watch), and the same three PNG names holding every frame losslessly as a contact sheet
(`optim.video`), plus the per-frame chart `frames.png`.

    >>> write_report(comparison, Path("out"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from optim.charts import save_charts
from optim.report_model import Report, SideReport


def _png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")  # lossless: differences of one level must survive


def json_safe(value: Any) -> Any:
    """Strict JSON values: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(comparison: Any, directory: Path) -> Report:
    """Write every file of a comparison into `directory`; return the report (as written to report.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    report = comparison.report()
    files = []
    if report.video is not None:
        from optim.video import write_frames_png, write_mp4

        for name, frames in (("baseline", comparison.baseline.image), ("optimized", comparison.optimized.image),
                             ("diff", comparison.heatmap)):
            write_mp4(frames, directory / f"{name}.mp4", fps=report.video.fps)
            write_frames_png(frames, directory / f"{name}.png")
        files += ["baseline.mp4", "optimized.mp4", "diff.mp4"]
    else:
        _png(comparison.baseline.image, directory / "baseline.png")
        _png(comparison.optimized.image, directory / "optimized.png")
        _png(comparison.heatmap, directory / "diff.png")
    files += ["baseline.png", "optimized.png", "diff.png", *save_charts(report, directory), "report.json",
              "report.md"]
    report = report.model_copy(update={"files": files})
    (directory / "report.json").write_text(json.dumps(json_safe(report.to_json()), indent=2, allow_nan=False) + "\n")
    (directory / "report.md").write_text(markdown(report))
    return report


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"


def fmt_mb(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f} MB"


def speedup_cell(report: Report) -> str:
    """'1.52x (1.47-1.58, faster)': the ratio, its 95% interval and the verdict."""
    low, high = report.speedup_interval
    if low is None or high is None:
        return f"{report.speedup:.2f}x (too few runs for an interval)"
    return f"{report.speedup:.2f}x ({low:.2f}-{high:.2f}, {report.verdict})"


def memory_cell(report: Report) -> str:
    """'+412.0 MB saved (95% CI +400.1 to +423.9, uses less)': the one figure for the saving, everywhere."""
    return report.timing.memory_saving_mb.text


def estimator_sentence(report: Report) -> str:
    """Which time per run the ratio comes from, why, and what wall time alone says."""
    timing = report.timing
    sentence = f"The ratio is taken from {timing.estimator.description}: {timing.estimator.why}."
    if timing.estimator.name != "wall":
        sentence += f" From wall time alone: {timing.speedup_wall.text}."
    return sentence


def runs_text(report: Report) -> str:
    timing = report.timing
    mode = "taken in turns" if timing.mode == "interleaved" else "in blocks (sequential)"
    auto = f", auto: {timing.stopped_because}" if timing.auto else ""
    return f"{timing.runs_per_side} per side, {mode}{auto}"


def summary_rows(report: Report) -> list[tuple[str, str, str]]:
    """(metric, baseline, optimized) rows shared by the CLI table, report.md and the app's metrics table."""
    b, o = report.baseline, report.optimized

    def latency(side: SideReport, wall: bool = False) -> str:
        lat = side.latency_s if wall else side.time_s
        return f"{fmt_s(lat.median)} ({fmt_s(lat.min)}-{fmt_s(lat.max)})"

    def per_step(side: SideReport) -> str:
        steps = side.per_step_s
        return fmt_s(sum(steps) / len(steps)) if steps else "-"

    quality = report.quality
    psnr = "identical" if quality.psnr_db is None else f"{quality.psnr_db:.2f} dB"
    own = report.timing.estimator.name == "own"
    rows = [
        ("own time median (min-max)" if own else "latency median (min-max)", latency(b), latency(o)),
        *([("wall time median (min-max)", latency(b, True), latency(o, True))] if own else []),
        ("speedup (95% CI, verdict)", "1.00x", speedup_cell(report)),
        ("mean time per step", per_step(b), per_step(o)),
        ("peak memory", fmt_mb(b.peak_memory_mb), fmt_mb(o.peak_memory_mb)),
        ("peak memory saving (95% CI)", "", memory_cell(report)),
    ]
    if report.environment["device"] == "cuda":
        rows.append(("peak memory reserved", fmt_mb(b.reserved_memory_mb), fmt_mb(o.reserved_memory_mb)))
        rows.append(("host peak memory", fmt_mb(b.host_peak_memory_mb), fmt_mb(o.host_peak_memory_mb)))
    rows += [
        ("load time", fmt_s(b.load_s), fmt_s(o.load_s)),
        ("warm-up time", fmt_s(b.warmup_s), fmt_s(o.warmup_s)),
        ("compile time (cold)", fmt_s(b.compile_s), fmt_s(o.compile_s)),
        ("transformer work computed", f"{b.work_fraction:.0%}", f"{o.work_fraction:.0%}"),
        ("PSNR vs baseline", "-", psnr),
        ("SSIM vs baseline", "-", f"{quality.ssim:.4f}"),
        ("MS-SSIM vs baseline", "-", "-" if quality.ms_ssim is None else f"{quality.ms_ssim:.4f}"),
        ("LPIPS vs baseline (lower: closer)", "-", "weights not here" if quality.lpips is None
         else f"{quality.lpips:.4f}"),
        ("max / mean abs diff (0-255)", "-", f"{quality.max_abs_diff} / {quality.mean_abs_diff:.3f}"),
    ]
    if o.cache_dit is not None:
        rows.append(("cache-dit cached steps (its own count)", "-", cache_dit_text(o.cache_dit, len(o.work_per_step))))
    for component, size in (o.quantization or {}).items():
        rows.append((f"{component} size", fmt_mb(size.before_mb), fmt_mb(size.after_mb)))
    video = quality.video
    if report.video is not None and video is not None:
        info = report.video
        clip = f"{info.frames} frames, {info.width}x{info.height}, {info.fps:g} fps"
        rows += [
            ("video", clip, clip),
            ("PSNR per frame: mean / worst", "-", f"{fmt_db(video.psnr_db_mean)} / {fmt_db(video.psnr_db_worst)}"
             f" (frame {video.worst_frame})"),
            ("SSIM per frame: mean / worst", "-", f"{video.ssim_mean:.4f} / {video.ssim_worst:.4f}"),
            ("motion (mean frame-to-frame change)", fmt_levels(video.motion_baseline),
             fmt_levels(video.motion_optimized)),
            ("temporal difference: mean / max", "-",
             f"{fmt_levels(video.temporal_diff_mean)} / {fmt_levels(video.temporal_diff_max)}"),
        ]
    return rows


def fmt_db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.2f} dB"


def fmt_levels(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def frames_text(report: Report) -> str:
    """' x 49 frames' for a video, '' for an image."""
    return f" x {report.video.frames} frames" if report.video is not None else ""


def summary_table(report: Report) -> str:
    rows = [("", "baseline", "optimized"), *summary_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(report: Report) -> str:
    run, env, preset, timing = report.run, report.environment, report.preset, report.timing
    isolation = ("each side in its own process, both loaded at once" if env["isolation"] == "process"
                 else "both sides in one process, one after the other")
    lines = [
        f"# Comparison: {preset.name}",
        "",
        f"{preset.description}".strip(),
        "",
        f"**{timing.speedup.text}.**",
        "",
        estimator_sentence(report),
        "",
        f"Model `{run['model']}`, prompt \"{run['prompt']}\", seed {run['seed']}, {run['steps']} steps, "
        f"{run['width']}x{run['height']}{frames_text(report)}, guidance {run['guidance_scale']}, {run['dtype']} on "
        f"{env['device']} "
        f"({env['device_name']}); {run['warmup_runs']} warm-up run(s) and {runs_text(report)}; {isolation}.",
        f"torch {env['torch']}, diffusers {env['diffusers']}, Python {env['python']}; "
        f"{env.get('threads', {}).get('torch_threads', '?')} torch threads, OpenMP wait policy "
        f"{env.get('threads', {}).get('omp_wait_policy', '?')}.",
    ]
    if timing.reason:
        lines += ["", f"Timing was {timing.mode}: {timing.reason}."]
    if timing.contention.note:
        lines += ["", f"Note: {timing.contention.note}."]
    if timing.baseline_reuse:
        lines += ["", f"Baseline: {timing.baseline_reuse}."]
    lines += [
        "",
        "| metric | baseline | optimized |",
        "|---|---|---|",
        *[f"| {metric} | {b} | {o} |" for metric, b, o in summary_rows(report)],
        "",
        "## Applied (in order)",
        "",
        *([f"1. {step}" for step in report.optimized.applied] or ["Nothing (baseline settings)."]),
    ]
    if report.optimized.warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in report.optimized.warnings]]
    if report.video is not None and report.quality.video is not None:
        lines += video_markdown(report)
    else:
        lines += [
            "",
            "## Images",
            "",
            "| baseline | optimized | difference |",
            "|---|---|---|",
            "| ![baseline](baseline.png) | ![optimized](optimized.png) | ![diff](diff.png) |",
            "",
            f"The difference heatmap maps 0 to black and {report.quality.heatmap_scale} levels (of 255) to white.",
        ]
    lines += [
        "",
        "![latency](latency.png) ![per-step](per_step.png) ![memory](memory.png) ![work](work.png)",
        "",
    ]
    return "\n".join(lines)


def video_markdown(report: Report) -> list[str]:
    """report.md's video section: the clips, how quality is measured, and every frame's figures."""
    info, video = report.video, report.quality.video
    lines = [
        "",
        "## Video",
        "",
        f"Both sides made {info.frames} frames of {info.width}x{info.height} ({info.duration_s:.2f} s at "
        f"{info.fps:g} fps). Watch them: [baseline.mp4](baseline.mp4), [optimized.mp4](optimized.mp4) and the "
        f"per-frame difference [diff.mp4](diff.mp4) (H.264: lossy, for watching). Every frame, losslessly, left to "
        "right then top to bottom:",
        "",
        "| baseline | optimized | difference |",
        "|---|---|---|",
        "| ![baseline](baseline.png) | ![optimized](optimized.png) | ![diff](diff.png) |",
        "",
        f"The difference heatmaps map 0 to black and {report.quality.heatmap_scale} levels (of 255) to white, on "
        "one scale for every frame. Quality is measured on the lossless frames, frame by frame: PSNR and SSIM of "
        "each frame against the baseline's (the table's PSNR pools the squared error of all frames; the mean "
        "frame PSNR counts the frames that differ). The temporal difference compares motion: for each pair of "
        "consecutive frames, the mean absolute difference between the optimized side's frame-to-frame change and "
        "the baseline's (levels of 255; 0 means the same motion; flicker or frozen motion raise it).",
        "",
        "![per-frame quality](frames.png)",
        "",
        "| frame | PSNR | SSIM | mean abs diff | max abs diff | temporal diff to next |",
        "|---|---|---|---|---|---|",
    ]
    temporal = video.temporal_diff_per_transition
    for index in range(video.frames):
        step = f"{temporal[index]:.3f}" if index < len(temporal) else "-"
        lines.append(f"| {index} | {fmt_db(video.psnr_db_per_frame[index])} | {video.ssim_per_frame[index]:.4f} | "
                     f"{video.mean_abs_diff_per_frame[index]:.3f} | {video.max_abs_diff_per_frame[index]} | {step} |")
    return lines


def cache_dit_text(stats: Any, steps: int) -> str:
    """cache-dit's count of cached steps, and whether the lab's own count of the work computed agrees."""
    text = f"{len(stats.cached_steps)} of {steps}"
    if stats.cfg_cached_steps:
        text += f" (second guidance branch: {len(stats.cfg_cached_steps)})"
    agree = "agrees with" if stats.agrees else "DIFFERS from"
    return f"{text}; {agree} the lab's count ({len(stats.lab_reduced_steps)} steps with less work)"
