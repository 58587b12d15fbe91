"""The results column: the headline numbers, the images (a slider and the difference heatmap), the metrics table,
the charts, the details (what was applied, warnings, report files) and this session's history.

`build_results()` returns a `ResultsPanel`; `render(entry)` gives the values of its components for one comparison
(a new one, or one picked from the history). History entries are plain dicts kept in the session's state.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from lab.context import ServerContext
from lab.text import (
    EMPTY_RESULTS,
    HISTORY_HEADERS,
    details_markdown,
    headline_html,
    heatmap_caption,
    history_rows,
    log,
    metrics_rows,
)
from optim import charts
from optim.engine import Comparison
from optim.report import json_safe, write_report

HISTORY_LENGTH = 20
KEPT_REPORT_FOLDERS = 50


@dataclass
class ResultsPanel:
    headline: Any
    slider: Any
    heatmap: Any
    heatmap_caption: Any
    metrics: Any
    latency_plot: Any
    memory_plot: Any
    per_step_plot: Any
    work_plot: Any
    details: Any
    report_json: Any
    report_files: Any
    history_table: Any
    history: Any  # gr.State: this session's entries

    @property
    def views(self) -> list[Any]:
        """The components `render` fills, in its order."""
        return [self.headline, self.slider, self.heatmap, self.heatmap_caption, self.metrics, self.latency_plot,
                self.memory_plot, self.per_step_plot, self.work_plot, self.details, self.report_json,
                self.report_files]


def save_report_files(ctx: ServerContext, comparison: Comparison) -> list[str]:
    """report.json, report.md, the three PNGs (lossless) and the charts, in a fresh folder; the newest 50 kept."""
    folder = Path(tempfile.mkdtemp(dir=ctx.reports_dir, prefix="run-"))
    try:
        write_report(comparison, folder)
    except Exception:  # noqa: BLE001 - the files are a convenience; the results still show
        log.exception("writing the report files")
        (folder / "report.json").write_text(json.dumps(json_safe(comparison.to_report()), indent=2) + "\n")
    runs = sorted(ctx.reports_dir.glob("run-*"), key=lambda p: p.stat().st_mtime)
    for old in runs[:-KEPT_REPORT_FOLDERS]:
        shutil.rmtree(old, ignore_errors=True)
    names = ["report.json", "report.md", "baseline.png", "optimized.png", "diff.png"]
    return [str(folder / n) for n in names if (folder / n).is_file()]


def history_entry(comparison: Comparison, files: list[str], number: int) -> dict[str, Any]:
    return {
        "number": number,
        "time": time.strftime("%H:%M:%S"),
        "report": comparison.report(),
        "baseline": comparison.baseline.image,
        "optimized": comparison.optimized.image,
        "heatmap": comparison.heatmap,
        "files": files,
    }


def add_to_history(history: list[dict[str, Any]] | None, comparison: Comparison,
                   files: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    history = list(history or [])
    number = (history[-1]["number"] + 1) if history else 1
    entry = history_entry(comparison, files, number)
    return entry, (history + [entry])[-HISTORY_LENGTH:]


def render(entry: dict[str, Any]) -> list[Any]:
    """Every result component's value for one comparison (`ResultsPanel.views`)."""
    report = entry["report"]
    return [
        headline_html(report),
        (entry["baseline"], entry["optimized"]),
        gr.update(value=entry["heatmap"], label="Difference"),
        heatmap_caption(report),
        metrics_rows(report),
        charts.latency_chart(report),
        charts.memory_chart(report),
        charts.per_step_chart(report),
        charts.work_chart(report),
        details_markdown(report),
        json_safe(report.to_json()),
        entry["files"],
    ]


def show_history_entry(history: list[dict[str, Any]] | None, evt: gr.SelectData) -> list[Any]:
    """Selecting a row of the history shows that comparison again."""
    history = history or []
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    ordered = list(reversed(history))  # the table shows the newest first
    if not isinstance(row, int) or not 0 <= row < len(ordered):
        return [gr.skip()] * 12
    return render(ordered[row])


def build_results() -> ResultsPanel:
    """The results column (call inside a `gr.Column`)."""
    headline = gr.HTML(EMPTY_RESULTS, elem_id="headline")
    with gr.Tabs():
        with gr.Tab("Images", id="tab-images"):
            with gr.Row(equal_height=False):
                slider = gr.ImageSlider(label="Baseline (left) ↔ optimized (right)", format="png", type="numpy",
                                        scale=3, elem_id="image-slider", max_height=640)
                with gr.Column(scale=2, min_width=200):
                    heatmap = gr.Image(label="Difference", format="png", type="numpy", height=300, interactive=False,
                                       elem_id="heatmap", buttons=["download", "fullscreen"])
                    caption = gr.Markdown(elem_classes="lab-note")
        with gr.Tab("Metrics", id="tab-metrics"):
            metrics = gr.Dataframe(headers=["metric", "baseline", "optimized"], value=[], interactive=False,
                                   wrap=True, max_height=900, column_widths=["34%", "33%", "33%"],
                                   elem_id="metrics-table")
            gr.Markdown("Latency is per image, median of the timed runs with min-max. The two sides' timed runs are "
                        "taken in turns, so the machine's ups and downs hit both alike; the speedup is the geometric "
                        "mean of the paired ratios with its 95% confidence interval, and “no measurable difference” "
                        "means the interval includes 1.0 (or the difference is under 2%). Memory is the peak during "
                        "the timed runs (GPU allocated on CUDA, process RSS growth on CPU).", elem_classes="lab-note")
        with gr.Tab("Charts", id="tab-charts"):
            with gr.Row():
                latency_plot = gr.Plot(label="Latency", format="png", show_label=False)
                memory_plot = gr.Plot(label="Peak memory", format="png", show_label=False)
            with gr.Row():
                per_step_plot = gr.Plot(label="Per-step time", format="png", show_label=False)
                work_plot = gr.Plot(label="Work per step", format="png", show_label=False)
        with gr.Tab("Details", id="tab-details"):
            details = gr.Markdown("Run a comparison to see what was applied, in order, and any warnings.")
            report_files = gr.File(label="Report files (report.json, report.md, lossless PNGs)", file_count="multiple",
                                   interactive=False)
            with gr.Accordion("report.json", open=False):
                report_json = gr.JSON()
        with gr.Tab("History", id="tab-history"):
            gr.Markdown("This session's comparisons, newest first. Select a row to show it again.",
                        elem_classes="lab-note")
            history_table = gr.Dataframe(headers=HISTORY_HEADERS, value=[], interactive=False, wrap=True,
                                         elem_id="history-table",
                                         column_widths=["6%", "22%", "30%", "10%", "14%", "10%", "8%"])
    history = gr.State([])
    return ResultsPanel(headline=headline, slider=slider, heatmap=heatmap, heatmap_caption=caption, metrics=metrics,
                        latency_plot=latency_plot, memory_plot=memory_plot, per_step_plot=per_step_plot,
                        work_plot=work_plot, details=details, report_json=report_json, report_files=report_files,
                        history_table=history_table, history=history)


def wire_results(panel: ResultsPanel) -> None:
    panel.history_table.select(show_history_entry, panel.history, panel.views, api_visibility="private")


__all__ = ["HISTORY_LENGTH", "ResultsPanel", "add_to_history", "build_results", "history_rows", "json_safe",
           "render", "save_report_files", "wire_results"]
