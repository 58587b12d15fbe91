"""Running a comparison from the page: the Run and Cancel buttons, progress by phase and step, one GPU job at a
time (a queue with positions), errors as messages, and each result added to the session's history.

`execute` is the one path from settings to a `Comparison` for the page and the API: the server's limits first,
then the engine (`optim.engine.compare`), or ZeroGPU's GPU function on a ZeroGPU Space (`lab.zerogpu`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from lab import fields
from lab.context import ServerContext
from lab.controls import PRIVATE, SettingsPanel
from lab.results import (
    VIEW_COUNT,
    ResultsPanel,
    add_to_history,
    history_rows,
    render,
    render_error,
    save_report_files,
)
from lab.text import fit_check, log
from optim.config import RunSpec
from optim.engine import Comparison, compare
from optim.errors import Cancelled, ConfigError, OptimError
from optim.limits import check_run
from optim.presets import Preset

PHASE_NAMES = {"baseline": "Baseline", "optimized": "Optimized"}
GPU_QUEUE = dict(concurrency_limit=1, concurrency_id="gpu")  # the Run button and the API share one slot


@dataclass
class RunPanel:
    run_button: Any
    cancel_button: Any


def session_of(request: Any) -> str:
    return getattr(request, "session_hash", None) or "local"


# The page redraws on every progress message; per-step messages (dozens a second on a small model) kept the
# browser busy enough to slow the measurement it was showing (benchmarks/page_cpu.py). A phase change is always
# shown; steps within a phase at most this often.
PROGRESS_INTERVAL_S = 0.5


def progress_reporter(progress: Any) -> Callable[[str, int, int], None]:
    """Engine phases ('baseline: timed run 1/3', done, total) -> the progress bar, throttled."""
    last = {"phase": None, "at": 0.0}

    def report(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase == last["phase"] and now - last["at"] < PROGRESS_INTERVAL_S and done < total:
            return
        last["phase"], last["at"] = phase, now
        side, _, what = phase.partition(": ")
        label = f"{PHASE_NAMES.get(side, side)} · {what or side}"
        if what == "loading":
            progress(None, desc=f"{label} model…")
        else:
            progress((done, total), desc=label, unit="steps")

    return report


def execute(ctx: ServerContext, run: RunSpec, preset: Preset, *, progress: Any = None,
            should_stop: Callable[[], bool] | None = None) -> Comparison:
    """Check the request against this server's limits, then compare (on ZeroGPU inside @spaces.GPU)."""
    check_run(run, ctx.limits)
    ctx.resolve(run.model)
    # A side that cannot fit this GPU (on ZeroGPU: the one it lends) is refused before anything loads or any
    # GPU quota is spent.
    if (ctx.cuda or ctx.zero_gpu) and run.device != "cpu":
        fit = fit_check(ctx, preset, run, suggest=True)
        refusal = fit.refusal() if fit is not None else None
        if refusal:
            raise ConfigError(f"will not fit: {refusal}")
    if ctx.zero_gpu:
        return ctx.gpu_runner.compare(run, preset, progress=progress)
    reporter = progress_reporter(progress) if progress is not None else None
    return compare(run, preset, isolation=ctx.isolation, progress=reporter, should_stop=should_stop,
                   baseline_cache=ctx.baselines,
                   allow_local=ctx.limits.allow_local_models, local_roots=ctx.limits.local_model_roots,
                   memory_limit_mb=ctx.limits.max_side_memory_mb)


def cancel_run(ctx: ServerContext, request: Any = None) -> None:
    """Cancel this session's comparison: its worker process is killed, which frees its memory."""
    if ctx.active.stop(session_of(request)):
        gr.Info("Cancelled: the comparison's worker process was stopped and its memory freed.")


def run_comparison(ctx: ServerContext, values: dict[str, Any], history: list[dict[str, Any]] | None,
                   progress: Any = None, request: Any = None) -> list[Any]:
    """The Run button: validate, compare both sides, show everything, add it to this session's history. A run
    that is refused (bad settings, a server limit, an unknown model) or fails shows why where the result goes,
    and clears the previous result from view (the History tab keeps it); the server logs one line for a user's
    mistake and a traceback only for a bug."""
    keep_history = [gr.skip(), gr.skip()]
    try:
        preset, run = fields.settings_from_values(values, ctx.shipped)
    except OptimError as error:
        log.info("refused: %s", error)
        return render_error(str(error)) + keep_history
    session = session_of(request)
    flag = ctx.active.start(session)
    try:
        if progress is not None:
            progress(0, desc="Checking the settings…")
        comparison = execute(ctx, run, preset, progress=progress, should_stop=flag.is_set)
        if progress is not None:
            progress(None, desc="Metrics · images, tables and charts…")
        files = save_report_files(ctx, comparison)
    except Cancelled:
        gr.Info("The comparison was cancelled.")
        return [gr.skip()] * (VIEW_COUNT + 2)  # every view, the history and its table
    except OptimError as error:
        log.info("refused: %s", error)
        return render_error(str(error)) + keep_history
    except gr.Error as error:  # from ZeroGPU's GPU function (a quota, a worker error): already a message
        log.info("refused: %s", error.message)
        return render_error(str(error.message)) + keep_history
    except Exception as error:  # noqa: BLE001 - a bug: say so plainly, keep serving
        log.exception("comparison failed")
        return render_error(f"Unexpected error ({type(error).__name__}: {error}). The app is still running; please "
                            "report this with your settings (the share link).", bug=True) + keep_history
    finally:
        ctx.active.finish(session, flag)
    entry, history = add_to_history(history, comparison, files)
    return render(entry) + [history, history_rows(history)]


def build_run_panel() -> RunPanel:
    with gr.Row():
        run_button = gr.Button("Run comparison", variant="primary", scale=3, elem_id="run-button")
        cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel-button")
    return RunPanel(run_button=run_button, cancel_button=cancel_button)


def wire_run_panel(ctx: ServerContext, panel: RunPanel, settings: SettingsPanel, results: ResultsPanel) -> None:
    def on_run(data: dict[Any, Any], progress: gr.Progress = gr.Progress(), request: gr.Request = None) -> list[Any]:
        return run_comparison(ctx, settings.values_of(data), data[results.history], progress, request)

    def on_cancel(request: gr.Request = None) -> None:
        cancel_run(ctx, request)

    run_event = panel.run_button.click(
        on_run, {*settings.control_list, results.history},
        results.views + [results.history, results.history_table],
        show_progress="minimal", show_progress_on=[results.headline], scroll_to_output=False, **GPU_QUEUE,
        **PRIVATE)
    panel.cancel_button.click(on_cancel, None, None, cancels=[run_event], **PRIVATE)
