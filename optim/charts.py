"""Charts of a comparison, drawn with matplotlib's object API (a `Figure` per chart, never pyplot's global
state, so concurrent requests in a server cannot draw on each other's axes).

Each function returns a `Figure`; `save_charts` writes them as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

BASELINE_COLOUR = "#7f7f7f"
OPTIMIZED_COLOUR = "#e4572e"
SKIPPED_COLOUR = "#2e86de"


def _figure(width: float = 5.0, height: float = 3.2) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.add_subplot()


def latency_chart(report: dict[str, Any]) -> Figure:
    """Median latency per side, with the min-max range of the timed runs."""
    figure, axes = _figure()
    sides = [("baseline", BASELINE_COLOUR), ("optimized", OPTIMIZED_COLOUR)]
    medians = [report[s]["latency_s"]["median"] for s, _ in sides]
    low = [m - report[s]["latency_s"]["min"] for m, (s, _) in zip(medians, sides)]
    high = [report[s]["latency_s"]["max"] - m for m, (s, _) in zip(medians, sides)]
    bars = axes.bar([s for s, _ in sides], medians, color=[c for _, c in sides], yerr=[low, high], capsize=6)
    axes.bar_label(bars, labels=[f"{m:.3f} s" for m in medians], padding=3)
    axes.set_ylabel("latency per image (s)")
    axes.set_title(f"Latency (median, min-max)   speedup x{report['speedup']:.2f}")
    axes.set_ylim(0, max(report[s]["latency_s"]["max"] for s, _ in sides) * 1.25)
    return figure


def per_step_chart(report: dict[str, Any]) -> Figure:
    """Time of each denoising step per side; steps where the optimized side skipped work are marked."""
    figure, axes = _figure(6.0, 3.2)
    for side, colour in (("baseline", BASELINE_COLOUR), ("optimized", OPTIMIZED_COLOUR)):
        times = [t * 1000 for t in report[side]["per_step_s"]]
        axes.plot(range(1, len(times) + 1), times, marker="o", markersize=3, color=colour, label=side)
    work = report["optimized"].get("work_per_step") or []
    times = [t * 1000 for t in report["optimized"]["per_step_s"]]
    skipped = [(i + 1, times[i]) for i, w in enumerate(work) if w < 0.999 and i < len(times)]
    if skipped:
        axes.scatter(
            [x for x, _ in skipped], [y for _, y in skipped], s=60, facecolors="none", edgecolors=SKIPPED_COLOUR,
            label="work skipped (cache)", zorder=3,
        )
    axes.set_xlabel("step")
    axes.set_ylabel("time per step (ms)")
    axes.set_title("Per-step time")
    axes.set_ylim(bottom=0)
    axes.legend(loc="best", fontsize=8)
    return figure


def memory_chart(report: dict[str, Any]) -> Figure:
    """Peak memory per side (GPU allocated on CUDA, process RSS growth on CPU), host memory beside it on CUDA."""
    figure, axes = _figure()
    sides = ["baseline", "optimized"]
    peaks = [report[s]["peak_memory_mb"] for s in sides]
    bars = axes.bar(sides, peaks, color=[BASELINE_COLOUR, OPTIMIZED_COLOUR])
    axes.bar_label(bars, labels=[f"{p:.0f} MB" for p in peaks], padding=3)
    on_gpu = report["environment"]["device"] == "cuda"
    axes.set_ylabel("peak GPU memory allocated (MB)" if on_gpu else "peak process memory growth (MB)")
    axes.set_title("Peak memory" + (" (GPU)" if on_gpu else " (CPU RSS)"))
    axes.set_ylim(0, max(peaks + [1.0]) * 1.25)
    return figure


def work_chart(report: dict[str, Any]) -> Figure:
    """Share of the transformer's work computed at each step by the optimized side (1.0 = everything)."""
    figure, axes = _figure(6.0, 2.6)
    work = report["optimized"].get("work_per_step") or []
    axes.bar(range(1, len(work) + 1), work, color=[OPTIMIZED_COLOUR if w >= 0.999 else SKIPPED_COLOUR for w in work])
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("step")
    axes.set_ylabel("work computed")
    fraction = report["optimized"]["work_fraction"]
    axes.set_title(f"Transformer work computed per step (total {fraction:.0%})")
    return figure


CHARTS = {
    "latency.png": latency_chart,
    "per_step.png": per_step_chart,
    "memory.png": memory_chart,
    "work.png": work_chart,
}


def save_charts(report: dict[str, Any], directory: Path) -> list[str]:
    names = []
    for name, draw in CHARTS.items():
        draw(report).savefig(directory / name)
        names.append(name)
    return names
