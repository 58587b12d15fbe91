"""The settings column: a control for every config field (made from the field's type, bounds and facts), grouped
by technique in tabs, with the live check of the settings underneath.

`build_settings(ctx)` returns a `SettingsPanel`; `wire_settings(ctx, panel)` connects what happens inside it (a
model's defaults, which technique's options are shown, the live check). Presets and the run button live in
`lab.sharing` and `lab.run_panel`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import gradio as gr

from lab import fields
from lab.context import ServerContext
from lab.fields import CONTROL_KEYS, field_bounds, field_choices, field_kind, key_facts
from lab.text import escape, model_note, plain_markdown, settings_summary
from optim import config as C
from optim.config import RunSpec
from optim.errors import ConfigError, OptimError
from optim.families import FAMILIES
from optim.models import (
    EMBEDDED_MODEL,
    EMBEDDED_VIDEO_MODEL,
    EMBEDDED_VIDEO_PATH,
    POPULAR_MODELS,
    TINY_NOTE,
    TINY_PREFIX,
)
from optim.synthetic import SYNTHETIC_MODELS

EXAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a small yellow triangle at the top left on a black background",
    "a large white square on a green background",
    "a blue circle at the bottom right on a yellow background",
]
VIDEO_EXAMPLE_PROMPTS = [  # the embedded video model's grammar: a motion, no position
    "a red circle moving right on a blue background",
    "a yellow triangle moving up on a black background",
    "a small green square growing on a black background",
    "a large black triangle staying still on a yellow background",
]
CUSTOM_PRESET = ""  # the preset picker's value while the optimizations match no shipped preset
PRIVATE = dict(api_visibility="private")


@dataclass
class SettingsPanel:
    """The settings column's components. `controls` maps each config field's path to its control."""

    controls: dict[str, Any]
    preset_picker: Any
    model_note: Any
    summary: Any
    cache_groups: dict[str, Any] = field(default_factory=dict)
    quantization_groups: dict[str, Any] = field(default_factory=dict)
    offload_group: Any = None
    compile_group: Any = None
    recommended_button: Any = None  # "Use this model's recommended settings"
    applied_defaults: Any = None  # gr.State: the model defaults last filled in (what the user has not edited)
    frames_row: Any = None  # Frames and FPS: shown for video models
    tabs: Any = None  # the technique tabs (`lab.layout` adds the "Will it fit?" tab of `lab.plan_panel`)

    @property
    def control_list(self) -> list[Any]:
        return [self.controls[key] for key in CONTROL_KEYS]

    @property
    def fill_outputs(self) -> list[Any]:
        """What a handler that sets every control updates: the controls, the preset picker, the summary."""
        return self.control_list + [self.preset_picker, self.summary]

    def values_of(self, data: dict[Any, Any]) -> dict[str, Any]:
        """Gradio's {component: value} inputs -> {control key: value}."""
        key_of = {component._id: key for key, component in self.controls.items()}
        return {key_of[c._id]: v for c, v in data.items() if c._id in key_of}


def elem_id(key: str) -> str:
    return "ctl-" + re.sub(r"[^a-zA-Z0-9]+", "-", key).strip("-")


def short(reason: str) -> str:
    """The gist of an unavailability reason, for a dropdown label (the full text is in the capabilities panel)."""
    text = re.sub(r"\s*\([^)]*\)", "", reason.split(";")[0]).strip()
    return text if len(text) <= 70 else text[:67] + "..."


def mark(label: str, reason: str | None) -> str:
    return f"{label} (unavailable: {short(reason)})" if reason else label


def choice_labels(ctx: ServerContext, key: str, choices: list[Any]) -> list[Any]:
    """Dropdown (label, value) pairs; choices this machine cannot run are marked with the reason."""
    caps = ctx.capabilities
    if key == "attention.backend":
        options = [o for o in caps.options[key] if o.value in C.ATTENTION_BACKENDS]
        options.sort(key=lambda o: not o.available)  # what runs here first
        return [(mark(f"{o.value} · {o.family}", o.reason), o.value) for o in options]
    if key == "cache.method":
        return [(C.variant_facts(C.CACHE_VARIANTS[c])[0], c) for c in choices]
    if key == "quantization.backend":
        out = []
        for value in choices:
            option = caps.option(key, value)
            label = C.variant_facts(C.QUANTIZATION_VARIANTS[value])[0]
            if option is not None and option.available and option.note:
                label += " (on this CPU: text encoders only)"
            out.append((mark(label, option.reason if option else None), value))
        return out
    if key in caps.options:
        labels = key_facts(key).labels
        return [(mark(labels.get(C.json_key(c), str(c)), caps.reason(key, c)), c) for c in choices]
    return choices


def make_field_controls(ctx: ServerContext, defaults: dict[str, Any], prefix: str, cls: type, name: str,
                        controls: dict[str, Any]) -> None:
    """Create the control(s) of one config field (ranges from the model's `Field(ge=..., le=...)`)."""
    key = f"{prefix}.{name}"
    kind = fields.RUN_KINDS[name] if prefix == "run" and name in fields.RUN_KINDS else field_kind(cls, name)
    facts = key_facts(key)
    label, info = facts.label, plain_markdown(facts.help or None)
    value = defaults.get(key)
    common = dict(elem_id=elem_id(key))
    if key in ctx.capabilities.options and kind == "bool":
        label = mark(label, ctx.capabilities.reason(key, True))
    if kind == "bool":
        controls[key] = gr.Checkbox(value=value, label=label, info=info, **common)
    elif kind == "tristate":
        controls[key] = gr.Radio(["auto", "on", "off"], value=value, label=label, info=info, **common)
    elif kind == "choice":
        choices = choice_labels(ctx, key, field_choices(cls, name))
        if len(choices) <= 3 and all(not isinstance(c, tuple) for c in choices):
            controls[key] = gr.Radio(choices, value=value, label=label, info=info, **common)
        else:
            controls[key] = gr.Dropdown(choices, value=value, label=label, info=info, **common)
    elif kind in ("int", "float", "int_or_off"):
        # A number box with no minimum or maximum of its own: Gradio would clamp a typed 0 to the minimum (and run
        # a value the user did not choose). What the user typed stays; the settings check names any value out of
        # range, and Run refuses it with that reason (`lab.text.settings_summary`, `lab.run_panel`).
        low, high, exclusive = field_bounds(cls, name)
        if prefix == "run" and name in ctx.run_limits:
            high = min(high, ctx.run_limits[name])
        step = 1 if kind != "float" else (0.01 if (high or 1) <= 2 else 0.05 if high <= 10 else 0.1)
        step = 16 if name in ("width", "height") else step
        if kind == "int_or_off":
            low = 0
        controls[key] = gr.Number(value=value, label=label, info=_with_range(info, low, high, exclusive),
                                  precision=None if kind == "float" else 0, step=step, **common)
    elif kind == "numbers":
        controls[key] = gr.Textbox(value=value, label=label, info=info, placeholder="6, 2, 2", **common)
    elif kind == "text":
        controls[key] = gr.Textbox(value=value, label=label, info=info, lines=2 if name == "prompt" else 1,
                                   max_lines=4, **common)
    elif kind == "runs":  # a count or "auto"
        counts = [n for n in (1, 2, 3, 5, 10, 20, 50) if n <= ctx.run_limits.get(name, 50)]
        controls[key] = gr.Dropdown(["auto", *counts], value=value, label=label, info=info, allow_custom_value=True,
                                    **common)
    elif kind == "int_or_blank":
        # No minimum: an empty box reaches the server as 0 (which means "the default" here); the field's own
        # bounds are checked when the settings are read.
        controls[key] = gr.Number(value=value, label=label, info=info, precision=0,
                                  placeholder="default" if prefix == "run" else "never", **common)
    elif kind == "range":
        with gr.Row(equal_height=True):
            low_key, high_key = f"{key}.from", f"{key}.to"
            controls[low_key] = gr.Number(defaults[low_key], label=key_facts(low_key).label, info=info, precision=0,
                                          elem_id=elem_id(low_key), min_width=120)
            controls[high_key] = gr.Number(defaults[high_key], label="to", precision=0, elem_id=elem_id(high_key),
                                           min_width=120)
    elif kind == "mag_ratios":
        controls[key] = gr.Radio(["calibrate", "flux", "custom"], value=value, label=label, info=info, **common)
        custom_key = f"{key}.custom"
        custom = key_facts(custom_key)
        controls[custom_key] = gr.Textbox(defaults[custom_key], label=custom.label, info=plain_markdown(custom.help),
                                          placeholder="1.0, 0.98, 0.97, ...", elem_id=elem_id(custom_key),
                                          visible=value == "custom")
    else:
        raise TypeError(f"no control for {key} ({kind})")


def _with_range(info: str | None, low: float | None, high: float | None, exclusive: bool) -> str | None:
    """A field's help followed by the values it takes ("1 to 200")."""
    if low is None or high is None or high - low > 10**6:  # a seed's range says nothing useful
        return info
    show = lambda x: str(int(x)) if float(x).is_integer() else f"{x:g}"  # noqa: E731
    text = f"more than {show(low)}, up to {show(high)}" if exclusive else f"{show(low)} to {show(high)}"
    return f"{info} ({text})" if info else text.capitalize()


def _picker(ctx: ServerContext, defaults: dict[str, Any], key: str, tags: list[str]) -> Any:
    """The dropdown that picks a union's variant (cache method, quantization backend)."""
    facts = key_facts(key)
    return gr.Dropdown(choice_labels(ctx, key, tags), value=defaults[key], label=facts.label,
                       info=plain_markdown(facts.help),
                       elem_id=elem_id(key))


def check_control_bounds(ctx: ServerContext, values: dict[str, Any]) -> None:
    """Refuse values the run controls cannot show (a link asking for more than this server's sliders allow)."""
    for name, high in ctx.run_limits.items():
        value = values.get(f"run.{name}")
        if isinstance(value, (int, float)) and value > high:
            raise ConfigError(f"run.{name}: {value} is more than this server allows (at most {high})")


def model_choices() -> list[tuple[str, str]]:
    choices = [("embedded · tiny FLUX, runs on CPU", EMBEDDED_MODEL)]
    if (EMBEDDED_VIDEO_PATH / "model_index.json").is_file():
        # Short labels: a long one runs into the dropdown's arrow (the note below the box says the rest).
        choices.append(("embedded-video · tiny CogVideoX, runs on CPU", EMBEDDED_VIDEO_MODEL))
    choices += [(name, name) for name in POPULAR_MODELS]
    choices += [(f"{TINY_PREFIX}{key} · tiny {fam.pipeline_class}, {TINY_NOTE}", f"{TINY_PREFIX}{key}")
                for key, fam in FAMILIES.items()]
    choices += [(f"synthetic:{key} · random weights, " + ("runs on CPU" if model.runs_on_cpu else "GPU only"),
                 f"synthetic:{key}") for key, model in SYNTHETIC_MODELS.items()]
    return choices


def shipped_choices(ctx: ServerContext) -> list[tuple[str, str]]:
    out = [("custom settings (edited, uploaded or from a link)", CUSTOM_PRESET)]
    for name, preset in ctx.shipped.items():
        label = name if preset.hardware == "any" or ctx.cuda else f"{name} (needs a CUDA GPU)"
        out.append((label, name))
    return out


def _section(ctx: ServerContext, defaults: dict[str, Any], prefix: str, cls: type, names: list[str],
             controls: dict[str, Any]) -> None:
    """Controls of some fields of one settings class; its advanced ones in an inner accordion."""
    basic = [n for n in names if not C.facts(cls, n).advanced]
    advanced = [n for n in names if C.facts(cls, n).advanced]
    for name in basic:
        make_field_controls(ctx, defaults, prefix, cls, name, controls)
    if advanced:
        with gr.Accordion("Advanced", open=False):
            for name in advanced:
                make_field_controls(ctx, defaults, prefix, cls, name, controls)


def build_settings(ctx: ServerContext, defaults: dict[str, Any]) -> SettingsPanel:
    """The settings column's controls (call inside a `gr.Column`)."""
    controls: dict[str, Any] = {}
    # First (under the Run button the layout puts above it): what will run, or why it will be refused.
    summary = gr.HTML(settings_summary(ctx, defaults), elem_id="settings-summary")
    picker = gr.Dropdown(shipped_choices(ctx), value=ctx.default_preset.name, label="Preset",
                         info="A shipped preset fills every optimization control (the model and prompt stay); "
                              "then adjust anything.", elem_id="preset-picker")
    run = lambda name: make_field_controls(ctx, defaults, "run", RunSpec, name, controls)  # noqa: E731
    with gr.Tabs(elem_id="technique-tabs") as tabs:
        with gr.Tab("Model", id="tab-run"):
            facts = key_facts("run.model")
            controls["run.model"] = gr.Dropdown(
                model_choices(), value=defaults["run.model"], allow_custom_value=True, label=facts.label,
                info=plain_markdown(facts.help), elem_id=elem_id("run.model"))
            note = gr.HTML(model_note(ctx, defaults["run.model"]), elem_classes="lab-note")
            recommended = gr.Button("Use this model's recommended settings", size="sm", variant="secondary",
                                    elem_id="recommended-button")
            run("prompt")
            gr.Examples(EXAMPLE_PROMPTS, inputs=[controls["run.prompt"]],
                        label="Prompts the embedded image model knows")
            gr.Examples(VIDEO_EXAMPLE_PROMPTS, inputs=[controls["run.prompt"]],
                        label="Prompts the embedded video model knows")
            with gr.Row():
                run("seed")
                run("steps")
            with gr.Row():
                run("width")
                run("height")
            # Video models only (shown for them); empty: the model's own (a blank box reads back as None).
            with gr.Row(visible=is_video_model(ctx, defaults["run.model"])) as frames_row:
                for name in ("num_frames", "fps"):
                    frame_facts = key_facts(f"run.{name}")
                    controls[f"run.{name}"] = gr.Number(
                        value=defaults.get(f"run.{name}"), label=frame_facts.label,
                        info=plain_markdown(frame_facts.help),
                        precision=0, placeholder="model default (video only)",
                        elem_id=elem_id(f"run.{name}"))
            run("guidance_scale")
            with gr.Accordion("More run settings", open=False):
                run("negative_prompt")
                with gr.Row():
                    run("warmup_runs")
                    run("timed_runs")
                with gr.Row():
                    run("target_precision")
                    run("time_budget_s")
                run("timing")
                with gr.Row():
                    run("dtype")
                    run("device")
                run("max_sequence_length")
                for name in fields.RUN_FIELDS:  # any run setting not placed above
                    if f"run.{name}" not in controls:
                        run(name)

        with gr.Tab("Attention", id="tab-attention"):
            _section(ctx, defaults, "attention", C.AttentionConfig, list(C.AttentionConfig.model_fields), controls)

        cache_groups = {}
        with gr.Tab("Cache", id="tab-cache"):
            controls["cache.method"] = _picker(ctx, defaults, "cache.method", list(C.CACHE_VARIANTS))
            for method, cls in C.CACHE_VARIANTS.items():
                with gr.Group(visible=method == defaults["cache.method"]) as group:
                    if method == "none":
                        gr.Markdown(C.variant_facts(cls)[1], elem_classes="lab-note")
                    _section(ctx, defaults, f"cache.{method}", cls, [n for n in cls.model_fields if n != "method"],
                             controls)
                cache_groups[method] = group

        quant_groups = {}
        with gr.Tab("Quantize", id="tab-quantization"):
            controls["quantization.backend"] = _picker(ctx, defaults, "quantization.backend",
                                                       list(C.QUANTIZATION_VARIANTS))
            facts = key_facts("quantization.components")
            controls["quantization.components"] = gr.Dropdown(
                ["transformer", "text_encoder", "text_encoder_2", "vae"],
                value=defaults["quantization.components"], multiselect=True, allow_custom_value=True,
                label=facts.label, info=plain_markdown(facts.help), elem_id=elem_id("quantization.components"),
                visible=defaults["quantization.backend"] != "none")
            for backend, cls in C.QUANTIZATION_VARIANTS.items():
                names = [n for n in cls.model_fields if n not in ("backend", "components")]
                with gr.Group(visible=backend == defaults["quantization.backend"] and bool(names)) as group:
                    _section(ctx, defaults, f"quantization.{backend}", cls, names, controls)
                quant_groups[backend] = group

        with gr.Tab("Offload", id="tab-offload"):
            offload = lambda name: make_field_controls(ctx, defaults, "offload", C.OffloadConfig, name, controls)  # noqa: E731
            offload("mode")
            with gr.Group(visible=defaults["offload.mode"] == "group") as offload_group:
                with gr.Row():
                    offload("offload_type")
                    offload("num_blocks_per_group")
                with gr.Row():
                    offload("use_stream")
                    offload("record_stream")
                with gr.Row():
                    offload("low_cpu_mem_usage")
                    offload("offload_to_disk")
            gr.Markdown("**VAE**", elem_classes="lab-section-title")
            with gr.Row():
                make_field_controls(ctx, defaults, "vae", C.VaeConfig, "slicing", controls)
                make_field_controls(ctx, defaults, "vae", C.VaeConfig, "tiling", controls)

        with gr.Tab("Compile", id="tab-compile"):
            unavailable = ctx.capabilities.reason("compile.mode", "regional")
            aot = ctx.capabilities.reason("compile.mode", "aot")
            if unavailable and aot is None:  # ZeroGPU: just-in-time compile is not supported, ahead of time is
                gr.Markdown(f"**Just-in-time compile is unavailable here:** {escape(unavailable)}. "
                            "Ahead of time (`aot`) works: its package is built once per size, then loaded.",
                            elem_classes="lab-note warn")
            elif unavailable:
                gr.Markdown(f"**Unavailable here:** {escape(unavailable)}", elem_classes="lab-note warn")
            compile_ = lambda name: make_field_controls(ctx, defaults, "compile", C.CompileConfig, name, controls)  # noqa: E731
            compile_("mode")
            with gr.Group(visible=defaults["compile.mode"] != "off") as compile_group:
                compile_("inductor_mode")
                with gr.Row():
                    compile_("fullgraph")
                    compile_("channels_last")
                with gr.Accordion("Advanced", open=False):
                    compile_("dynamic")
                    compile_("recommended_dynamo_settings")

    applied = gr.State({key: defaults[key] for key in MODEL_DEFAULT_KEYS})
    return SettingsPanel(controls=controls, preset_picker=picker, model_note=note, summary=summary,
                         recommended_button=recommended, applied_defaults=applied, frames_row=frames_row,
                         cache_groups=cache_groups, quantization_groups=quant_groups, offload_group=offload_group,
                         compile_group=compile_group, tabs=tabs)


# ---------------------------------------------------------------------------------------------- handlers


def matching_shipped(ctx: ServerContext, values: dict[str, Any]) -> str | None:
    """The shipped preset whose optimizations the controls show, if any."""
    try:
        optim = fields.optim_from_values(values)
    except OptimError:
        return None
    return next((name for name, preset in ctx.shipped.items() if preset.optim == optim), None)


def on_edit(ctx: ServerContext, values: dict[str, Any]) -> tuple[str, str]:
    """A user edited a control: re-check the settings; the preset picker shows a shipped preset only while the
    optimizations still equal it."""
    shipped = matching_shipped(ctx, values)
    return settings_summary(ctx, values), CUSTOM_PRESET if shipped is None else shipped


def fill(ctx: ServerContext, values: dict[str, Any], *, shipped: Any = None) -> list[Any]:
    """Outputs of every handler that sets all controls (`SettingsPanel.fill_outputs`)."""
    return [values[key] for key in CONTROL_KEYS] + [CUSTOM_PRESET if shipped is None else shipped,
                                                    settings_summary(ctx, values)]


def no_change() -> list[Any]:
    return [gr.skip() for _ in CONTROL_KEYS] + [gr.skip(), gr.skip()]


def warn(message: str) -> None:
    gr.Warning(escape(message), duration=12)


# The run settings a model recommends (`optim.models.model_defaults`): filled in when the model changes.
MODEL_DEFAULT_KEYS = ("run.prompt", "run.negative_prompt", "run.steps", "run.width", "run.height",
                      "run.guidance_scale", "run.max_sequence_length", "run.num_frames", "run.fps")


def recommended_values(ctx: ServerContext, defaults: Any) -> dict[str, Any]:
    """A model's recommended run settings as control values (within this server's limits)."""
    return {
        "run.prompt": defaults.prompt,
        "run.negative_prompt": defaults.negative_prompt or "",
        "run.steps": min(defaults.steps, ctx.limits.max_steps),
        "run.width": min(defaults.width, ctx.side_max),
        "run.height": min(defaults.height, ctx.side_max),
        "run.guidance_scale": defaults.guidance_scale,
        "run.max_sequence_length": defaults.max_sequence_length,
        "run.num_frames": defaults.num_frames,  # None for image models: the box shows "model default"
        "run.fps": defaults.fps,
    }


def same_value(a: Any, b: Any) -> bool:
    """Control values equal as settings (an empty box is None; 20 and 20.0 are the same)."""
    a, b = (None if v in ("", None) else v for v in (a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def is_video_model(ctx: ServerContext, model: str) -> bool:
    try:
        return ctx.defaults_for((model or "").strip() or EMBEDDED_MODEL).num_frames is not None
    except Exception:  # noqa: BLE001 - an unknown model is refused when it runs; the page keeps its layout
        return False


def load_model_defaults(ctx: ServerContext, model: str, applied: dict[str, Any] | None, values: dict[str, Any],
                        *, overwrite: bool = False) -> list[Any]:
    """The model changed: fill in its recommended prompt, steps, size and guidance where the user has not edited
    them (a field still showing the previous model's default); `overwrite` (the "Use this model's recommended
    settings" button) sets them all. Other controls stay. Outputs: `fill_outputs`, then the applied defaults."""
    model = (model or "").strip() or EMBEDDED_MODEL
    try:
        defaults = ctx.defaults_for(model)
    except OptimError as error:
        warn(str(error))
        return no_change() + [gr.skip()]
    recommended = recommended_values(ctx, defaults)
    out = dict(values)
    out["run.model"] = model
    kept = []
    for key, value in recommended.items():
        video_only = key in ("run.num_frames", "run.fps")  # follow the model's kind: an image model has none
        if overwrite or video_only or applied is None or same_value(values.get(key), applied.get(key)):
            out[key] = value
        elif not same_value(values.get(key), value):
            kept.append(key_facts(key).label)
    if kept:
        gr.Info(escape(f"Kept what you set in {', '.join(kept)}. “Use this model's recommended settings” sets "
                       "those too."), duration=8)
    return fill(ctx, out, shipped=gr.skip()) + [recommended]


def _visibility(options: list[str]) -> Callable[[str], list[Any]]:
    def show(chosen: str) -> list[Any]:
        return [gr.update(visible=chosen == option) for option in options]

    return show


def wire_settings(ctx: ServerContext, panel: SettingsPanel) -> None:
    """Events inside the settings column. Internal events stay out of the public API."""
    controls = panel.controls

    def with_values(fn: Callable[..., Any], *extra: Any) -> tuple[Callable[..., Any], set[Any]]:
        def handler(data: dict[Any, Any]) -> Any:
            return fn(ctx, *[data[c] for c in extra], panel.values_of(data))
        return handler, {*panel.control_list, *extra}

    # Model: a user's choice fills its defaults where the user has not edited them (the button: all of them);
    # the note and the video-only fields follow every change (also from a link).
    outputs = panel.fill_outputs + [panel.applied_defaults]
    fn, inputs = with_values(load_model_defaults, controls["run.model"], panel.applied_defaults)
    controls["run.model"].input(fn, inputs, outputs, **PRIVATE)  # `input`: typed ids and folders too
    fn, inputs = with_values(partial(load_model_defaults, overwrite=True), controls["run.model"],
                             panel.applied_defaults)
    panel.recommended_button.click(fn, inputs, outputs, **PRIVATE)
    controls["run.model"].change(
        lambda model: [model_note(ctx, model), gr.update(visible=is_video_model(ctx, model))], controls["run.model"],
        [panel.model_note, panel.frames_row], queue=False, **PRIVATE)

    # Only the chosen technique's options are shown.
    methods = list(panel.cache_groups)
    controls["cache.method"].change(_visibility(methods), controls["cache.method"],
                                    [panel.cache_groups[m] for m in methods], queue=False, **PRIVATE)
    backends = list(panel.quantization_groups)
    has_options = {b: any(n not in ("backend", "components") for n in C.QUANTIZATION_VARIANTS[b].model_fields)
                   for b in backends}

    def show_quantization(backend: str) -> list[Any]:
        return [gr.update(visible=backend != "none")] + [
            gr.update(visible=backend == b and has_options[b]) for b in backends]

    controls["quantization.backend"].change(
        show_quantization, controls["quantization.backend"],
        [controls["quantization.components"], *[panel.quantization_groups[b] for b in backends]],
        queue=False, **PRIVATE)
    controls["offload.mode"].change(lambda m: gr.update(visible=m == "group"), controls["offload.mode"],
                                    panel.offload_group, queue=False, **PRIVATE)
    controls["offload.offload_type"].change(lambda t: gr.update(visible=t == "block_level"),
                                            controls["offload.offload_type"], controls["offload.num_blocks_per_group"],
                                            queue=False, **PRIVATE)
    controls["compile.mode"].change(lambda m: gr.update(visible=m != "off"), controls["compile.mode"],
                                    panel.compile_group, queue=False, **PRIVATE)
    ratios = controls["cache.mag_cache.mag_ratios"]
    ratios.change(lambda r: gr.update(visible=r == "custom"), ratios, controls["cache.mag_cache.mag_ratios.custom"],
                  queue=False, **PRIVATE)

    # The live check of the settings (user edits only; handlers that fill every control update it themselves).
    gr.on([c.input for c in panel.control_list if hasattr(c, "input")],
          lambda data: on_edit(ctx, panel.values_of(data)), set(panel.control_list),
          [panel.summary, panel.preset_picker], trigger_mode="always_last", show_progress="hidden", **PRIVATE)
