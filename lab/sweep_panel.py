"""The "Sweep & tune" tab: which settings should I use? Vary any settings over a prompt set, see the speed-quality
Pareto front and a table, load any point into the controls ("use this"), or let the tuner find the fastest
configuration above a quality floor. Runs in the same queue slot as comparisons, with progress and cancel; the
model and run settings are those of the Compare tab.

Also the public API's `sweep` and `tune` endpoints, within the server's limits (points, prompts, time).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from lab import fields
from lab.context import ServerContext
from lab.controls import PRIVATE, SettingsPanel, fill
from lab.errors import user_error
from lab.run_panel import GPU_QUEUE, session_of
from lab.sharing import values_for
from lab.text import escape, log
from optim.config import CACHE_VARIANTS, parse_optim
from optim.errors import ConfigError, OptimError
from optim.presets import make_preset
from optim.prompts import default_prompt_set, load_prompt_set, shipped_prompt_sets
from optim.sweep import (
    IDENTICAL_PSNR,
    QUALITY_METRICS,
    SETTABLE,
    SWEEPS_DIR,
    load_space,
    parse_floor,
    run_sweep,
    shipped_spaces,
)
from optim.tune import parse_budget, tune

# Six columns, so the table fits a 1280 px window: the verdict beside its interval, the worst case's SSIM and PSNR
# in one cell, the status only when a point was not measured.
TABLE_HEADERS = ["#", "configuration", "speedup (95% CI), verdict", "work", "worst prompt: SSIM · PSNR", "status"]
TABLE_WIDTHS = ["5%", "33%", "24%", "8%", "18%", "12%"]
CUSTOM_SPACE = "custom (edit below)"


@dataclass
class SweepPanel:
    space_picker: Any
    space_code: Any
    vary_field: Any
    vary_from: Any
    vary_to: Any
    vary_points: Any
    build_button: Any
    prompt_set: Any
    seeds: Any
    quality: Any
    floor: Any
    budget: Any
    sweep_button: Any
    tune_button: Any
    cancel_button: Any
    status: Any
    chart: Any
    table: Any
    files: Any
    rows: Any  # gr.State: the rows shown in the table


def _space_text(name: str) -> str:
    return (SWEEPS_DIR / f"{name}.json").read_text() if name in shipped_spaces() else ""


def numeric_paths() -> list[str]:
    """The settings a range can vary: numeric fields (thresholds, intervals, skip ranges, block counts)."""
    out = []
    for path, (cls, name) in SETTABLE.items():
        annotation = str(cls.model_fields[name].annotation)
        if ("int" in annotation or "float" in annotation) and "tuple" not in annotation and "list" not in annotation:
            out.append(path)
    return sorted(out)


def build_space(field: str, low: float, high: float, points: float, current: str) -> str:
    """A grid over one field, from low to high in `points` values, on the current space's base."""
    try:
        base = json.loads(current).get("base", {}) if current.strip() else {}
    except ValueError:
        base = {}
    count = max(2, int(points or 2))
    if field not in SETTABLE:
        raise ConfigError(f"pick a setting to vary (one of {', '.join(numeric_paths()[:6])}, ...)")
    cls, name = SETTABLE[field]
    integer = "float" not in str(cls.model_fields[name].annotation)
    values = [low + (high - low) * i / (count - 1) for i in range(count)]
    values = sorted({int(round(v)) for v in values}) if integer else [round(v, 4) for v in values]
    if field.startswith("cache.") and "method" not in base.get("cache", {}):
        method = next(m for m, c in CACHE_VARIANTS.items() if name in c.model_fields)
        base = {**base, "cache": {**base.get("cache", {}), "method": method}}
    return json.dumps({"name": f"{name}-sweep", "base": base, "grid": {field: values}}, indent=2)


def _prompts(ctx: ServerContext, name: str, seeds_text: str, model: str) -> tuple[Any, list[int]]:
    prompts = load_prompt_set(name or default_prompt_set(model))
    try:
        seeds = [int(s) for s in str(seeds_text or "0").replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"seeds {seeds_text!r}: give whole numbers separated by commas, e.g. 0,1") from None
    if not seeds:
        raise ConfigError("give at least one seed")
    if len(prompts.prompts) * len(seeds) > ctx.limits.max_sweep_prompts:
        raise ConfigError(f"{len(prompts.prompts)} prompts x {len(seeds)} seeds is more than this server allows "
                          f"(at most {ctx.limits.max_sweep_prompts}); use fewer seeds or a smaller prompt set")
    return prompts, seeds


def table_rows(rows: list[dict[str, Any]], front: set[str]) -> list[list[Any]]:
    out = []
    for index, row in enumerate(rows, start=1):
        star = "★ " if row["id"] in front else ""
        if row.get("status") != "ok":
            out.append([index, star + row["label"], "-", "-", "-", f"{row['status']}: "
                        f"{(row.get('reason') or '')[:120]}"])
            continue
        low, high = row.get("speedup_low"), row.get("speedup_high")
        span = f" ({low:.2f}–{high:.2f})" if low is not None and high is not None else ""
        # The sweep stores "identical" (infinite PSNR) as IDENTICAL_PSNR for means and charts: say it in words.
        psnr = "identical" if row["psnr_worst"] >= IDENTICAL_PSNR else f"{row['psnr_worst']:.1f} dB"
        out.append([index, star + row["label"], f"{row['speedup']:.2f}×{span} {row['verdict']}",
                    f"{row['work_fraction']:.0%}", f"{row['ssim_worst']:.4f} · {psnr}", ""])
    return out


def _files(folder: Path) -> list[str]:
    names = ["sweep.json", "sweep.csv", "pareto.png", "tuned.json", "tune.json"]
    return [str(folder / n) for n in names if (folder / n).is_file()] + sorted(str(p) for p in
                                                                              (folder / "front").glob("*.json"))


def _progress_of(progress: Any) -> Callable[[str, int, int], None] | None:
    if progress is None:
        return None

    def report(phase: str, done: int, total: int) -> None:
        progress((done, total) if total else None, desc=phase, unit="points")

    return report


def _run(ctx: ServerContext, kind: str, values: dict[str, Any], space_text: str, prompt_set: str, seeds: str,
         quality: str, floor: str, budget: str, progress: Any, should_stop: Callable[[], bool]) -> tuple[Any, Path]:
    """Run a sweep or a tune within this server's limits; returns its result and its folder."""
    if not space_text.strip():
        raise ConfigError("the space is empty: pick a shipped space or build one")
    space = load_space(space_text)
    run = fields.run_from_values(values)
    from optim.limits import check_run

    check_run(run, ctx.limits)
    prompts, seed_list = _prompts(ctx, prompt_set, seeds, run.model)
    folder = Path(tempfile.mkdtemp(dir=ctx.reports_dir, prefix=f"{kind}-"))
    if kind == "sweep":
        if quality not in QUALITY_METRICS:
            raise ConfigError(f"quality {quality!r}: one of {', '.join(QUALITY_METRICS)}")
        result = run_sweep(space, prompts, folder, run_spec=run, seeds=seed_list, quality=quality,
                           progress=_progress_of(progress), should_stop=should_stop,
                           max_points=ctx.limits.max_sweep_points, max_seconds=ctx.limits.max_sweep_seconds)
    else:
        floors = [parse_floor(text) for text in floor.split(",") if text.strip()]
        seconds = min(parse_budget(budget or "5m"), ctx.limits.max_sweep_seconds)
        result = tune(space, prompts, floors, folder, budget_s=seconds, run_spec=run, seeds=seed_list,
                      progress=_progress_of(progress), should_stop=should_stop,
                      max_evaluations=ctx.limits.max_sweep_points)
    return result, folder


def run_panel_action(ctx: ServerContext, kind: str, values: dict[str, Any], space_text: str, prompt_set: str,
                     seeds: str, quality: str, floor: str, budget: str, progress: Any = None,
                     request: Any = None) -> list[Any]:
    """The Run sweep / Tune buttons."""
    session = session_of(request)
    flag = ctx.active.start(session)
    try:
        result, folder = _run(ctx, kind, values, space_text, prompt_set, seeds, quality, floor, budget, progress,
                              flag.is_set)
    except OptimError as error:
        if flag.is_set():
            gr.Info("The sweep was cancelled; the points measured so far are kept in its folder.")
            return [gr.skip()] * 5
        raise user_error(error) from None
    except Exception as error:  # noqa: BLE001 - a bug: say so, keep serving
        log.exception("sweep failed")
        raise gr.Error(escape(f"Unexpected error ({type(error).__name__}: {error})"), duration=None) from None
    finally:
        ctx.active.finish(session, flag)
    from optim.charts import pareto_chart

    rows = result.rows
    axis = quality if kind == "sweep" else parse_floor(floor.split(",")[0]).metric
    front = {row["id"] for row in (result.front if kind == "sweep" else [])}
    if kind == "tune":
        from optim.sweep import pareto_front

        front = {row["id"] for row in pareto_front(rows, axis)}
        best = result.best
        status = (f"**Tuned** ({result.strategy}, {result.evaluations} evaluations): "
                  + (f"fastest meeting {escape(floor)}: **{escape(best['label'])}**, {best['speedup']:.2f}× "
                     f"({best['speedup_low']:.2f}–{best['speedup_high']:.2f}). Select its row to load it, or "
                     "download tuned.json." if best else f"no evaluated configuration meets {escape(floor)}."))
    else:
        status = (f"**{len(rows)} points** over {len(load_prompt_set(prompt_set).prompts)} prompts "
                  f"({result.elapsed_s:.0f} s, {result.pipeline_s:.0f} s inside the pipeline). ★ marks the "
                  "Pareto front. Select a row to load that configuration into the controls.")
    chart = pareto_chart(rows, [r for r in rows if r["id"] in front], axis, title=f"speed against {axis}")
    return [status, chart, table_rows(rows, front), _files(folder), rows]


def use_row(ctx: ServerContext, rows: list[dict[str, Any]] | None, values: dict[str, Any],
            evt: gr.SelectData) -> list[Any]:
    """Selecting a row loads that configuration into the controls, as a preset named after it."""
    from lab.controls import no_change, warn

    rows = rows or []
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if not isinstance(index, int) or not 0 <= index < len(rows) or rows[index].get("status") != "ok":
        warn("Pick a measured row (status ok).")
        return no_change()
    row = rows[index]
    preset = make_preset(f"sweep-point-{index + 1}", parse_optim(row["settings"]),
                         description=f"From a sweep: {row['label']}, {row['speedup']:.2f}x")
    from lab.sharing import current_run

    gr.Info(escape(f"Loaded '{row['label']}' into the settings (Compare tab)."))
    return fill(ctx, values_for(ctx, preset, current_run(values)), shipped=ctx.matching_shipped(preset))


# ------------------------------------------------------------------------------------------------- layout


def build_sweep_panel(ctx: ServerContext) -> SweepPanel:
    gr.Markdown("Vary settings over a prompt set and see what each point buys and costs: the speedup (with its "
                "interval, timed in turns with the baseline) against the worst quality over the prompts. The model "
                "and run settings are the Compare tab's; a point's timed runs stop at 20 s, or sooner at that tab's "
                "time budget.", elem_classes="lab-note")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=420):
            spaces = shipped_spaces()
            space_picker = gr.Dropdown([CUSTOM_SPACE, *spaces], value="fbc-threshold" if "fbc-threshold" in spaces
                                       else CUSTOM_SPACE, label="Space", info="What to vary: a shipped space, or "
                                       "build or write one below.", elem_id="sweep-space")
            with gr.Accordion("Build a range", open=False):
                paths = numeric_paths()
                vary_field = gr.Dropdown(paths, value="cache.threshold" if "cache.threshold" in paths else None,
                                         label="Vary", elem_id="sweep-vary")
                with gr.Row():
                    vary_from = gr.Number(0.05, label="from", min_width=90)
                    vary_to = gr.Number(0.3, label="to", min_width=90)
                    vary_points = gr.Number(6, label="points", precision=0, minimum=2, maximum=50, min_width=90)
                build_button = gr.Button("Build space", size="sm")
            space_code = gr.Code(_space_text("fbc-threshold"), language="json", label="Space (JSON)",
                                 elem_id="sweep-space-json", interactive=True, max_lines=18,
                                 wrap_lines=True)
            with gr.Row():
                prompt_set = gr.Dropdown(shipped_prompt_sets(), value="embedded", label="Prompt set",
                                         elem_id="sweep-prompts")
                seeds = gr.Textbox("0", label="Seeds", info="Comma-separated; each with every prompt.",
                                   elem_id="sweep-seeds")
            quality = gr.Dropdown(list(QUALITY_METRICS), value="ssim_worst", label="Quality axis",
                                  info="Worst: the lowest over the prompt set.", elem_id="sweep-quality")
            with gr.Row():
                floor = gr.Textbox("ssim>=0.98", label="Tuner: quality floor",
                                   info="Worst case over the prompts, e.g. ssim>=0.98, psnr>=35.",
                                   elem_id="sweep-floor")
                budget = gr.Textbox("5m", label="Tuner: budget", info="e.g. 90s, 5m.", elem_id="sweep-budget")
            with gr.Row():
                sweep_button = gr.Button("Run sweep", variant="primary", elem_id="sweep-button")
                tune_button = gr.Button("Tune", variant="secondary", elem_id="tune-button")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="sweep-cancel")
        with gr.Column(scale=1, min_width=480):
            status = gr.Markdown("Run a sweep to see its Pareto front here.", elem_id="sweep-status")
            chart = gr.Plot(label="Pareto front", format="png", show_label=False, elem_id="sweep-chart")
            table = gr.Dataframe(headers=TABLE_HEADERS, value=[], interactive=False, wrap=True,
                                 column_widths=TABLE_WIDTHS, elem_id="sweep-table")
            files = gr.File(label="sweep.json, sweep.csv, pareto.png, presets of the front (and tuned.json)",
                            file_count="multiple", interactive=False)
    rows = gr.State([])
    return SweepPanel(space_picker=space_picker, space_code=space_code, vary_field=vary_field, vary_from=vary_from,
                      vary_to=vary_to, vary_points=vary_points, build_button=build_button, prompt_set=prompt_set,
                      seeds=seeds, quality=quality, floor=floor, budget=budget, sweep_button=sweep_button,
                      tune_button=tune_button, cancel_button=cancel_button, status=status, chart=chart, table=table,
                      files=files, rows=rows)


def wire_sweep_panel(ctx: ServerContext, panel: SweepPanel, settings: SettingsPanel) -> None:
    panel.space_picker.change(lambda name: _space_text(name) if name != CUSTOM_SPACE else gr.skip(),
                              panel.space_picker, panel.space_code, queue=False, **PRIVATE)

    def build(field: str, low: float, high: float, points: float, current: str) -> str:
        try:
            return build_space(field, low, high, points, current)
        except OptimError as error:
            raise user_error(error) from None

    panel.build_button.click(build, [panel.vary_field, panel.vary_from, panel.vary_to, panel.vary_points,
                                     panel.space_code], panel.space_code, **PRIVATE)
    inputs = [panel.space_code, panel.prompt_set, panel.seeds, panel.quality, panel.floor, panel.budget]
    outputs = [panel.status, panel.chart, panel.table, panel.files, panel.rows]
    events = []
    for kind, button in (("sweep", panel.sweep_button), ("tune", panel.tune_button)):
        def handler(data: dict[Any, Any], progress: gr.Progress = gr.Progress(), request: gr.Request = None,
                    kind: str = kind) -> list[Any]:
            return run_panel_action(ctx, kind, settings.values_of(data), *[data[c] for c in inputs],
                                    progress=progress, request=request)

        events.append(button.click(handler, {*settings.control_list, *inputs}, outputs,
                                   show_progress_on=[panel.status], **GPU_QUEUE, **PRIVATE))

    def cancel(request: gr.Request = None) -> None:
        if ctx.active.stop(session_of(request)):
            gr.Info("Cancelling: the running point's worker is stopped; finished points are kept.")

    panel.cancel_button.click(cancel, None, None, cancels=events, **PRIVATE)

    def select(data: dict[Any, Any], evt: gr.SelectData) -> list[Any]:
        return use_row(ctx, data[panel.rows], settings.values_of(data), evt)

    panel.table.select(select, {*settings.control_list, panel.rows}, settings.fill_outputs, **PRIVATE)


# ---------------------------------------------------------------------------------------------------- API


__all__ = ["SweepPanel", "build_sweep_panel", "wire_sweep_panel"]
