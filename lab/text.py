"""What the page says, as HTML and markdown, without Gradio: the settings check, the model note, the headline of
a result, its metrics table and details, the history rows, the header and the capabilities table. Pure functions
of their inputs (reports are report.json's dicts).
"""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any

from lab.context import ServerContext
from lab.fields import settings_from_values
from optim.capabilities import SECTION_TITLES, Capabilities
from optim.config import OptimConfig, minimal_dict
from optim.engine import prepare
from optim.errors import OptimError
from optim.limits import check_run
from optim.models import POPULAR_MODELS
from optim.report import fmt_mb, fmt_s, runs_text, summary_rows
from optim.report_model import Report
from optim.synthetic import SYNTHETIC_MODELS

log = logging.getLogger("optim.app")

EMPTY_RESULTS = (
    "<div class='lab-empty'>Pick a preset or set the optimizations, then <b>Run comparison</b>.<br>"
    "Both sides use the same prompt, seed and settings; the numbers and images appear here.</div>"
)


def escape(message: str) -> str:
    """Gradio shows messages as HTML; engine messages contain '<=' and quotes."""
    return html.escape(message, quote=False)


def _md_inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escape(text))


# -------------------------------------------------------------------------------- settings summary


def describe_optim(optim: OptimConfig) -> list[str]:
    """What the optimized side changes, one short phrase per technique."""
    parts = []
    for section, settings in minimal_dict(optim).items():
        details = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings.items())
        parts.append(f"**{section}** {details}")
    return parts


def settings_summary(ctx: ServerContext, values: dict[str, Any]) -> str:
    """HTML: what the optimized side will change, and any problem the engine finds before loading."""
    try:
        preset, run = settings_from_values(values, ctx.shipped)
    except OptimError as error:
        return f"<div class='lab-check bad'><b>Cannot run:</b> {escape(str(error))}</div>"
    parts = describe_optim(preset.optim)
    lines = [
        "<div class='lab-check'>",
        "<b>Optimized side:</b> " + (" · ".join(_md_inline(p) for p in parts) if parts else
                                        "nothing changed (a harness check: images must be bit-identical)"),
    ]
    problem = None
    try:
        check_run(run, ctx.limits)
        ref = ctx.resolve(run.model)
        if ref.kind != "hub":  # Hub models would need a download to check: that happens at run time
            _, resolved = prepare(run, preset.optim, allow_local=ctx.limits.allow_local_models,
                                  local_roots=ctx.limits.local_model_roots)
            lines.append(
                f"<br>Each side: {resolved.warmup_runs} warm-up + {resolved.timed_runs} timed runs of "
                f"{resolved.steps} steps at {resolved.width}×{resolved.height}, {resolved.dtype} on {resolved.device}."
            )
    except OptimError as error:
        problem = str(error)
    except Exception as error:  # noqa: BLE001 - a live check must never break the page
        log.exception("settings check")
        problem = f"the settings could not be checked ({type(error).__name__}: {error})"
    if problem:
        lines.append(f"<br><span class='bad'><b>Will be refused:</b> {escape(problem)}</span>")
    lines.append("</div>")
    return "\n".join(lines)


def model_note(ctx: ServerContext, model: str) -> str:
    """A line under the model picker: what this model is and what to expect."""
    model = (model or "").strip()
    try:
        ref = ctx.resolve(model or "embedded")
    except OptimError as error:
        return f"<span class='bad'>{escape(str(error))}</span>"
    if ref.kind == "embedded":
        return ("A tiny FLUX-architecture model built into the app (a CPU draws an image in well under a second). "
                "It draws “a COLOUR SHAPE on a COLOUR background”: red, green, blue, yellow, white, black; circle, "
                "square, triangle; optionally small/large and “at the top left” (or top right, bottom left ...).")
    if ref.kind == "synthetic":
        spec = SYNTHETIC_MODELS[ref.location]
        gpu = "" if ctx.cuda else " <b>This machine has no GPU: it will be refused here.</b>"
        return (f"<b class='bad'>Synthetic model, only meaningful on a GPU</b>: {escape(spec.description)}. "
                f"No download; images are noise, but latency and memory are those of the real model.{gpu}")
    if ref.kind == "local":
        return f"Local diffusers folder <code>{escape(ref.location)}</code>."
    known = "recommended settings filled in" if ref.location in POPULAR_MODELS else "generic defaults filled in"
    return (f"Hugging Face Hub model ({known}). Downloaded on first use: several GB for large models; gated ones "
            "need HF_TOKEN and an accepted licence.")


# ------------------------------------------------------------------------------------------- results


HISTORY_HEADERS = ["#", "preset", "run", "speedup", "verdict", "memory", "PSNR", "work"]


def history_rows(history: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for entry in reversed(history):
        r: Report = entry["report"]
        run, quality = r.run, r.quality
        rows.append([
            entry["number"],
            r.preset.name,
            f"{run['model']} · {plural(run['steps'], 'step')} · {run['width']}×{run['height']} · seed {run['seed']} "
            f"· {entry['time']}",
            f"{r.speedup:.2f}×",
            r.verdict,
            f"{fmt_mb(r.baseline.peak_memory_mb)} → {fmt_mb(r.optimized.peak_memory_mb)}",
            "identical" if quality.psnr_db is None else f"{quality.psnr_db:.1f} dB",
            f"{r.optimized.work_fraction:.0%}",
        ])
    return rows


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def metrics_rows(report: Report) -> list[list[str]]:
    """The engine's summary rows, with the work skipped spelled out."""
    rows = [list(row) for row in summary_rows(report)]
    work = report.optimized.work_fraction
    index = next((i for i, r in enumerate(rows) if r[0] == "transformer work computed"), len(rows) - 1) + 1
    rows.insert(index, ["transformer work skipped", "0%", f"{max(0.0, 1 - work):.0%}"])
    rows.insert(2, ["timed runs", runs_text(report), ""])
    return rows


def _tile(title: str, value: str, sub: str, tone: str = "") -> str:
    return (f"<div class='lab-stat {tone}'><div class='lab-stat-title'>{title}</div>"
            f"<div class='lab-stat-value'>{value}</div><div class='lab-stat-sub'>{sub}</div></div>")


VERDICT_WORDS = {
    "faster": "faster",
    "slower": "slower",
    "no measurable difference": "no measurable difference",
    "too few runs": "too few runs to tell",
}


def headline_html(report: Report) -> str:
    """The four numbers people look at first, how sure the speedup is, and what was compared."""
    b, o, q, timing = report.baseline, report.optimized, report.quality, report.timing
    speedup, interval = report.speedup, timing.speedup
    tone = {"faster": "good", "slower": "bad"}.get(report.verdict, "")
    latency = f"{fmt_s(b.latency_s.median)} → {fmt_s(o.latency_s.median)}"
    if interval.low is not None:
        sure = f"{VERDICT_WORDS[report.verdict]} · 95% CI {interval.low:.2f}–{interval.high:.2f}×"
    else:
        sure = "one run per side: no interval (use auto or 3+ runs)"
    memory = timing.memory_saving_mb
    saving = report.memory_saving_mb
    base_peak = b.peak_memory_mb or 0.0
    mem_share = (f"{abs(saving) / base_peak:.0%} {'less' if saving >= 0 else 'more'} than {fmt_mb(base_peak)}"
                 if base_peak > 0 else "baseline peak 0 MB")
    mem_tone = {"less": "good", "more": "bad"}.get(memory.verdict, "")
    if memory.verdict == "no measurable difference":
        mem_share += " · no measurable difference"
    psnr = q.psnr_db
    quality_value = "identical" if psnr is None else f"{psnr:.1f} dB"
    quality_tone = "good" if psnr is None or psnr >= 40 else "bad" if psnr < 25 else ""
    skipped = max(0.0, 1 - o.work_fraction)
    run, env = report.run, report.environment
    badges = [
        f"preset <b>{escape(report.preset.name)}</b>",
        f"{escape(run['model'])}",
        f"{plural(run['steps'], 'step')} · {run['width']}×{run['height']} · seed {run['seed']}",
        f"{escape(str(env.get('device_name') or env['device']))}",
        f"{plural(timing.runs_per_side, 'timed run')} per side, "
        + ("in turns" if timing.mode == "interleaved" else "sequential"),
    ]
    if b.reused:
        badges.append("<b>baseline kept warm</b>: loaded earlier, timed again now")
    notes = []
    if timing.contention.note:
        notes.append(f"<b>Busy machine:</b> {escape(timing.contention.note)}.")
    if timing.mode == "sequential" and timing.reason:
        notes.append(f"<b>Sequential timing:</b> {escape(timing.reason)}.")
    return (
        "<div class='lab-stats'>"
        + _tile("Speedup", f"{speedup:.2f}×", f"{latency}<br>{sure}", tone)
        + _tile("Peak memory", ("±" if abs(saving) < 0.05 else "−" if saving > 0 else "+") + fmt_mb(abs(saving)),
                mem_share, mem_tone)
        + _tile("Quality (PSNR)", quality_value, f"SSIM {q.ssim:.4f} · max diff {q.max_abs_diff}/255",
                quality_tone)
        + _tile("Work skipped", f"{skipped:.0%}", "of the transformer's work", "good" if skipped > 0.01 else "")
        + "</div><div class='lab-badges'>" + "".join(f"<span>{x}</span>" for x in badges) + "</div>"
        + "".join(f"<div class='lab-note warn'>{note}</div>" for note in notes)
    )


def details_markdown(report: Report) -> str:
    run, env, timing = report.run, report.environment, report.timing
    isolation = ("each side in its own process, both loaded at once" if env.get("isolation") == "process"
                 else "in this process, one side after the other")
    threads = env.get("threads") or {}
    lines = [
        "### Run",
        f"Model `{run['model']}` · “{run['prompt']}” · seed {run['seed']} · {plural(run['steps'], 'step')} · "
        f"{run['width']}×{run['height']} · guidance {run['guidance_scale']} · {run['dtype']} on {env['device']} "
        f"({env.get('device_name')}) · {plural(run['warmup_runs'], 'warm-up run')} per side · {isolation} · "
        f"torch {env.get('torch')}, diffusers {env.get('diffusers')}",
        "",
        "### How sure",
        f"**{timing.speedup.text}.** Timed runs: {runs_text(report)}; {timing.order}. The interval is a "
        f"{timing.speedup.method}; differences under 2% are not called faster or slower. "
        f"{threads.get('torch_threads', '?')} torch threads, OpenMP wait policy "
        f"{threads.get('omp_wait_policy', '?')}.",
    ]
    if timing.reason:
        lines.append(f"Timing was {timing.mode}: {timing.reason}.")
    if timing.contention.note:
        lines.append(f"Note: {timing.contention.note}.")
    if timing.baseline_reuse:
        lines.append(f"Baseline: {timing.baseline_reuse}.")
    if env.get("isolation_note"):
        lines.append(env["isolation_note"] + ".")
    lines += [
        "",
        "### Applied to the optimized side, in order",
        *([f"1. {step}" for step in report.optimized.applied] or ["Nothing: both sides ran the same pipeline."]),
    ]
    if report.optimized.warnings:
        lines += ["", "### Warnings", *[f"- {w}" for w in report.optimized.warnings]]
    return "\n".join(lines)


def heatmap_caption(report: Report) -> str:
    scale = report.quality.heatmap_scale
    if report.quality.max_abs_diff == 0:
        return "**Bit-identical**: no pixel differs."
    return (f"Largest per-pixel channel difference, black = identical, **white = {plural(scale, 'level')} of "
            f"255**. Mean difference {report.quality.mean_abs_diff:.3f}.")


# -------------------------------------------------------------------------------------- about this server


def header_html(ctx: ServerContext) -> str:
    d = ctx.device
    if d.cuda:
        where = [f"GPU: {escape(str(d.name))}", f"{d.memory_gb} GB", f"CUDA {d.cuda_version}",
                 f"compute {d.compute_capability}"]
    else:
        where = [f"CPU: {escape(str(d.name))}", f"{d.cpu_count} cores",
                 f"{d.ram_gb} GB RAM" if d.ram_gb else "RAM unknown", "no GPU"]
    where += [f"torch {d.torch}", f"diffusers {d.diffusers}", f"Python {d.python}"]
    if ctx.zero_gpu:
        where.append("ZeroGPU: a GPU per comparison; just-in-time torch.compile is disabled there")
    limits = ctx.limits
    if limits.public:
        where.append(f"public server: ≤ {limits.max_steps} steps, ≤ {limits.max_pixels // 1024}K pixels, "
                     f"≤ {limits.max_timed_runs} timed runs")
    return (
        "<div id='lab-header'><h1>Diffusion Optimization Lab</h1>"
        "<p class='lab-tagline'>Run a diffusers pipeline as a baseline and with the optimizations you choose "
        "(attention backend, step cache, quantization, offloading, torch.compile), side by side: what each setting "
        "buys in latency and memory, and what it costs in image quality.</p>"
        "<div class='lab-device'>" + "".join(f"<span>{w}</span>" for w in where) + "</div></div>"
    )


def capabilities_markdown(caps: Capabilities) -> str:
    parts = []
    for path, options in caps.options.items():
        rows = ["| option | here | why not |", "|---|---|---|"]
        for option in options:
            mark = "✅" if option.available else "—"
            reason = (option.reason or option.note or "").replace("|", "/")
            rows.append(f"| `{option.value}` | {mark} | {reason} |")
        parts.append(f"**{SECTION_TITLES.get(path, path)}** (`{path}`)\n\n" + "\n".join(rows))
    return "\n\n".join(parts)
