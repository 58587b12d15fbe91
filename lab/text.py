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
from optim.report import fmt_mb, fmt_s, summary_rows
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


HISTORY_HEADERS = ["#", "preset", "run", "speedup", "peak memory", "PSNR", "work done"]


def history_rows(history: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for entry in reversed(history):
        r = entry["report"]
        run, quality = r["run"], r["quality"]
        rows.append([
            entry["number"],
            r["preset"]["name"],
            f"{run['model']} · {run['steps']} steps · {run['width']}×{run['height']} · seed {run['seed']} "
            f"· {entry['time']}",
            f"{r['speedup']:.2f}×",
            f"{fmt_mb(r['baseline']['peak_memory_mb'])} → {fmt_mb(r['optimized']['peak_memory_mb'])}",
            "identical" if quality["psnr_db"] is None else f"{quality['psnr_db']:.1f} dB",
            f"{r['optimized']['work_fraction']:.0%}",
        ])
    return rows


def metrics_rows(report: dict[str, Any]) -> list[list[str]]:
    """The engine's summary rows, with the memory saving and the work skipped spelled out."""
    rows = [list(row) for row in summary_rows(report)]
    saving = report["memory_saving_mb"]
    base_peak = report["baseline"]["peak_memory_mb"] or 0.0
    share = f" ({-saving / base_peak:+.0%})".replace("-", "−") if base_peak > 0 else ""
    text = f"saves {fmt_mb(saving)}{share}" if saving >= 0 else f"uses {fmt_mb(-saving)} more{share}"
    index = next((i for i, r in enumerate(rows) if r[0] == "peak memory"), len(rows) - 1) + 1
    rows.insert(index, ["peak memory saving", "", text])
    work = report["optimized"]["work_fraction"]
    index = next((i for i, r in enumerate(rows) if r[0] == "transformer work computed"), len(rows) - 1) + 1
    rows.insert(index, ["transformer work skipped", "0%", f"{max(0.0, 1 - work):.0%}"])
    return rows


def _tile(title: str, value: str, sub: str, tone: str = "") -> str:
    return (f"<div class='lab-stat {tone}'><div class='lab-stat-title'>{title}</div>"
            f"<div class='lab-stat-value'>{value}</div><div class='lab-stat-sub'>{sub}</div></div>")


def headline_html(report: dict[str, Any]) -> str:
    """The four numbers people look at first, and what was compared."""
    b, o, q = report["baseline"], report["optimized"], report["quality"]
    speedup = report["speedup"]
    tone = "good" if speedup >= 1.03 else "bad" if speedup <= 0.97 else ""
    latency = f"{fmt_s(b['latency_s']['median'])} → {fmt_s(o['latency_s']['median'])}"
    # Overlapping min-max ranges of the timed runs: the difference is within this machine's timing noise.
    overlap = (o["latency_s"]["max"] >= b["latency_s"]["min"] and b["latency_s"]["max"] >= o["latency_s"]["min"]
               and len(b["latency_s"]["runs"]) + len(o["latency_s"]["runs"]) > 2)
    if overlap:
        tone, latency = "", latency + " · within noise"
    saving = report["memory_saving_mb"]
    base_peak = b["peak_memory_mb"] or 0.0
    mem_share = (f"{abs(saving) / base_peak:.0%} {'less' if saving >= 0 else 'more'} than {fmt_mb(base_peak)}"
                 if base_peak > 0 else "baseline peak 0 MB")
    mem_tone = "good" if saving > 0.02 * base_peak and saving > 1 else "bad" if saving < -0.02 * base_peak - 1 else ""
    psnr = q["psnr_db"]
    quality_value = "identical" if psnr is None else f"{psnr:.1f} dB"
    quality_tone = "good" if psnr is None or psnr >= 40 else "bad" if psnr < 25 else ""
    skipped = max(0.0, 1 - o["work_fraction"])
    run, env = report["run"], report["environment"]
    badges = [
        f"preset <b>{escape(report['preset']['name'])}</b>",
        f"{escape(run['model'])}",
        f"{run['steps']} steps · {run['width']}×{run['height']} · seed {run['seed']}",
        f"{escape(str(env.get('device_name') or env['device']))}",
    ]
    if b.get("reused"):
        badges.append("<b>baseline reused</b>: measured earlier on this server with the same settings")
    return (
        "<div class='lab-stats'>"
        + _tile("Speedup", f"{speedup:.2f}×", latency, tone)
        + _tile("Peak memory", ("±" if abs(saving) < 0.05 else "−" if saving > 0 else "+") + fmt_mb(abs(saving)),
                mem_share, mem_tone)
        + _tile("Quality (PSNR)", quality_value, f"SSIM {q['ssim']:.4f} · max diff {q['max_abs_diff']}/255",
                quality_tone)
        + _tile("Work skipped", f"{skipped:.0%}", "of the transformer's work", "good" if skipped > 0.01 else "")
        + "</div><div class='lab-badges'>" + "".join(f"<span>{x}</span>" for x in badges) + "</div>"
    )


def details_markdown(report: dict[str, Any]) -> str:
    run, env = report["run"], report["environment"]
    isolation = "each side in its own process" if env.get("isolation") == "process" else "in this process"
    lines = [
        "### Run",
        f"Model `{run['model']}` · “{run['prompt']}” · seed {run['seed']} · {run['steps']} steps · "
        f"{run['width']}×{run['height']} · guidance {run['guidance_scale']} · {run['dtype']} on {env['device']} "
        f"({env.get('device_name')}) · {run['warmup_runs']} warm-up + {run['timed_runs']} timed runs per side, "
        f"{isolation} · torch {env.get('torch')}, diffusers {env.get('diffusers')}",
        "",
        "### Applied to the optimized side, in order",
        *([f"1. {step}" for step in report["optimized"]["applied"]] or ["Nothing: both sides ran the same pipeline."]),
    ]
    warnings = list(report["optimized"]["warnings"])
    if report["baseline"].get("reused"):
        lines += ["", "The baseline was **reused**: this server measured it earlier with the same model and run "
                  "settings (its numbers are from that run)."]
    if warnings:
        lines += ["", "### Warnings", *[f"- {w}" for w in warnings]]
    return "\n".join(lines)


def heatmap_caption(report: dict[str, Any]) -> str:
    scale = report["quality"]["heatmap_scale"]
    if report["quality"]["max_abs_diff"] == 0:
        return "**Bit-identical**: no pixel differs."
    return (f"Largest per-pixel channel difference, black = identical, **white = {scale} level"
            f"{'s' if scale != 1 else ''} of 255**. Mean difference {report['quality']['mean_abs_diff']:.3f}.")


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
