"""The public API of the app, all of it wired here: `compare` (one comparison), `sweep` (a space of configurations
over a prompt set, with its Pareto front), `tune` (the fastest configuration above a quality floor) and `plan`
(what fits a card, predicted before anything runs), for
scripts (gradio_client) and other apps. Every other event of the page is private. They run in the same queue
slot as the Run button, within the server's limits.

    from gradio_client import Client
    report, baseline, optimized, diff = Client("http://127.0.0.1:7860/").predict("first-block-cache",
                                                                                api_name="/compare")

Every parameter but the preset (the space, the floor) is optional: the model defaults to the embedded one and the
run settings to the model's own.
"""

from __future__ import annotations

import json
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from lab.context import ServerContext
from lab.errors import user_error
from lab.fields import as_float, as_int
from lab.run_panel import GPU_QUEUE, execute
from lab.text import log
from optim.config import parse_run
from optim.errors import ConfigError, OptimError
from optim.models import EMBEDDED_MODEL
from optim.presets import Preset, preset_from_json
from optim.prompts import default_prompt_set, load_prompt_set, parse_prompt_set, shipped_prompt_sets
from optim.report import json_safe
from optim.sweep import Space, load_space, load_space_file, parse_floor, run_sweep, shipped_spaces
from optim.tune import parse_budget, tune

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
            timed_runs: runs per side, in turns: "auto" (until the speedup is known to ±5%, at most 60 s) or a number
        Returns:
            report: report.json: the speedup with its 95% interval and verdict, quality, both sides
            baseline: the baseline image (lossless PNG)
            optimized: the optimized image (lossless PNG)
            diff: the difference heatmap (lossless PNG; report.quality.heatmap_scale levels = white)
        """
        return api_compare(ctx, preset, model, prompt, seed, steps, width, height, guidance_scale, timed_runs,
                           progress=progress)

    panel.button.click(compare, panel.inputs, panel.outputs, api_name="compare", **GPU_QUEUE)
    wire_sweep_endpoints(ctx)
    wire_plan_endpoint()


def wire_plan_endpoint() -> None:
    """The `plan` endpoint (gradio_client: api_name="/plan"): what fits a card, predicted; nothing runs."""
    from lab.plan_panel import plan_report

    def plan(model: str = EMBEDDED_MODEL, gpu: str = "rtx-4090", width: float | None = None,
             height: float | None = None, steps: float | None = None, num_frames: float | None = None,
             top: float = 10) -> dict:
        """Will it fit my GPU? Predict the GPU memory of every combination of weight storage (quantization per
        component, layerwise casting), offload and VAE tiling for a model, from its published configs, before
        anything runs; rank those that fit a card by expected speed. Each combination comes with its settings
        (loadable as a preset's optim section), its GPU need (the most held at once, loading included; the card
        must also hold 0.5 GiB of CUDA context and 5% for the allocator), its peak, its host memory and the reason.

        Parameters:
            model: "embedded", a Hugging Face Hub model id (e.g. "black-forest-labs/FLUX.1-dev") or tiny:...
            gpu: a card (rtx-3060, rtx-4080, rtx-4090, l4, a100-40, a100-80, h100, h200, zerogpu) or GB ("16")
            width: image width; empty for the model's default
            height: image height; empty for the model's default
            steps: denoising steps; empty for the model's default
            num_frames: frames of a video model; empty for the model's default
            top: how many fitting combinations to return (1-50)
        Returns:
            plan: the card, the run, each component's weights (GiB) per storage, the `top` fits, the 3 closest misses
        """
        try:
            return plan_report(model, gpu, width=_given(width), height=_given(height), steps=_given(steps),
                               num_frames=_given(num_frames), top=as_int(top) if top not in (None, "") else 10)
        except OptimError as error:
            raise user_error(error, for_page=False) from None
        except Exception as error:  # noqa: BLE001 - e.g. a Hub model whose configs cannot be read
            log.exception("api plan failed")
            raise gr.Error(f"Unexpected error ({type(error).__name__}: {error})") from None

    with gr.Column(visible=False):
        inputs = [gr.Textbox(EMBEDDED_MODEL, label="model"), gr.Textbox("rtx-4090", label="gpu"),
                  gr.Number(None, label="width", precision=0), gr.Number(None, label="height", precision=0),
                  gr.Number(None, label="steps", precision=0), gr.Number(None, label="num_frames", precision=0),
                  gr.Number(10, label="top", precision=0)]
        output, button = gr.JSON(label="plan"), gr.Button("plan")
    button.click(plan, inputs, output, api_name="plan", concurrency_limit=4)


def api_space(text: str) -> Space:
    """A shipped space by name, or a space's JSON text."""
    text = (text or "").strip()
    if text in shipped_spaces():
        return load_space_file(text)
    if not text.startswith("{"):
        raise ConfigError(f"space: {text[:60]!r} is neither a space's JSON text nor a shipped space "
                          f"({', '.join(shipped_spaces())})")
    return load_space(text)


def api_prompts(text: str, model: str) -> Any:
    """A shipped prompt set by name, prompts one per line, or (empty) the model's own set."""
    text = (text or "").strip()
    if not text:
        return load_prompt_set(default_prompt_set(model))
    if text in shipped_prompt_sets():
        return load_prompt_set(text)
    return parse_prompt_set(text, name="custom")


def wire_sweep_endpoints(ctx: ServerContext) -> None:
    """The `sweep` and `tune` endpoints (gradio_client: api_name="/sweep", "/tune"), on hidden components."""
    from optim.config import parse_run
    from optim.limits import check_run
    from optim.models import EMBEDDED_MODEL

    lock = threading.Lock()

    def prepare(space: str, prompts: str, model: str, steps: float | None, seeds: str) -> tuple:
        chosen_space = api_space(space)
        run = parse_run({**chosen_space.run, "model": (model or "").strip() or EMBEDDED_MODEL,
                         **({"steps": steps} if steps not in (None, "") else {})})
        check_run(run, ctx.limits)
        prompt_set = api_prompts(prompts, run.model)
        seed_list = [int(s) for s in (seeds or "0").split(",") if s.strip()]
        if len(prompt_set.prompts) * len(seed_list) > ctx.limits.max_sweep_prompts:
            raise ConfigError(f"{len(prompt_set.prompts) * len(seed_list)} prompts x seeds is more than this "
                              f"server allows (at most {ctx.limits.max_sweep_prompts})")
        return chosen_space, run, prompt_set, seed_list

    def sweep(space: str, prompts: str = "", model: str = EMBEDDED_MODEL, steps: float | None = None,
              seeds: str = "0", quality: str = "ssim_worst") -> dict:
        """Evaluate a space of configurations over a prompt set against one baseline.

        Parameters:
            space: a shipped space's name (e.g. "fbc-threshold") or a space's JSON text
            prompts: a shipped prompt set ("embedded", "general") or prompts one per line; empty: the model's
            model: "embedded", a Hub id, tiny:..., synthetic:... (GPU only)
            steps: denoising steps; empty for the model's default
            seeds: comma-separated seeds, each used with every prompt
            quality: the quality axis of the Pareto front (ssim_worst, ssim_mean, psnr_worst, psnr_mean, adherence)
        Returns:
            sweep: sweep.json: every point's row (speedup and interval, work, memory, quality) and the Pareto front
        """
        try:
            chosen_space, run, prompt_set, seed_list = prepare(space, prompts, model, steps, seeds)
            folder = Path(tempfile.mkdtemp(dir=ctx.reports_dir, prefix="api-sweep-"))
            with lock:
                run_sweep(chosen_space, prompt_set, folder, run_spec=run, seeds=seed_list, quality=quality,
                          max_points=ctx.limits.max_sweep_points, max_seconds=ctx.limits.max_sweep_seconds)
            return json.loads((folder / "sweep.json").read_text())
        except OptimError as error:
            raise user_error(error, for_page=False) from None

    def tune_api(floor: str, space: str = "tune-caches", prompts: str = "", model: str = EMBEDDED_MODEL,
                 steps: float | None = None, seeds: str = "0", budget: str = "5m") -> dict:
        """Find the fastest configuration whose worst-case quality over the prompts meets the floor(s).

        Parameters:
            floor: comma-separated floors, e.g. "ssim>=0.98" or "ssim>=0.98, psnr>=35"
            space: a shipped space's name (default "tune-caches") or a space's JSON text (grid and ranges)
            prompts: a shipped prompt set or prompts one per line; empty: the model's
            model: "embedded", a Hub id, tiny:..., synthetic:... (GPU only)
            steps: denoising steps; empty for the model's default
            seeds: comma-separated seeds
            budget: time for the search, e.g. 90s, 5m (capped by the server)
        Returns:
            result: the tuned preset (its JSON text), the best row, every evaluated row, the strategy used
        """
        try:
            floors = [parse_floor(text) for text in floor.split(",") if text.strip()]
            chosen_space, run, prompt_set, seed_list = prepare(space, prompts, model, steps, seeds)
            folder = Path(tempfile.mkdtemp(dir=ctx.reports_dir, prefix="api-tune-"))
            with lock:
                result = tune(chosen_space, prompt_set, floors, folder,
                              budget_s=min(parse_budget(budget), ctx.limits.max_sweep_seconds), run_spec=run,
                              seeds=seed_list, max_evaluations=ctx.limits.max_sweep_points)
            tuned = folder / "tuned.json"
            return {"preset": tuned.read_text() if tuned.is_file() else None, "best": result.best,
                    "rows": result.rows, "strategy": result.strategy, "evaluations": result.evaluations}
        except OptimError as error:
            raise user_error(error, for_page=False) from None

    with gr.Column(visible=False):
        sweep_inputs = [gr.Textbox(label="space"), gr.Textbox("", label="prompts"),
                        gr.Textbox(EMBEDDED_MODEL, label="model"), gr.Number(None, label="steps", precision=0),
                        gr.Textbox("0", label="seeds"), gr.Textbox("ssim_worst", label="quality")]
        tune_inputs = [gr.Textbox(label="floor"), gr.Textbox("tune-caches", label="space"),
                       gr.Textbox("", label="prompts"),
                       gr.Textbox(EMBEDDED_MODEL, label="model"), gr.Number(None, label="steps", precision=0),
                       gr.Textbox("0", label="seeds"), gr.Textbox("5m", label="budget")]
        sweep_out, tune_out = gr.JSON(label="sweep"), gr.JSON(label="result")
        sweep_button, tune_button = gr.Button("sweep"), gr.Button("tune")
    sweep_button.click(sweep, sweep_inputs, sweep_out, api_name="sweep", **GPU_QUEUE)
    tune_button.click(tune_api, tune_inputs, tune_out, api_name="tune", **GPU_QUEUE)
