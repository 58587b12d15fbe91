"""Presets and sharing: the shipped preset picker, a preset file's upload and download, share links (the preset and
run settings in the URL itself), and presets kept in the browser.

Handlers are plain functions of the server context and the controls' values; `build_sharing` makes the "Save,
share, import" accordion (it owns the preset's name and description controls) and `wire_sharing` its events.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from lab import fields
from lab.context import ServerContext
from lab.controls import CUSTOM_PRESET, PRIVATE, SettingsPanel, check_control_bounds, elem_id, fill, no_change, warn
from lab.errors import user_error
from lab.fields import key_facts
from lab.text import escape, log, plain_markdown
from optim.config import RunSpec
from optim.errors import ConfigError, OptimError
from optim.presets import Preset, preset_from_json, preset_to_json
from optim.share import QUERY_PARAMETER, decode_share, encode_share

MAX_SAVED_PRESETS = 50
BROWSER_STORAGE_KEY = "optim-lab-presets"


@dataclass
class SharingPanel:
    share_button: Any
    export_button: Any
    share_box: Any
    export_file: Any
    export_code: Any
    upload: Any
    saved_picker: Any
    save_button: Any
    load_button: Any
    delete_button: Any
    saved: Any  # gr.BrowserState: {preset name: preset JSON}


def default_values(ctx: ServerContext) -> dict[str, Any]:
    """Every control's value when the page opens: the baseline preset, the embedded model's settings."""
    run = RunSpec()
    return fields.values_from_settings(ctx.default_preset, run, ctx.defaults_for(run.model))


def current_run(values: dict[str, Any]) -> RunSpec:
    """The run settings shown now (the defaults if they do not validate), kept when a preset is loaded."""
    try:
        return fields.run_from_values(values)
    except OptimError:
        return RunSpec()


def values_for(ctx: ServerContext, preset: Preset, run: RunSpec) -> dict[str, Any]:
    return fields.values_from_settings(preset, run, ctx.defaults_for(run.model))


def load_shipped(ctx: ServerContext, name: str, values: dict[str, Any]) -> list[Any]:
    """Pick a shipped preset: every optimization control takes its values; the run settings stay."""
    if name == CUSTOM_PRESET:
        return no_change()  # "custom settings" is what the controls already show
    if name not in ctx.shipped:
        warn(f"unknown preset {name!r}")
        return no_change()
    return fill(ctx, values_for(ctx, ctx.shipped[name], current_run(values)), shipped=name)


def preset_from_upload(ctx: ServerContext, path: str | None) -> Preset:
    """Read an uploaded preset file (size-limited, strict). Raises ConfigError saying what is wrong."""
    if not path:
        raise ConfigError("no file was uploaded")
    size = os.path.getsize(path)
    if size > ctx.limits.max_upload_bytes:
        raise ConfigError(
            f"preset upload: {size} bytes is too large for a preset (at most {ctx.limits.max_upload_bytes}); is it a "
            "preset JSON file?"
        )
    return preset_from_json(Path(path).read_bytes(), where=f"preset {Path(path).name}")


def import_preset(ctx: ServerContext, path: str | None, values: dict[str, Any]) -> list[Any]:
    """Upload a preset JSON: a valid one fills the optimization controls; a bad one warns and changes nothing."""
    try:
        preset = preset_from_upload(ctx, path)
    except OptimError as error:
        warn(f"The preset file was not loaded: {error}")
        return no_change() + [None]
    gr.Info(escape(f"Loaded preset '{preset.name}'."))
    return fill(ctx, values_for(ctx, preset, current_run(values)), shipped=ctx.matching_shipped(preset)) + [None]


def export_preset(ctx: ServerContext, values: dict[str, Any]) -> tuple[Any, Any]:
    """The current settings as a preset JSON file to download (and its text)."""
    try:
        preset, _ = fields.settings_from_values(values, ctx.shipped)
    except OptimError as error:
        raise user_error(error) from None
    text = preset_to_json(preset)
    folder = Path(tempfile.mkdtemp(dir=ctx.reports_dir, prefix="preset-"))
    path = folder / f"{preset.name}.json"
    path.write_text(text)
    return gr.update(value=str(path), visible=True), gr.update(value=text, visible=True)


def share_token(ctx: ServerContext, values: dict[str, Any]) -> str:
    """The share token of the current settings (preset and run settings, in the URL itself)."""
    preset, run = fields.settings_from_values(values, ctx.shipped)
    token = encode_share(preset, run)
    if len(token) > ctx.limits.max_link_chars:
        raise ConfigError(f"these settings make a link of {len(token)} characters; this server reads at most "
                          f"{ctx.limits.max_link_chars} (shorten the description)")
    return token


def share_link(ctx: ServerContext, values: dict[str, Any]) -> str:
    """'?s=TOKEN' for the current settings; the page prefixes its own address (see the share button's js)."""
    try:
        return f"?{QUERY_PARAMETER}={share_token(ctx, values)}"
    except OptimError as error:
        raise user_error(error) from None


def restore_from_link(ctx: ServerContext, token: str | None) -> tuple[dict[str, Any], str | None]:
    """The control values a share token carries; a bad link warns and gives the defaults (never raises)."""
    if token is None or token == "":
        return default_values(ctx), None
    try:
        from optim.limits import check_run

        preset, run = decode_share(token, max_chars=ctx.limits.max_link_chars)
        check_run(run, ctx.limits)
        values = values_for(ctx, preset, run)
        check_control_bounds(ctx, values)
        fields.settings_from_values(values, ctx.shipped)  # what the link restores must be runnable as shown
    except OptimError as error:
        warn(f"The share link could not be used, so the defaults are shown: {error}")
        return default_values(ctx), None
    except Exception as error:  # noqa: BLE001 - a hostile link must never break the page
        log.exception("share link")
        warn(f"The share link could not be used, so the defaults are shown ({type(error).__name__}).")
        return default_values(ctx), None
    return values, ctx.matching_shipped(preset)


def on_page_load(ctx: ServerContext, saved: Any, request: gr.Request | None) -> list[Any]:
    """Page opened: restore a share link (?s=...) if there is one, and list the presets saved in this browser."""
    params = dict(getattr(request, "query_params", None) or {})
    names = gr.update(choices=saved_names(saved), value=None)
    if not params.get(QUERY_PARAMETER):  # the page already shows the defaults: leave what the user typed since
        return no_change() + [names]
    values, shipped = restore_from_link(ctx, params.get(QUERY_PARAMETER))
    if shipped is None and values == default_values(ctx):  # no link, or a bad one: the defaults are the baseline
        shipped = ctx.default_preset.name
    return fill(ctx, values, shipped=shipped) + [names]


# ----------------------------------------------------------------------------- presets in the browser


def saved_names(saved: Any) -> list[str]:
    return sorted(saved) if isinstance(saved, dict) else []


def save_to_browser(ctx: ServerContext, values: dict[str, Any], saved: Any) -> tuple[dict[str, str], Any]:
    """Keep the current settings under their preset name in this browser (localStorage)."""
    try:
        preset, _ = fields.settings_from_values(values, ctx.shipped)
    except OptimError as error:
        raise user_error(error) from None
    saved = dict(saved) if isinstance(saved, dict) else {}
    if preset.name not in saved and len(saved) >= MAX_SAVED_PRESETS:
        raise user_error(f"{MAX_SAVED_PRESETS} presets are saved in this browser already: delete one first")
    saved[preset.name] = preset_to_json(preset)
    gr.Info(escape(f"Saved '{preset.name}' in this browser."))
    return saved, gr.update(choices=saved_names(saved), value=preset.name)


def load_from_browser(ctx: ServerContext, name: str | None, saved: Any, values: dict[str, Any]) -> list[Any]:
    if not name or not isinstance(saved, dict) or name not in saved:
        warn("Pick a saved preset first.")
        return no_change()
    try:
        preset = preset_from_json(saved[name], where=f"saved preset {name!r}")
    except OptimError as error:
        warn(f"The saved preset could not be loaded (edited by hand?): {error}")
        return no_change()
    gr.Info(escape(f"Loaded '{name}': its optimizations are in the controls (the model and prompt stay)."))
    return fill(ctx, values_for(ctx, preset, current_run(values)), shipped=ctx.matching_shipped(preset))


def delete_from_browser(name: str | None, saved: Any) -> tuple[dict[str, str], Any]:
    saved = dict(saved) if isinstance(saved, dict) else {}
    if name in saved:
        del saved[name]
        gr.Info(escape(f"Deleted '{name}' from this browser."))
    return saved, gr.update(choices=saved_names(saved), value=None)


# ------------------------------------------------------------------------------------------------ layout


def build_sharing(ctx: ServerContext, defaults: dict[str, Any], controls: dict[str, Any]) -> SharingPanel:
    """The "Save, share, import" accordion; adds the preset name and description to `controls`."""
    with gr.Accordion("Save, share, import", open=False, elem_id="share-accordion"):
        with gr.Row():
            for key, scale in (("preset.name", 1), ("preset.description", 2)):
                facts = key_facts(key)
                controls[key] = gr.Textbox(defaults[key], label=facts.label, info=plain_markdown(facts.help),
                                           elem_id=elem_id(key),
                                           scale=scale, max_lines=3 if key.endswith("description") else 1)
        with gr.Row():
            share_button = gr.Button("Create share link", size="sm", elem_id="share-button")
            export_button = gr.Button("Download preset JSON", size="sm", elem_id="export-button")
        share_box = gr.Textbox(label="Share link", info="Carries the preset and run settings in the URL itself: "
                               "opening it restores every control.", buttons=["copy"], interactive=False,
                               elem_id="share-link")
        export_file = gr.File(label="Preset file", visible=False, interactive=False, elem_id="export-file")
        export_code = gr.Code(label="Preset JSON", language="json", visible=False, interactive=False,
                              wrap_lines=True)
        upload = gr.File(label="Load a preset JSON file", file_types=[".json"], type="filepath", height=110,
                         elem_id="preset-upload")
        saved_picker = gr.Dropdown([], label="My presets", info="Kept in this browser: they survive a reload.",
                                   elem_id="saved-presets")
        with gr.Row():
            save_button = gr.Button("Save current settings", size="sm")
            load_button = gr.Button("Load", size="sm")
            delete_button = gr.Button("Delete", size="sm", variant="stop")
    saved = gr.BrowserState({}, storage_key=BROWSER_STORAGE_KEY, secret=ctx.browser_state_secret)
    return SharingPanel(share_button=share_button, export_button=export_button, share_box=share_box,
                        export_file=export_file, export_code=export_code, upload=upload, saved_picker=saved_picker,
                        save_button=save_button, load_button=load_button, delete_button=delete_button, saved=saved)


def wire_sharing(ctx: ServerContext, demo: gr.Blocks, settings: SettingsPanel, panel: SharingPanel) -> None:
    controls = settings.control_list

    def with_values(fn: Callable[..., Any], *extra: Any) -> tuple[Callable[..., Any], set[Any]]:
        """Adapt a handler taking (ctx, extra values..., values) to Gradio's dict-of-inputs form."""
        def handler(data: dict[Any, Any]) -> Any:
            return fn(ctx, *[data[c] for c in extra], settings.values_of(data))
        return handler, {*controls, *extra}

    # `select`, not `input`: a dropdown selection fires `input` twice, and the late duplicate fill would undo the
    # user's next edits.
    fn, inputs = with_values(load_shipped, settings.preset_picker)
    settings.preset_picker.select(fn, inputs, settings.fill_outputs, **PRIVATE)
    fn, inputs = with_values(import_preset, panel.upload)
    panel.upload.upload(fn, inputs, settings.fill_outputs + [panel.upload], **PRIVATE)
    fn, inputs = with_values(export_preset)
    panel.export_button.click(fn, inputs, [panel.export_file, panel.export_code], **PRIVATE)
    fn, inputs = with_values(share_link)
    panel.share_button.click(fn, inputs, panel.share_box, **PRIVATE).then(
        None, panel.share_box, panel.share_box,
        js="(link) => link && link.startsWith('?') ? window.location.origin + window.location.pathname + link : link",
        **PRIVATE)
    panel.save_button.click(lambda data: save_to_browser(ctx, settings.values_of(data), data[panel.saved]),
                            {*controls, panel.saved}, [panel.saved, panel.saved_picker], **PRIVATE)
    fn, inputs = with_values(load_from_browser, panel.saved_picker, panel.saved)
    panel.load_button.click(fn, inputs, settings.fill_outputs, **PRIVATE)
    panel.delete_button.click(delete_from_browser, [panel.saved_picker, panel.saved], [panel.saved, panel.saved_picker],
                              **PRIVATE)

    def page_load(saved: Any, request: gr.Request) -> list[Any]:
        return on_page_load(ctx, saved, request)

    demo.load(page_load, [panel.saved], settings.fill_outputs + [panel.saved_picker], **PRIVATE)
