"""Charts of a comparison, drawn with matplotlib's object API (a `Figure` per chart, never pyplot's global
state, so concurrent requests in a server cannot draw on each other's axes).

Each function takes a `Report` and returns a `Figure`; `save_charts` writes them as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
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
    interval in the title."""
    figure, axes = _figure()
    sides = [("baseline", report.baseline, BASELINE_COLOUR), ("optimized", report.optimized, OPTIMIZED_COLOUR)]
    for position, (_, side, colour) in enumerate(sides):
        axes.bar(position, side.latency_s.median, color=colour, alpha=0.55, width=0.6)
        runs = side.latency_s.runs
        offsets = [(i - (len(runs) - 1) / 2) * min(0.4 / max(len(runs), 1), 0.06) for i in range(len(runs))]
        axes.scatter([position + o for o in offsets], runs, s=14, color=colour, edgecolors="black", linewidths=0.4,
                     zorder=3)
        axes.annotate(f"{side.latency_s.median:.3f} s", (position, side.latency_s.median), xytext=(0, 4),
                      textcoords="offset points", ha="center", va="bottom", fontsize=9)
    axes.set_xticks([0, 1], [name for name, _, _ in sides])
    axes.set_ylabel("latency per image (s)")
    axes.set_title(report.timing.speedup.text, fontsize=10)
    axes.set_ylim(0, max(max(side.latency_s.runs) for _, side, _ in sides) * 1.2)
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
    axes.legend(handles=[Patch(color=OPTIMIZED_COLOUR, label="computed in full"),
                         Patch(color=SKIPPED_COLOUR, label="partly skipped (cache)")],
                loc="upper right", fontsize=8, ncols=2)
    axes.set_title(f"Transformer work computed per step (total {report.optimized.work_fraction:.0%})")
    return figure


CHARTS = {
    "latency.png": latency_chart,
    "per_step.png": per_step_chart,
    "memory.png": memory_chart,
    "work.png": work_chart,
}


def save_charts(report: Report, directory: Path) -> list[str]:
    names = []
    for name, draw in CHARTS.items():
        draw(report).savefig(directory / name)
        names.append(name)
    return names
