"""The public API of the app: one endpoint, `compare`, for scripts (gradio_client) and other apps. Every other
event of the page is private. It runs in the same queue slot as the Run button.

    from gradio_client import Client
    report, baseline, optimized, diff = Client("http://127.0.0.1:7860/").predict("first-block-cache",
                                                                                api_name="/compare")

Every parameter but the preset is optional: the model defaults to the embedded one and the run settings to the
model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lab.context import ServerContext
from lab.fields import as_float, as_int
from lab.run_panel import GPU_QUEUE, execute
from lab.sharing import user_error
from lab.text import log
from optim.config import parse_run
from optim.errors import ConfigError, OptimError
from optim.models import EMBEDDED_MODEL
from optim.presets import Preset, preset_from_json
from optim.report import json_safe

DEFAULT_TIMED_RUNS = "auto"


@dataclass
class ApiPanel:
    inputs: list[Any]
    outputs: list[Any]
    button: Any


def preset_from_api(ctx: ServerContext, text: str) -> Preset:
    """A shipped preset's name, or a preset's JSON text (strict, size-limited)."""
    text = (text or "").strip()
    if not text:
        return ctx.default_preset
    if not text.startswith("{"):
        if text in ctx.shipped:
            return ctx.shipped[text]
        raise ConfigError(f"preset: {text[:60]!r} is neither a preset's JSON text nor a shipped preset "
                          f"({', '.join(ctx.shipped)})")
    if len(text.encode()) > ctx.limits.max_upload_bytes:
        raise ConfigError(f"preset: {len(text.encode())} bytes is too large (at most {ctx.limits.max_upload_bytes})")
    return preset_from_json(text)


def runs_value(value: Any) -> Any:
    """'auto' (or empty) or a whole number, as a client may send it ("5", 5, 5.0); anything else is left for the
    validation to name."""
    if value in (None, "", "auto"):
        return "auto"
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    return as_int(value)


def _given(value: Any) -> int | None:
    """An optional count: None (or an empty value) is the model's default; 0 is a value, checked (and refused)
    like any other, never silently replaced by the default."""
    return None if value is None or value == "" else as_int(value)


def api_compare(ctx: ServerContext, preset: str, model: str | None = EMBEDDED_MODEL, prompt: str | None = "",
                seed: float | None = 0, steps: float | None = None, width: float | None = None,
                height: float | None = None, guidance_scale: float | None = None,
                timed_runs: float | str | None = DEFAULT_TIMED_RUNS,
                progress: Any = None) -> tuple[dict, Any, Any, Any]:
    """Run the model as a baseline and with a preset's optimizations, and compare them (see `wire_api` for the
    parameters as API users see them)."""
    try:
        chosen = preset_from_api(ctx, preset)
        run = parse_run(json_safe({
            "model": (model or "").strip() or EMBEDDED_MODEL,
            "prompt": prompt or None,
            "seed": as_int(seed) if seed is not None else 0,
            "steps": _given(steps),
            "width": _given(width),
            "height": _given(height),
            "guidance_scale": as_float(guidance_scale) if guidance_scale is not None else None,
            "timed_runs": runs_value(timed_runs),
        }), where="run")
        comparison = execute(ctx, run, chosen, progress=progress)
    except OptimError as error:
        raise user_error(error, for_page=False) from None
    except Exception as error:  # noqa: BLE001
        log.exception("api compare failed")
        raise gr.Error(f"Unexpected error ({type(error).__name__}: {error})") from None
    report = json_safe(comparison.to_report())
    # Images as they are; a video's frames as one lossless contact sheet each (report["video"] says how many).
    return (report, *comparison.preview_images())


def build_api(ctx: ServerContext) -> ApiPanel:
    """Hidden components of the public endpoint (gradio_client: api_name="/compare")."""
    with gr.Column(visible=False):
        inputs = [
            gr.Textbox(ctx.default_preset.name, label="preset"),
            gr.Textbox(EMBEDDED_MODEL, label="model"),
            gr.Textbox("", label="prompt"),
            gr.Number(0, label="seed", precision=0),
            gr.Number(None, label="steps", precision=0),
            gr.Number(None, label="width", precision=0),
            gr.Number(None, label="height", precision=0),
            gr.Number(None, label="guidance_scale"),
            gr.Textbox(DEFAULT_TIMED_RUNS, label="timed_runs"),
        ]
        outputs = [gr.JSON(label="report"), gr.Image(label="baseline", format="png"),
                   gr.Image(label="optimized", format="png"), gr.Image(label="diff", format="png")]
        button = gr.Button("compare")
    return ApiPanel(inputs=inputs, outputs=outputs, button=button)


def wire_api(ctx: ServerContext, panel: ApiPanel) -> None:
    def compare(preset: str, model: str = EMBEDDED_MODEL, prompt: str = "", seed: float = 0,
                steps: float | None = None, width: float | None = None, height: float | None = None,
                guidance_scale: float | None = None, timed_runs: str = DEFAULT_TIMED_RUNS,
                progress: gr.Progress = gr.Progress()) -> tuple[dict, Any, Any, Any]:
        """Run the model as a baseline and with a preset's optimizations, and compare them.

        Parameters:
            preset: a shipped preset's name (e.g. "first-block-cache") or the JSON text of a preset file
            model: "embedded" (runs on CPU), a Hugging Face Hub model id, or "synthetic:flux-dev" (GPU only)
            prompt: the prompt for both sides; empty for the model's default
            seed: the seed for both sides
            steps: denoising steps; empty for the model's default
            width: image width (a multiple of 16); empty for the model's default
            height: image height (a multiple of 16); empty for the model's default
            guidance_scale: guidance strength; empty for the model's default
            timed_runs: timed runs per side, taken in turns with the other side: "auto" (until the speedup is
                known to about ±5%, or 60 s of runs) or a whole number
        Returns:
            report: the comparison, the same JSON as the command line's report.json: speedup with its 95%
                interval and verdict, quality, both sides (schema: docs/report.schema.json)
            baseline: the baseline image (lossless PNG)
            optimized: the optimized image (lossless PNG)
            diff: the difference heatmap (lossless PNG; report.quality.heatmap_scale levels = white)
        """
        return api_compare(ctx, preset, model, prompt, seed, steps, width, height, guidance_scale, timed_runs,
                           progress=progress)

    panel.button.click(compare, panel.inputs, panel.outputs, api_name="compare", **GPU_QUEUE)
