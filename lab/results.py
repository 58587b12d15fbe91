"""The results column: the headline numbers, the images (a slider and the difference heatmap), the metrics table,
the charts, the details (what was applied, warnings, report files), this session's history and, for video
models, the Video tab: both sides' clips in two players kept in sync, a frame slider showing that frame of both
sides and its difference heatmap, and the per-frame quality chart.

`build_results()` returns a `ResultsPanel`; `render(entry)` gives the values of its components for one comparison
(a new one, or one picked from the history). History entries are plain dicts kept in the session's state; a
video entry keeps its frames in memory only while it is among the newest `FRAMES_IN_MEMORY` videos, and reads
them back, exactly, from the report folder's lossless frame sheets after that.
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
    error_html,
    headline_html,
    heatmap_caption,
    history_rows,
    log,
    metrics_rows,
    video_caption,
    video_summary,
)
from optim import charts
from optim.engine import Comparison
from optim.report import json_safe, write_report

HISTORY_LENGTH = 20
KEPT_REPORT_FOLDERS = 50
FRAMES_IN_MEMORY = 2  # video entries of the history whose frames stay in memory (older ones: read from disk)
SIDES = ("baseline", "optimized", "heatmap")
# The two players play, pause, seek and change speed together: whichever the user touches leads. Listeners on
# the document (capture phase, since media events do not bubble), installed once, so they hold for every new
# clip the players get; each handler only acts where the other player differs, so they cannot ping-pong.
VIDEO_SYNC_JS = """
if (!window.__labVideoSync) {
  window.__labVideoSync = true;
  const players = () => ["video-baseline", "video-optimized"].map((id) => document.querySelector(`#${id} video`));
  for (const type of ["play", "pause", "seeked", "ratechange"]) {
    document.addEventListener(type, (event) => {
      const source = event.target;
      if (!(source instanceof HTMLVideoElement)) return;
      const [a, b] = players();
      const target = source === a ? b : source === b ? a : null;
      if (!target) return;
      if (Math.abs(target.currentTime - source.currentTime) > 0.05) target.currentTime = source.currentTime;
      if (target.playbackRate !== source.playbackRate) target.playbackRate = source.playbackRate;
      if (type === "play" && target.paused) target.play().catch(() => {});
      if (type === "pause" && !target.paused) target.pause();
    }, true);
  }
}
"""


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
    # The Video tab (video models): filled for every comparison, empty for images.
    tabs: Any = None
    video_summary: Any = None
    baseline_video: Any = None
    optimized_video: Any = None
    frame_slider: Any = None
    frame_baseline: Any = None
    frame_optimized: Any = None
    frame_heatmap: Any = None
    frame_caption: Any = None
    frames_plot: Any = None
    shown: Any = None  # gr.State: the entry on screen (what the frame slider reads)

    @property
    def views(self) -> list[Any]:
        """The components `render` fills, in its order (the video ones after the first twelve)."""
        return [self.headline, self.slider, self.heatmap, self.heatmap_caption, self.metrics, self.latency_plot,
                self.memory_plot, self.per_step_plot, self.work_plot, self.details, self.report_json,
                self.report_files, *self.video_views]

    @property
    def video_views(self) -> list[Any]:
        return [self.tabs, self.video_summary, self.baseline_video, self.optimized_video, self.frame_slider,
                self.frame_baseline, self.frame_optimized, self.frame_heatmap, self.frame_caption, self.frames_plot,
                self.shown]

    @property
    def frame_views(self) -> list[Any]:
        """What the frame slider updates."""
        return [self.frame_baseline, self.frame_optimized, self.frame_heatmap, self.frame_caption]


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
    names = ["report.json", "report.md", "baseline.mp4", "optimized.mp4", "diff.mp4", "baseline.png",
             "optimized.png", "diff.png", "frames.png"]
    return [str(folder / n) for n in names if (folder / n).is_file()]


def history_entry(comparison: Comparison, files: list[str], number: int) -> dict[str, Any]:
    entry = {
        "number": number,
        "time": time.strftime("%H:%M:%S"),
        "report": comparison.report(),
        "baseline": comparison.baseline.image,
        "optimized": comparison.optimized.image,
        "heatmap": comparison.heatmap,
        "files": files,
    }
    if comparison.is_video:
        by_name = {Path(f).name: f for f in files}
        entry["videos"] = {side: by_name.get(f"{side}.mp4") for side in ("baseline", "optimized", "diff")}
        # The lossless frame sheets (optim.video): where the frames come back from once out of memory.
        sheets = {"baseline": "baseline.png", "optimized": "optimized.png", "heatmap": "diff.png"}
        entry["sheets"] = {side: by_name.get(name) for side, name in sheets.items()}
    return entry


def add_to_history(history: list[dict[str, Any]] | None, comparison: Comparison,
                   files: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    history = list(history or [])
    number = (history[-1]["number"] + 1) if history else 1
    entry = history_entry(comparison, files, number)
    history = (history + [entry])[-HISTORY_LENGTH:]
    _release_old_frames(history)
    return entry, history


def _release_old_frames(history: list[dict[str, Any]]) -> None:
    """Keep the frames of only the newest `FRAMES_IN_MEMORY` video entries in memory (a full-size clip is tens of
    MB per side); older ones read them back from their lossless sheets when shown."""
    videos = [e for e in history if "sheets" in e and e.get("baseline") is not None]
    for old in videos[:-FRAMES_IN_MEMORY]:
        if all(old["sheets"].get(side) and Path(old["sheets"][side]).is_file() for side in SIDES):
            old.update(baseline=None, optimized=None, heatmap=None)


def frames_of(entry: dict[str, Any], side: str) -> Any:
    """An entry's output for `side` (baseline, optimized, heatmap): an image, or a video's frames (from memory,
    or read back exactly from its frame sheet)."""
    value = entry.get(side)
    if value is not None:
        return value
    from optim.video import read_frames_png

    return read_frames_png(Path(entry["sheets"][side]), entry["report"].video.frames)


SMALL_FRAME_PX = 160  # frames smaller than this are shown enlarged, pixel by pixel (tiny models make 32 px)


def display_scale(frame: Any) -> int:
    """The whole-number enlargement a frame is shown at: each pixel a k x k block, so nothing is interpolated."""
    return max(1, -(-SMALL_FRAME_PX // max(frame.shape[:2])))


def frame_images(entry: dict[str, Any] | None, frame: Any) -> list[Any]:
    """The frame slider: frame `frame` of both sides, its heatmap (enlarged pixel by pixel when small) and its
    figures (`ResultsPanel.frame_views`)."""
    if not entry or entry["report"].video is None:
        return [None, None, None, ""]
    report = entry["report"]
    index = max(0, min(int(frame or 0), report.video.frames - 1))
    images = [frames_of(entry, side)[index] for side in SIDES]
    scale = display_scale(images[0])
    if scale > 1:
        images = [image.repeat(scale, axis=0).repeat(scale, axis=1) for image in images]
    return [*images, video_caption(report, index)]


def render(entry: dict[str, Any]) -> list[Any]:
    """Every result component's value for one comparison (`ResultsPanel.views`)."""
    report = entry["report"]
    if report.video is not None:
        worst = report.quality.video.worst_frame if report.quality.video is not None else 0
        baseline, optimized, heatmap = (frames_of(entry, side)[worst] for side in SIDES)
    else:
        baseline, optimized, heatmap = entry["baseline"], entry["optimized"], entry["heatmap"]
    return [
        headline_html(report),
        (baseline, optimized),
        gr.update(value=heatmap, label="Difference" + (f" (frame {worst})" if report.video is not None else "")),
        heatmap_caption(report),
        metrics_rows(report),
        charts.latency_chart(report),
        charts.memory_chart(report),
        charts.per_step_chart(report),
        charts.work_chart(report),
        details_markdown(report),
        json_safe(report.to_json()),
        entry["files"],
        *render_video(entry),
    ]


def render_error(message: str, *, bug: bool = False) -> list[Any]:
    """The result area after a run that was refused (or failed): the message where the result was, every view of
    the previous result cleared (it stays in the History tab), so nothing on screen looks like this run's."""
    cleared = "Nothing to show: the last run did not complete (see the message above)."
    return [
        error_html(message, bug=bug),
        None, None, "", [], None, None, None, None, cleared, None, None,
        gr.skip(), cleared, None, None, gr.update(visible=False, value=0), None, None, None, "", None, None,
    ]


def render_video(entry: dict[str, Any]) -> list[Any]:
    """The Video tab's values (`ResultsPanel.video_views`): a video result opens the tab; an image one leaves
    the tabs alone and empties it."""
    report = entry["report"]
    if report.video is None:
        return [gr.skip(), video_summary(report), None, None, gr.update(visible=False, value=0), None, None, None,
                "", None, entry]
    videos = entry.get("videos") or {}
    worst = report.quality.video.worst_frame if report.quality.video is not None else 0
    return [
        gr.update(selected="tab-video"),
        video_summary(report),
        videos.get("baseline"),
        videos.get("optimized"),
        gr.update(visible=True, minimum=0, maximum=max(report.video.frames - 1, 1), value=worst, step=1),
        *frame_images(entry, worst),
        charts.frames_chart(report),
        entry,
    ]


def show_history_entry(history: list[dict[str, Any]] | None, evt: gr.SelectData) -> list[Any]:
    """Selecting a row of the history shows that comparison again."""
    history = history or []
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    ordered = list(reversed(history))  # the table shows the newest first
    if not isinstance(row, int) or not 0 <= row < len(ordered):
        return [gr.skip()] * VIEW_COUNT
    return render(ordered[row])


def build_results() -> ResultsPanel:
    """The results column (call inside a `gr.Column`)."""
    headline = gr.HTML(EMPTY_RESULTS, elem_id="headline")
    gr.HTML("", js_on_load=VIDEO_SYNC_JS, elem_id="video-sync", padding=False, container=False)
    with gr.Tabs(elem_id="results-tabs") as tabs:
        with gr.Tab("Images", id="tab-images"):
            with gr.Row(equal_height=False):
                slider = gr.ImageSlider(label="Baseline (left) ↔ optimized (right)", format="png", type="numpy",
                                        scale=3, elem_id="image-slider", max_height=640)
                with gr.Column(scale=2, min_width=200):
                    heatmap = gr.Image(label="Difference", format="png", type="numpy", height=300, interactive=False,
                                       elem_id="heatmap", buttons=["download", "fullscreen"])
                    caption = gr.Markdown(elem_classes="lab-note")
        with gr.Tab("Video", id="tab-video"):
            video_text = gr.Markdown(
                "Video models only: run a comparison on a video model (tiny:cogvideox, tiny:wan, embedded-video ...).",
                elem_classes="lab-note", elem_id="video-summary")
            with gr.Row(equal_height=True):
                baseline_video = gr.Video(label="Baseline", interactive=False, loop=True, elem_id="video-baseline",
                                          buttons=["download"])
                optimized_video = gr.Video(label="Optimized", interactive=False, loop=True,
                                           elem_id="video-optimized", buttons=["download"])
            frame_slider = gr.Slider(0, 1, value=0, step=1, label="Frame (both sides and their difference)",
                                     visible=False, elem_id="frame-slider")
            with gr.Row(equal_height=True):
                frame_baseline = gr.Image(label="Baseline frame", format="png", type="numpy", interactive=False,
                                          elem_id="frame-baseline", height=240)
                frame_optimized = gr.Image(label="Optimized frame", format="png", type="numpy", interactive=False,
                                           elem_id="frame-optimized", height=240)
                frame_heatmap = gr.Image(label="Difference", format="png", type="numpy", interactive=False,
                                         elem_id="frame-heatmap", height=240)
            frame_caption = gr.Markdown(elem_classes="lab-note", elem_id="frame-caption")
            frames_plot = gr.Plot(label="Quality per frame", format="png", show_label=False, elem_id="frames-plot")
        with gr.Tab("Metrics", id="tab-metrics"):
            metrics = gr.Dataframe(headers=["metric", "baseline", "optimized"], value=[], interactive=False,
                                   wrap=True, max_height=900, column_widths=["34%", "33%", "33%"],
                                   elem_id="metrics-table")
            gr.Markdown("Time is per image, the median of the timed runs with min-max. On a CPU it is each run's "
                        "own time: its wall time less the time its process waited for a core that another process "
                        "held (wall time is the next row); on a GPU, wall time. The two sides' runs are taken in "
                        "turns, in mirrored blocks, so the machine's ups and downs hit both alike; the speedup is "
                        "the geometric mean of the paired ratios with its 95% confidence interval. Faster or slower "
                        "means the whole interval is more than 5% from 1.0, equivalent that it lies within ±5%, "
                        "inconclusive that it reaches across that edge (run longer or on a quieter machine). "
                        "Memory is the peak during the timed runs (GPU allocated on CUDA, process RSS growth on "
                        "CPU), with the same words against a band of 5% of the baseline's peak.",
                        elem_classes="lab-note")
        with gr.Tab("Charts", id="tab-charts"):  # one chart per row: each carries a lot (runs, steps, blocks)
            latency_plot = gr.Plot(label="Latency", format="png", show_label=False, elem_id="latency-plot")
            per_step_plot = gr.Plot(label="Per-step time", format="png", show_label=False, elem_id="per-step-plot")
            memory_plot = gr.Plot(label="Peak memory", format="png", show_label=False, elem_id="memory-plot")
            work_plot = gr.Plot(label="Work per step", format="png", show_label=False, elem_id="work-plot")
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
                                         column_widths=["4%", "14%", "28%", "22%", "14%", "10%", "8%"])
    history = gr.State([])
    shown = gr.State(None)
    return ResultsPanel(headline=headline, slider=slider, heatmap=heatmap, heatmap_caption=caption, metrics=metrics,
                        latency_plot=latency_plot, memory_plot=memory_plot, per_step_plot=per_step_plot,
                        work_plot=work_plot, details=details, report_json=report_json, report_files=report_files,
                        history_table=history_table, history=history, tabs=tabs, video_summary=video_text,
                        baseline_video=baseline_video, optimized_video=optimized_video, frame_slider=frame_slider,
                        frame_baseline=frame_baseline, frame_optimized=frame_optimized, frame_heatmap=frame_heatmap,
                        frame_caption=frame_caption, frames_plot=frames_plot, shown=shown)


def wire_results(panel: ResultsPanel) -> None:
    panel.history_table.select(show_history_entry, panel.history, panel.views, api_visibility="private")
    panel.frame_slider.input(frame_images, [panel.shown, panel.frame_slider], panel.frame_views,
                             show_progress="hidden", trigger_mode="always_last", api_visibility="private")


# How many values `render` returns (= len(ResultsPanel.views)): the twelve of images, then the Video tab's eleven.
VIEW_COUNT = 23

__all__ = ["HISTORY_LENGTH", "VIEW_COUNT", "ResultsPanel", "add_to_history", "build_results", "history_rows",
           "json_safe", "render", "save_report_files", "wire_results"]
