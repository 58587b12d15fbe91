"""Charts of a comparison, drawn with matplotlib's object API (a `Figure` per chart, never pyplot's global
state, so concurrent requests in a server cannot draw on each other's axes).

Each function takes a `Report` and returns a `Figure`; `save_charts` writes them as PNG (videos also get the
per-frame quality chart, `frames_chart`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from optim.report_model import Report

BASELINE_COLOUR = "#7f7f7f"
OPTIMIZED_COLOUR = "#e4572e"
SKIPPED_COLOUR = "#2e86de"


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    return figure, figure.add_subplot()


def _steps_axis(axes: Any, count: int) -> None:
    """Steps are whole numbers: integer ticks only, 1 to `count`."""
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(0.5, count + 0.5)
    axes.set_xlabel("step")


def latency_chart(report: Report) -> Figure:
    """Every timed run per side (dots, in the order they ran) over the median bar, and the speedup with its
    interval in the title. The bars and dots are the times the ratio is taken from (`timing.estimator`); on a CPU
    that is each run's own time, and its wall time is drawn beside it as a hollow ring."""
    figure, axes = _figure()
    own = report.timing.estimator.name == "own"
    sides = [("baseline", report.baseline, BASELINE_COLOUR), ("optimized", report.optimized, OPTIMIZED_COLOUR)]
    for position, (_, side, colour) in enumerate(sides):
        axes.bar(position, side.time_s.median, color=colour, alpha=0.55, width=0.6)
        runs = side.time_s.runs
        offsets = [(i - (len(runs) - 1) / 2) * min(0.4 / max(len(runs), 1), 0.06) for i in range(len(runs))]
        xs = [position + o for o in offsets]
        if own:
            axes.scatter(xs, side.latency_s.runs, s=18, facecolors="none", edgecolors="#555555", linewidths=0.6,
                         zorder=2, label="wall time" if position == 0 else None)
        axes.scatter(xs, runs, s=14, color=colour, edgecolors="black", linewidths=0.4, zorder=3)
        axes.annotate(f"{side.time_s.median:.3f} s", (position, side.time_s.median), xytext=(0, 4),
                      textcoords="offset points", ha="center", va="bottom", fontsize=9)
    axes.set_xticks([0, 1], [name for name, _, _ in sides])
    what = "own time" if own else "latency"
    axes.set_ylabel(f"{what} per video (s)" if report.is_video else f"{what} per image (s)")
    speedup = report.timing.speedup
    span = f", 95% CI {speedup.low:.2f}-{speedup.high:.2f}x" if speedup.low is not None else ""
    axes.set_title(f"{speedup.estimate:.2f}x ({speedup.verdict}{span})", fontsize=10)
    top = max(max(side.time_s.runs + (side.latency_s.runs if own else [])) for _, side, _ in sides)
    axes.set_ylim(0, top * 1.2)
    if own:
        axes.legend(loc="lower right", fontsize=8)
    return figure


def per_step_chart(report: Report) -> Figure:
    """Time of each denoising step per side; steps where the optimized side skipped work are marked."""
    figure, axes = _figure()
    for name, side, colour in (("baseline", report.baseline, BASELINE_COLOUR),
                               ("optimized", report.optimized, OPTIMIZED_COLOUR)):
        times = [t * 1000 for t in side.per_step_s]
        axes.plot(range(1, len(times) + 1), times, marker="o", markersize=3, color=colour, label=name)
    work = report.optimized.work_per_step or []
    times = [t * 1000 for t in report.optimized.per_step_s]
    skipped = [(i + 1, times[i]) for i, w in enumerate(work) if w < 0.999 and i < len(times)]
    if skipped:
        axes.scatter([x for x, _ in skipped], [y for _, y in skipped], s=60, facecolors="none",
                     edgecolors=SKIPPED_COLOUR, label="work skipped (cache)", zorder=3)
    _steps_axis(axes, max(len(times), 1))
    axes.set_ylabel("time per step (ms)")
    axes.set_title("Per-step time (median of the timed runs)")
    axes.set_ylim(bottom=0)
    axes.legend(loc="best", fontsize=8)
    return figure


def memory_chart(report: Report) -> Figure:
    """Peak memory per side (GPU allocated on CUDA, process RSS growth on CPU), each run's peak as a dot."""
    figure, axes = _figure()
    sides = [("baseline", report.baseline, BASELINE_COLOUR), ("optimized", report.optimized, OPTIMIZED_COLOUR)]
    for position, (_, side, colour) in enumerate(sides):
        axes.bar(position, side.peak_memory_mb, color=colour, alpha=0.55, width=0.6)
        axes.scatter([position] * len(side.peak_memory_runs_mb), side.peak_memory_runs_mb, s=14, color=colour,
                     edgecolors="black", linewidths=0.4, zorder=3)
        axes.annotate(f"{side.peak_memory_mb:.0f} MB", (position, side.peak_memory_mb), xytext=(0, 4),
                      textcoords="offset points", ha="center", va="bottom", fontsize=9)
    axes.set_xticks([0, 1], [name for name, _, _ in sides])
    on_gpu = report.environment["device"] == "cuda"
    axes.set_ylabel("peak GPU memory allocated (MB)" if on_gpu else "peak process memory growth (MB)")
    axes.set_title("Peak memory" + (" (GPU)" if on_gpu else " (CPU RSS)"))
    axes.set_ylim(0, max(report.baseline.peak_memory_mb, report.optimized.peak_memory_mb, 1.0) * 1.25)
    return figure


def work_chart(report: Report) -> Figure:
    """Share of the transformer's work computed at each step by the optimized side (1.0 = everything)."""
    figure, axes = _figure()
    work = report.optimized.work_per_step or []
    axes.bar(range(1, len(work) + 1), work,
             color=[OPTIMIZED_COLOUR if w >= 0.999 else SKIPPED_COLOUR for w in work])
    axes.set_ylim(0, 1.15)
    _steps_axis(axes, max(len(work), 1))
    axes.set_ylabel("work computed")
    handles = [Patch(color=OPTIMIZED_COLOUR, label="computed in full"),
               Patch(color=SKIPPED_COLOUR, label="partly skipped (cache)")]
    title = f"Transformer work computed per step (total {report.optimized.work_fraction:.0%})"
    stats = report.optimized.cache_dit
    if stats is not None:
        # cache-dit's own count of the steps it served from its cache, as marks over the lab's bars.
        said = sorted(set(stats.cached_steps) | set(stats.cfg_cached_steps))
        axes.scatter([step + 1 for step in said], [1.06] * len(said), marker="v", s=18, color=BASELINE_COLOUR,
                     zorder=3)
        axes.set_ylim(0, 1.35)  # room for the marks under the legend
        handles.append(Line2D([], [], marker="v", linestyle="", color=BASELINE_COLOUR,
                              label="cached, by cache-dit's count"))
        title += "; cache-dit's count " + ("agrees" if stats.agrees else "DIFFERS")
    axes.legend(handles=handles, loc="upper right", fontsize=8, ncols=len(handles))
    axes.set_title(title, fontsize=10 if stats is not None else None)
    return figure


def frames_chart(report: Report) -> Figure:
    """A video's quality frame by frame: PSNR of each frame (left axis; identical frames drawn at the top, marked),
    SSIM (right axis), and the temporal difference between consecutive frames (how much the optimized side's
    frame-to-frame change differs from the baseline's), with the worst frame marked."""
    video = report.quality.video
    if video is None:
        raise ValueError("frames_chart draws videos; this report is an image comparison")
    figure = Figure(figsize=(6.4, 4.6), dpi=110, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    frames = list(range(video.frames))
    finite = [p for p in video.psnr_db_per_frame if p is not None]
    ceiling = (max(finite) + 5.0) if finite else 60.0
    psnr = [ceiling if p is None else p for p in video.psnr_db_per_frame]
    top.plot(frames, psnr, marker="o", markersize=3, color=OPTIMIZED_COLOUR, label="PSNR (dB)")
    identical = [f for f, p in zip(frames, video.psnr_db_per_frame) if p is None]
    if identical:
        top.scatter(identical, [ceiling] * len(identical), s=40, facecolors="none", edgecolors=BASELINE_COLOUR,
                    label="identical frame", zorder=3)
    top.axvline(video.worst_frame, color=SKIPPED_COLOUR, linestyle=":", linewidth=1,
                label=f"worst frame ({video.worst_frame})")
    top.set_ylabel("PSNR vs baseline (dB)")
    ssim_axes = top.twinx()
    ssim_axes.plot(frames, video.ssim_per_frame, color=SKIPPED_COLOUR, linewidth=1, alpha=0.8, label="SSIM")
    low = min(video.ssim_per_frame)
    ssim_axes.set_ylim(max(-1.0, low - max(0.02, (1.0 - low) * 0.5)), 1.005)
    ssim_axes.set_ylabel("SSIM")
    handles = top.get_legend_handles_labels()
    more = ssim_axes.get_legend_handles_labels()
    top.legend(handles[0] + more[0], handles[1] + more[1], loc="best", fontsize=7, ncols=2)
    mean = "identical" if video.psnr_db_mean is None else f"mean {video.psnr_db_mean:.1f} dB"
    worst = "" if video.psnr_db_worst is None else f", worst {video.psnr_db_worst:.1f} dB"
    top.set_title(f"Quality per frame ({mean}{worst}; SSIM mean {video.ssim_mean:.3f})", fontsize=10)
    transitions = [f + 0.5 for f in range(len(video.temporal_diff_per_transition))]
    bottom.bar(transitions, video.temporal_diff_per_transition, width=0.8, color=OPTIMIZED_COLOUR, alpha=0.7)
    bottom.set_ylabel("temporal diff\n(levels)", fontsize=8)
    bottom.set_xlabel("frame")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_xlim(-0.5, video.frames - 0.5)
    bottom.set_ylim(bottom=0)
    return figure


CHARTS = {
    "latency.png": latency_chart,
    "per_step.png": per_step_chart,
    "memory.png": memory_chart,
    "work.png": work_chart,
}
VIDEO_CHARTS = {"frames.png": frames_chart}


def save_charts(report: Report, directory: Path) -> list[str]:
    names = []
    charts = {**CHARTS, **(VIDEO_CHARTS if report.is_video else {})}
    for name, draw in charts.items():
        draw(report).savefig(directory / name)
        names.append(name)
    return names


def _label_points(axes: Any, points: list[tuple[str, float, float, bool]]) -> None:
    """Label each point where its text overlaps no other label or marker: front points first, each trying a few
    places around its marker (in display pixels), else the least crowded one."""
    axes.autoscale_view()
    to_pixels = axes.transData.transform
    markers = [to_pixels((x, y)) for _, x, y, _ in points]
    placed: list[tuple[float, float, float, float]] = [(mx - 4, my - 4, mx + 4, my + 4) for mx, my in markers]
    scale = axes.figure.dpi / 72  # offsets are in points, boxes in pixels
    char_w, line_h = 7 * 0.6 * scale, 7 * 1.25 * scale  # fontsize 7, roughly
    offsets = [(4, 2), (4, -9), (-4, 2), (-4, -9), (4, 8), (-4, 8), (4, -15), (-4, -15)]

    def overlap(box: tuple[float, float, float, float]) -> float:
        return sum(max(0.0, min(box[2], b[2]) - max(box[0], b[0])) * max(0.0, min(box[3], b[3]) - max(box[1], b[1]))
                   for b in placed)

    for (text, x, y, on_front), (mx, my) in sorted(zip(points, markers), key=lambda item: not item[0][3]):
        width = char_w * len(text)
        choices = []
        for dx, dy in offsets:
            left = mx + dx * scale if dx > 0 else mx + dx * scale - width
            box = (left, my + dy * scale, left + width, my + dy * scale + line_h)
            choices.append((overlap(box), (dx, dy), box))
        _, (dx, dy), box = min(choices, key=lambda choice: choice[0])
        placed.append(box)
        axes.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                      ha="left" if dx > 0 else "right", alpha=0.9 if on_front else 0.6)


def pareto_chart(rows: list[dict[str, Any]], front: list[dict[str, Any]], quality: str, *, title: str = "") -> Figure:
    """A sweep: speedup (with its 95% interval) against a quality metric, each point labelled, the Pareto front
    (points no other beats on both) joined and highlighted, the baseline at (1, best quality) for reference."""
    figure, axes = _figure(7.5, 4.8)
    ok = [row for row in rows if row.get("status") == "ok" and row.get(quality) is not None]
    front_ids = {row["id"] for row in front}
    for row in ok:
        on_front = row["id"] in front_ids
        low, high = row.get("speedup_low"), row.get("speedup_high")
        if low is not None and high is not None:
            axes.plot([row[quality]] * 2, [low, high], color=OPTIMIZED_COLOUR if on_front else BASELINE_COLOUR,
                      alpha=0.5, linewidth=1.5)
        axes.scatter([row[quality]], [row["speedup"]], s=46 if on_front else 26, zorder=3,
                     color=OPTIMIZED_COLOUR if on_front else BASELINE_COLOUR, edgecolors="black", linewidths=0.5)
    if front:
        ordered = sorted(front, key=lambda r: r[quality])
        axes.plot([r[quality] for r in ordered], [r["speedup"] for r in ordered], color=OPTIMIZED_COLOUR,
                  linewidth=1.2, label="Pareto front")
    # The baseline's own quality: 1 for the SSIMs, 0 for LPIPS, the best point's for PSNR (identical is infinite).
    if quality.startswith("lpips"):
        best = 0.0
    else:
        best = max([row[quality] for row in ok] + [1.0 if "ssim" in quality else 0.0])
    axes.scatter([best], [1.0], marker="*", s=90, color=BASELINE_COLOUR, label="baseline", zorder=4)
    _label_points(axes, [(row["label"][:40], row[quality], row["speedup"], row["id"] in front_ids) for row in ok])
    axes.axhline(1.0, color=BASELINE_COLOUR, linewidth=0.8, linestyle="--")
    closer = "lower" if quality.startswith("lpips") else "higher"
    axes.set_xlabel(quality.replace("_", " ") + f"  ({closer}: closer to the baseline)")
    axes.set_ylabel("speedup over the baseline (95% CI)")
    axes.set_title(title or "Speed against quality", fontsize=10)
    axes.legend(loc="best", fontsize=8)
    return figure
