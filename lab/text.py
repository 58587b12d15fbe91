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
from optim.families import FAMILIES, TECHNIQUE_LABELS, TECHNIQUES, technique_support
from optim.limits import check_run
from optim.models import EMBEDDED_VIDEO_MODEL, POPULAR_MODELS, TINY_NOTE, TINY_PREFIX
from optim.report import estimator_sentence, fmt_mb, fmt_s, runs_text, summary_rows
from optim.report_model import Report
from optim.stats import NEGLIGIBLE
from optim.synthetic import SYNTHETIC_MODELS

log = logging.getLogger("optim.app")

EMPTY_RESULTS = (
    "<div class='lab-empty'>Pick a preset or set the optimizations, then <b>Run comparison</b>.<br>"
    "Both sides use the same prompt, seed and settings; the numbers and images appear here.</div>"
)


def escape(message: str) -> str:
    """Gradio shows messages as HTML; engine messages contain '<=' and quotes."""
    return html.escape(message, quote=False)


def plain_markdown(text: str | None) -> str | None:
    """Text shown as written where Gradio renders a little Markdown (a control's `info`): its renderer takes a
    `*` as an emphasis mark and drops it, and honours no escape (a backslash or an HTML entity shows literally),
    so a `*` becomes the look-alike U+2217. The settings' help avoids wildcards anyway."""
    return None if text is None else text.replace("*", "\u2217")


def _md_inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escape(text))


# -------------------------------------------------------------------------------- settings summary


def describe_optim(optim: OptimConfig) -> list[str]:
    """What the optimized side changes, one short phrase per technique it turns on, with every setting of that
    technique (a setting at its default is listed too: it still applies)."""
    full = optim.model_dump(mode="json")
    parts = []
    for section in minimal_dict(optim):
        settings = full[section] if isinstance(full[section], dict) else {section: full[section]}
        details = ", ".join(f"{k}={_setting(v)}" for k, v in settings.items())
        parts.append(f"**{section}** {details}")
    return parts


def _setting(value: Any) -> str:
    if value is None:
        return "auto"
    return value if isinstance(value, str) else json.dumps(value)


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
            frames = f" × {resolved.num_frames} frames" if resolved.num_frames else ""
            lines.append(
                f"<br>Each side: {resolved.warmup_runs} warm-up + {resolved.timed_runs} timed runs of "
                f"{resolved.steps} steps at {resolved.width}×{resolved.height}{frames}, {resolved.dtype} on "
                f"{resolved.device}."
            )
        fit = fit_check(ctx, preset, run)
        if fit is not None:
            lines.append(memory_line(ctx, fit))
            if (ctx.cuda or ctx.zero_gpu) and run.device != "cpu":
                problem = fit.refusal()
    except OptimError as error:
        problem = str(error)
    except Exception as error:  # noqa: BLE001 - a live check must never break the page
        log.exception("settings check")
        problem = f"the settings could not be checked ({type(error).__name__}: {error})"
    if problem:
        lines.append(f"<br><span class='bad'><b>Will be refused:</b> {escape(problem)}</span>")
    lines.append("</div>")
    return "\n".join(lines)


def planning_card(ctx: ServerContext) -> tuple[Any, str]:
    """The card the planner predicts for: this machine's GPU, on ZeroGPU the one it lends, else the one
    `OPTIM_PLAN_GPU` names (RTX 4090)."""
    import os

    from optim.plan.cards import Card, parse_card

    if ctx.cuda and ctx.device.memory_gb:
        return Card("this-gpu", ctx.device.memory_gb, f"this GPU ({ctx.device.name})"), "this GPU"
    if ctx.zero_gpu:  # no GPU in this process: the one `@spaces.GPU` lends (`lab.zerogpu`: the default size)
        from optim.plan.cards import CARDS

        return CARDS["zerogpu"], "this Space's ZeroGPU GPU (large: half an RTX Pro 6000, 48 GB)"
    card = parse_card(os.environ.get("OPTIM_PLAN_GPU", "rtx-4090"))
    return card, f"{card.note or card.name} (no GPU here; OPTIM_PLAN_GPU names another card)"


def fit_check(ctx: ServerContext, preset: Any, run: Any, *, suggest: bool = False) -> Any:
    """Both sides' planned GPU memory (`optim.plan.predict_sides`), or None where the model has no configs here;
    `suggest`: also what fits (seconds: the run's check, not the live summary)."""
    from optim.plan import predict_sides

    try:
        return predict_sides(run, preset.optim, planning_card(ctx)[0], suggest=suggest)
    except OptimError:
        return None


def size_text(size: float) -> str:
    """Bytes of GPU memory as read: GiB with one decimal, MB below a tenth of a GiB."""
    from optim.plan.cards import GIB

    return f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 2**20:.0f} MB"


def memory_line(ctx: ServerContext, fit: Any) -> str:
    """HTML: each side's planned GPU peak beside the card's memory."""
    _, where = planning_card(ctx)

    def side(option: Any) -> str:
        return size_text(option.need_bytes) + ("" if option.fits else " <span class='bad'>(does not fit)</span>")

    return (f"<br>GPU memory, planned for {escape(where)}: baseline {side(fit.baseline)}, optimized "
            f"{side(fit.optimized)} of {fit.card.memory_gib:.1f} GiB (<code>python -m optim plan</code> lists "
            "what fits).")


def model_note(ctx: ServerContext, model: str) -> str:
    """A line under the model picker: what this model is and what to expect."""
    model = (model or "").strip()
    try:
        ref = ctx.resolve(model or "embedded")
    except OptimError as error:
        return f"<span class='bad'>{escape(str(error))}</span>"
    if ref.kind == "embedded" and ref.name == EMBEDDED_VIDEO_MODEL:
        return ("<b>The embedded video model</b>: a tiny CogVideoX trained here (embedded/video_train.py) that draws "
                "a coloured shape moving: “a COLOUR SHAPE moving left on a COLOUR background” (or moving right, up, "
                "down, growing, shrinking, staying still), a short clip in about a second on a CPU. Video caches (PAB, "
                "FasterCache) show real behaviour on it.")
    if ref.kind == "tiny":
        key = ref.name[len(TINY_PREFIX):]
        fam = FAMILIES[key]
        kind = "videos" if fam.video else "images"
        return (f"<b>Tiny {escape(fam.pipeline_class)}, {escape(TINY_NOTE)}.</b> Every part of the real {key} "
                f"pipeline, a few hundred thousand random weights, built here in seconds: its {kind} are noise, "
                "but loading, every optimization, timing, work counting and the reports run the real code path.")
    if ref.kind == "embedded":
        return ("A tiny FLUX-architecture model built into the app (a CPU draws an image in well under a second). "
                "It draws “a COLOUR SHAPE on a COLOUR background”: red, green, blue, yellow, white, black; circle, "
                "square, triangle; optionally small/large and “at the top left” (or top right, bottom left ...).")
    if ref.kind == "synthetic":
        spec = SYNTHETIC_MODELS[ref.location]
        gpu = "" if ctx.cuda else " <b>This machine has no GPU: it will be refused here.</b>"
        made = "videos" if spec.video else "images"
        return (f"<b class='bad'>Synthetic model, only meaningful on a GPU</b>: {escape(spec.description)}. "
                f"No download; {made} are noise, but latency and memory are those of the real model.{gpu}")
    if ref.kind == "local":
        return f"Local diffusers folder <code>{escape(ref.location)}</code>."
    popular = POPULAR_MODELS.get(ref.location)
    known = "recommended settings filled in" if popular else "generic defaults filled in"
    if popular is not None and popular.num_frames:
        known += (f": a video model, {popular.num_frames} frames at {popular.width}×{popular.height}, "
                  f"{popular.fps} fps")
    return (f"Hugging Face Hub model ({known}). Downloaded on first use: several GB for large models; gated ones "
            "need HF_TOKEN and an accepted licence.")


# ------------------------------------------------------------------------------------------- results


# Seven columns (verdict beside its interval), so no header is cut at 1280 px (lab.results sets the widths).
HISTORY_HEADERS = ["#", "preset", "run", "speedup (95% CI), verdict", "peak memory", "PSNR", "work"]


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
            f"{_speedup_with_interval(r)} {r.verdict}",
            f"{fmt_mb(r.baseline.peak_memory_mb)} → {fmt_mb(r.optimized.peak_memory_mb)}",
            "identical" if quality.psnr_db is None else f"{quality.psnr_db:.1f} dB",
            f"{r.optimized.work_fraction:.0%}",
        ])
    return rows


def _speedup_with_interval(report: Report) -> str:
    interval = report.timing.speedup
    if interval.low is None:
        return f"{report.speedup:.2f}× (one run: no interval)"
    return f"{report.speedup:.2f}× ({interval.low:.2f}–{interval.high:.2f})"


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
    "equivalent": "equivalent (within ±5%)",
    "inconclusive": "inconclusive",
    "too few runs": "too few runs to tell",
}
MEMORY_WORDS = {
    "less": "uses less",
    "more": "uses more",
    "equivalent": "equivalent",
    "inconclusive": "inconclusive",
    "too few runs": "too few runs to tell",
}


def error_html(message: str, *, bug: bool = False) -> str:
    """The headline of a run that did not complete: why, and that nothing on screen is its result."""
    title = "The comparison failed" if bug else "Not run"
    return (f"<div class='lab-empty lab-error' role='alert'><b>{title}:</b> {escape(message)}<br>"
            "<span class='lab-note'>Fix the setting and press Run again; earlier results are in the History tab."
            "</span></div>")


def headline_html(report: Report) -> str:
    """The four numbers people look at first, how sure the speedup is, and what was compared."""
    b, o, q, timing = report.baseline, report.optimized, report.quality, report.timing
    speedup, interval = report.speedup, timing.speedup
    # Faster / slower in colour; a ratio whose interval does not back it is greyed, its verdict first.
    tone = {"faster": "good", "slower": "bad", "equivalent": ""}.get(report.verdict, "unsure")
    own = " (own time)" if timing.estimator.name == "own" else ""
    latency = f"{fmt_s(b.time_s.median)} → {fmt_s(o.time_s.median)}{own}"
    if interval.low is not None:
        sure = f"<b>{VERDICT_WORDS[report.verdict]}</b> · 95% CI {interval.low:.2f}–{interval.high:.2f}×"
        if report.verdict == "inconclusive":
            sure += f" (±{interval.half_width:.0%}: run longer or on a quieter machine)"
    else:
        sure = "one run per side: no interval (use auto or 3+ runs)"
    memory = timing.memory_saving_mb
    saving = memory.estimate  # the one figure for the saving (the same in the Metrics tab, the CLI, report.md)
    base_peak = b.peak_memory_mb or 0.0
    mem_share = (f"{abs(saving) / base_peak:.0%} {'less' if saving >= 0 else 'more'} than {fmt_mb(base_peak)}"
                 if base_peak > 0 else "baseline peak 0 MB")
    # Green or red only when the interval says so: an A/A run (or a saving inside the band) is never green.
    mem_tone = {"less": "good", "more": "bad"}.get(memory.verdict, "")
    if memory.verdict != "too few runs":
        mem_share += f" · <b>{MEMORY_WORDS[memory.verdict]}</b>"
    psnr = q.psnr_db
    quality_value = "identical" if psnr is None else f"{psnr:.1f} dB"
    quality_tone = "good" if psnr is None or psnr >= 40 else "bad" if psnr < 25 else ""
    quality_sub = f"SSIM {q.ssim:.4f}" + (f" · MS-SSIM {q.ms_ssim:.4f}" if q.ms_ssim is not None else "")
    quality_sub += (f" · LPIPS {q.lpips:.3f}" if q.lpips is not None else "") + f" · max diff {q.max_abs_diff}/255"
    if q.video is not None:
        worst = "identical" if q.video.psnr_db_worst is None else f"{q.video.psnr_db_worst:.1f} dB"
        quality_sub = (f"all {q.video.frames} frames · worst frame {worst} (#{q.video.worst_frame}) · SSIM mean "
                       f"{q.video.ssim_mean:.4f}")
    skipped = max(0.0, 1 - o.work_fraction)
    run, env = report.run, report.environment
    badges = [
        f"preset <b>{escape(report.preset.name)}</b>",
        f"{escape(run['model'])}",
        f"{plural(run['steps'], 'step')} · {run['width']}×{run['height']}{frames_badge(report)} · seed {run['seed']}",
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
        + _tile("Quality (PSNR)", quality_value, quality_sub, quality_tone)
        + _tile("Work skipped", f"{skipped:.0%}", "of the transformer's work", "good" if skipped > 0.01 else "")
        + "</div><div class='lab-badges'>" + "".join(f"<span>{x}</span>" for x in badges) + "</div>"
        + "".join(f"<div class='lab-note warn'>{note}</div>" for note in notes)
    )


def frames_badge(report: Report) -> str:
    """' × 9 frames @ 8 fps' for a video, '' for an image."""
    if report.video is None:
        return ""
    return f" × {report.video.frames} frames @ {report.video.fps:g} fps"


def details_markdown(report: Report) -> str:
    from optim.plan.check import planned_line

    run, env, timing = report.run, report.environment, report.timing
    isolation = ("each side in its own process, both loaded at once" if env.get("isolation") == "process"
                 else "in this process, one side after the other")
    threads = env.get("threads") or {}
    lines = [
        "### Run",
        f"Model `{run['model']}` · “{run['prompt']}” · seed {run['seed']} · {plural(run['steps'], 'step')} · "
        f"{run['width']}×{run['height']}{frames_badge(report)} · guidance {run['guidance_scale']} · {run['dtype']} "
        f"on {env['device']} "
        f"({env.get('device_name')}) · {plural(run['warmup_runs'], 'warm-up run')} per side · {isolation} · "
        f"torch {env.get('torch')}, diffusers {env.get('diffusers')}",
        "",
        "### How sure",
        f"**{timing.speedup.text}.** Timed runs: {runs_text(report)}; {timing.order}. The interval is a "
        f"{timing.speedup.method}; a side is called faster or slower only when the whole interval is more than "
        f"{NEGLIGIBLE:.0%} from 1.0 (two identical processes can differ by that much), equivalent when it lies "
        f"wholly within ±{NEGLIGIBLE:.0%}, and inconclusive otherwise. {estimator_sentence(report)} "
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
    planned = [(side, planned_line(getattr(report, side).planned.model_dump())) for side in ("baseline", "optimized")
               if getattr(report, side).planned is not None]
    if planned:
        lines += ["", "### GPU memory: planned and measured",
                  "The memory planner's peak of a generation (`python -m optim plan`), made before the run from the "
                  "model's configs, beside the peak measured: "
                  + "; ".join(f"{side} {line}" for side, line in planned if line) + "."]
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
        return "**Bit-identical**: no pixel differs." + (" (in any frame)" if report.video is not None else "")
    if report.quality.video is not None:
        video = report.quality.video
        return (f"Frame {video.worst_frame} of {video.frames} (the one that differs most; every frame is in the "
                f"**Video** tab). Black = identical, **white = {plural(scale, 'level')} of 255** (one scale for all "
                f"frames). Mean difference {report.quality.mean_abs_diff:.3f} over all frames.")
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


def video_caption(report: Report, frame: int) -> str:
    """Under the frame slider: that frame's figures and the clip's temporal ones."""
    video = report.quality.video
    if video is None:
        return ""
    frame = max(0, min(int(frame), video.frames - 1))
    psnr = video.psnr_db_per_frame[frame]
    text = (f"**Frame {frame}** of {video.frames}: PSNR {'identical' if psnr is None else f'{psnr:.2f} dB'}, "
            f"SSIM {video.ssim_per_frame[frame]:.4f}, max diff {video.max_abs_diff_per_frame[frame]}/255.")
    if frame < len(video.temporal_diff_per_transition):
        text += (f" Change to frame {frame + 1}: baseline {video.motion_baseline_per_transition[frame]:.2f}, "
                 f"optimized {video.motion_optimized_per_transition[frame]:.2f} levels; they differ by "
                 f"{video.temporal_diff_per_transition[frame]:.2f} (temporal difference).")
    return text


def video_summary(report: Report) -> str:
    """Above the players: the clip and its per-frame and temporal figures in one paragraph."""
    info, video = report.video, report.quality.video
    if info is None or video is None:
        return "Video models only: run a comparison on a video model (tiny:cogvideox, tiny:wan, embedded-video ...)."
    mean = "identical" if video.psnr_db_mean is None else f"{video.psnr_db_mean:.1f} dB"
    worst = "identical" if video.psnr_db_worst is None else f"{video.psnr_db_worst:.1f} dB (frame {video.worst_frame})"
    temporal = "-" if video.temporal_diff_mean is None else f"{video.temporal_diff_mean:.3f}"
    return (f"{info.frames} frames, {info.width}×{info.height}, {info.fps:g} fps ({info.duration_s:.2f} s). The two "
            f"players play in sync (play, pause or seek either). PSNR per frame: mean {mean}, worst {worst}; SSIM "
            f"mean {video.ssim_mean:.4f}, worst {video.ssim_worst:.4f}. Temporal difference (how much the optimized "
            f"side's frame-to-frame change differs from the baseline's, levels of 255): mean {temporal}.")


def families_markdown() -> str:
    """Which technique works on which pipeline family, and why not (`optim.families.technique_support`)."""
    keys = list(FAMILIES)
    rows = ["| technique | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---|" + "---|" * len(keys)]
    notes = []
    for technique in TECHNIQUES:
        cells = []
        for key in keys:
            support = technique_support(key)[technique]
            if support.supported:
                cells.append("yes")
            else:
                notes.append(f"- **{TECHNIQUE_LABELS[technique]}** on `{key}`: "
                             + escape(support.reason).replace("|", "/"))
                cells.append(f"no ({len(notes)})")
        rows.append(f"| {TECHNIQUE_LABELS[technique]} | " + " | ".join(cells) + " |")
    return ("What each technique does on the pipeline families (FLUX, Qwen-Image, SD3, CogVideoX, Wan); refused "
            "before loading where it cannot work.\n\n" + "\n".join(rows)
            + "\n\n" + "\n".join(f"{i + 1}. {line[2:]}" for i, line in enumerate(notes)))


def capabilities_sections(caps: Capabilities) -> list[tuple[str, str]]:
    """(title, Markdown) per settings section, for one closed accordion each: the title says how many options
    run here ("Attention backend: 4 of 27 here"), the table says why each other does not. Plain words, not
    check-mark emoji (a browser without an emoji font shows empty boxes)."""
    sections = []
    for path, options in caps.options.items():
        here = [option for option in options if option.available]
        rows = ["| option | here | why not |", "|---|---|---|"]
        for option in options:
            reason = (option.reason or option.note or "").replace("|", "/")
            rows.append(f"| `{option.value}` | {'yes' if option.available else 'no'} | {reason} |")
        title = f"{SECTION_TITLES.get(path, path)}: {len(here)} of {len(options)} here"
        sections.append((title, f"`{path}`\n\n" + "\n".join(rows)))
    sections.append(("Pipeline families: which technique works on which", families_markdown()))
    return sections


def capabilities_markdown(caps: Capabilities) -> str:
    """Every section at once (for a report or a test); the page shows `capabilities_sections` folded."""
    return "\n\n".join(f"**{title}**\n\n{body}" for title, body in capabilities_sections(caps))


