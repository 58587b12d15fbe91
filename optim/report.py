"""Write a comparison to disk (report.json, report.md, the images, the charts) and format its summary.

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


def _png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")  # lossless: differences of one level must survive


def write_report(comparison: Any, directory: Path) -> dict[str, Any]:
    """Write every file of a comparison into `directory`; return the report (as written to report.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    report = comparison.to_report()
    _png(comparison.baseline.image, directory / "baseline.png")
    _png(comparison.optimized.image, directory / "optimized.png")
    _png(comparison.heatmap, directory / "diff.png")
    report["files"] = ["baseline.png", "optimized.png", "diff.png", *save_charts(report, directory)]
    report["files"] += ["report.json", "report.md"]
    (directory / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False, default=_json_default) + "\n")
    (directory / "report.md").write_text(markdown(report))
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"


def fmt_mb(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f} MB"


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, baseline, optimized) rows shared by the CLI table, report.md and the app's metrics table."""
    b, o = report["baseline"], report["optimized"]

    def latency(side: dict[str, Any]) -> str:
        lat = side["latency_s"]
        return f"{fmt_s(lat['median'])} ({fmt_s(lat['min'])}-{fmt_s(lat['max'])})"

    def per_step(side: dict[str, Any]) -> str:
        steps = side["per_step_s"]
        return fmt_s(sum(steps) / len(steps)) if steps else "-"

    quality = report["quality"]
    psnr = "identical" if quality["psnr_db"] is None else f"{quality['psnr_db']:.2f} dB"
    rows = [
        ("latency median (min-max)", latency(b), latency(o)),
        ("speedup", "1.00x", f"{report['speedup']:.2f}x"),
        ("mean time per step", per_step(b), per_step(o)),
        ("peak memory", fmt_mb(b["peak_memory_mb"]), fmt_mb(o["peak_memory_mb"])),
    ]
    if report["environment"]["device"] == "cuda":
        rows.append(("peak memory reserved", fmt_mb(b["reserved_memory_mb"]), fmt_mb(o["reserved_memory_mb"])))
        rows.append(("host peak memory", fmt_mb(b["host_peak_memory_mb"]), fmt_mb(o["host_peak_memory_mb"])))
    rows += [
        ("load time", fmt_s(b["load_s"]), fmt_s(o["load_s"])),
        ("warm-up time", fmt_s(b["warmup_s"]), fmt_s(o["warmup_s"])),
        ("compile time (cold)", fmt_s(b["compile_s"]), fmt_s(o["compile_s"])),
        ("transformer work computed", f"{b['work_fraction']:.0%}", f"{o['work_fraction']:.0%}"),
        ("PSNR vs baseline", "-", psnr),
        ("SSIM vs baseline", "-", f"{quality['ssim']:.4f}"),
        ("max / mean abs diff (0-255)", "-", f"{quality['max_abs_diff']} / {quality['mean_abs_diff']:.3f}"),
    ]
    for component, size in (o.get("quantization") or {}).items():
        rows.append((f"{component} size", fmt_mb(size["before_mb"]), fmt_mb(size["after_mb"])))
    return rows


def summary_table(report: dict[str, Any]) -> str:
    rows = [("", "baseline", "optimized"), *summary_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    run, env, preset = report["run"], report["environment"], report["preset"]
    lines = [
        f"# Comparison: {preset['name']}",
        "",
        f"{preset['description']}".strip(),
        "",
        f"Model `{run['model']}`, prompt \"{run['prompt']}\", seed {run['seed']}, {run['steps']} steps, "
        f"{run['width']}x{run['height']}, guidance {run['guidance_scale']}, {run['dtype']} on {env['device']} "
        f"({env['device_name']}); {run['warmup_runs']} warm-up and {run['timed_runs']} timed runs per side, "
        f"each side in its own process: {env['isolation'] == 'process'}.",
        f"torch {env['torch']}, diffusers {env['diffusers']}, Python {env['python']}.",
        "",
        "| metric | baseline | optimized |",
        "|---|---|---|",
        *[f"| {metric} | {b} | {o} |" for metric, b, o in summary_rows(report)],
        "",
        "## Applied (in order)",
        "",
        *([f"1. {step}" for step in report["optimized"]["applied"]] or ["Nothing (baseline settings)."]),
    ]
    warnings = report["optimized"]["warnings"]
    if warnings:
        lines += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    lines += [
        "",
        "## Images",
        "",
        "| baseline | optimized | difference |",
        "|---|---|---|",
        "| ![baseline](baseline.png) | ![optimized](optimized.png) | ![diff](diff.png) |",
        "",
        f"The difference heatmap maps 0 to black and {report['quality']['heatmap_scale']} levels (of 255) to white.",
        "",
        "![latency](latency.png) ![per-step](per_step.png) ![memory](memory.png) ![work](work.png)",
        "",
    ]
    return "\n".join(lines)
