"""The "Will it fit?" tab of the settings: every combination of weight storage, offload and VAE tiling that fits a
chosen card for the model and run settings shown, fastest expected first (`optim.plan`), each loadable into the
controls by selecting its row. Nothing runs: the prediction comes from the model's published configs.

Also the public API's `plan` endpoint (`plan_report`), wired in `lab.api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from lab import fields
from lab.context import ServerContext
from lab.text import escape, log, planning_card, size_text
from optim.config import parse_optim
from optim.errors import ConfigError, OptimError
from optim.plan import SPEED_WHY
from optim.plan.cards import CARDS, GIB, Card, parse_card

THIS_GPU = "this-gpu"
TABLE_HEADERS = ["#", "combination", "GPU need", "spare", "host", "speed, peak"]
TABLE_WIDTHS = ["5%", "40%", "11%", "10%", "9%", "25%"]
SHOWN = 15  # rows of what fits; the closest that do not follow


@dataclass
class PlanPanel:
    card: Any
    button: Any
    status: Any
    table: Any
    rows: Any  # gr.State: the settings of each row shown


def card_choices(ctx: ServerContext) -> list[tuple[str, str]]:
    """This machine's GPU first (when it has one), then every card the planner knows by name."""
    known = [(f"{card.note} ({card.memory_gib:g} GiB)", name) for name, card in CARDS.items()]
    if ctx.cuda and ctx.device.memory_gb:
        return [(f"this GPU: {ctx.device.name} ({ctx.device.memory_gb:.0f} GiB)", THIS_GPU)] + known
    return known


def chosen_card(ctx: ServerContext, text: str | None) -> Card:
    """The card picked (a known name, a size such as 16 or 12GB, or this GPU)."""
    text = (text or "").strip()
    if not text or text == THIS_GPU:
        return planning_card(ctx)[0]
    return parse_card(text)


def plan_for(ctx: ServerContext, values: dict[str, Any], card_text: str | None) -> Any:
    """The plan (`optim.plan.plan`) for the model, run settings, attention backend and cache the controls show."""
    from optim.plan import plan

    run = fields.run_from_values(values)
    optim = fields.optim_from_values(values)
    return plan(run.model, chosen_card(ctx, card_text), width=run.width, height=run.height, steps=run.steps,
                num_frames=run.num_frames, max_sequence_length=run.max_sequence_length,
                dtype="bfloat16" if run.dtype == "auto" else run.dtype, guidance_scale=run.guidance_scale,
                attention=optim.attention.backend, cache=optim.cache)


def list_fits(ctx: ServerContext, values: dict[str, Any], card_text: str | None) -> list[Any]:
    """Outputs: the status line, the table, the settings of each row."""
    try:
        result = plan_for(ctx, values, card_text)
    except OptimError as error:
        return [f"<span class='bad'>{escape(str(error))}</span>", [], []]
    except Exception as error:  # noqa: BLE001 - the page keeps working; the log has the traceback
        log.exception("plan")
        return [f"<span class='bad'>The plan could not be made ({escape(type(error).__name__)}: "
                f"{escape(str(error))})</span>", [], []]
    fits = result.fits[:SHOWN]
    closest = result.closest_misses()
    card, run = result.card, result.run

    def row(mark: str, option: Any) -> list[str]:
        spare = card.memory_bytes - option.card_bytes
        at = f"peak in {option.peak_phase}" if option.peak_bytes >= option.load_peak_bytes else "peak while loading"
        return [mark, option.label, size_text(option.need_bytes), ("" if spare >= 0 else "−") + size_text(abs(spare)),
                size_text(option.host_bytes), f"{SPEED_WHY[option.speed_class]}; {at}"]

    rows = [row(str(i + 1), option) for i, option in enumerate(fits)] + [row("✗", option) for option in closest]
    loaded = next((o for o in result.options if o.settings == {"offload": {"mode": "none"}}), None)
    size = f"{run['width']}x{run['height']}" + (f", {run['num_frames']} frames" if run.get("num_frames") else "")
    status = (f"<b>{escape(result.model)}</b> at {size} on {escape(card.note or card.name)} "
              f"({card.memory_gib:g} GiB): <b>{len(result.fits)} of {len(result.options)}</b> combinations fit"
              " (GPU need: the most held at once, loading included; spare: what is left after it, 0.5 GiB for the "
              "CUDA context and 5% for the allocator).")
    if loaded is not None:
        status += (f" As loaded ({escape(loaded.label)}) it needs {size_text(loaded.need_bytes)}: "
                   + ("<b>fits</b>." if loaded.fits else "<span class='bad'><b>does not fit</b></span>."))
    status += (" Fastest expected first; ✗ rows are the closest that do not fit. Select a row to load it into "
               "the controls (attention, cache and compile stay as they are).")
    return [status, rows, [option.settings for option in fits] + [option.settings for option in closest]]


def optim_with(values: dict[str, Any], settings: dict[str, Any]) -> Any:
    """The controls' optimizations with a plan row's weight storage, offload and VAE tiling."""
    data = fields.optim_from_values(values).model_dump(mode="json")
    data["quantization"] = settings.get("quantization", {"backend": "none"})
    data["offload"] = settings["offload"]
    data["vae"] = {**data["vae"], "tiling": bool(settings.get("vae", {}).get("tiling"))}
    return parse_optim(data)


def use_fit(ctx: ServerContext, rows: list[dict[str, Any]] | None, values: dict[str, Any],
            evt: gr.SelectData) -> list[Any]:
    """Selecting a row loads that combination into the controls."""
    from lab.controls import fill, no_change, warn
    from lab.sharing import current_run, values_for
    from optim.presets import make_preset

    rows = rows or []
    index = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if not isinstance(index, int) or not 0 <= index < len(rows):
        warn("Pick a row of the table (list what fits first).")
        return no_change()
    try:
        optim = optim_with(values, rows[index])
    except OptimError as error:
        warn(f"This combination cannot be loaded with the other settings shown: {error}")
        return no_change()
    preset = make_preset(f"fits-{index + 1}", optim, description="From the memory planner")
    gr.Info(escape(f"Loaded combination {index + 1} into the settings."))
    return fill(ctx, values_for(ctx, preset, current_run(values)), shipped=ctx.matching_shipped(preset))


def build_plan_panel(ctx: ServerContext) -> PlanPanel:
    """The tab's components (`lab.layout` places them in a tab of the settings' technique tabs)."""
    gr.Markdown("Which settings fit a card, before anything runs: each combination of weight storage, offload and "
                "VAE tiling, predicted from the model's configs for the run settings in the Model tab "
                "(`python -m optim plan` gives every term).", elem_classes="lab-note")
    default = THIS_GPU if ctx.cuda and ctx.device.memory_gb else planning_card(ctx)[0].name
    choices = card_choices(ctx)
    if default not in {value for _, value in choices}:  # OPTIM_PLAN_GPU named a size
        choices.append((default, default))
    with gr.Row():
        card = gr.Dropdown(choices, value=default, allow_custom_value=True, label="GPU",
                           info="A card by name, or its memory in GB (e.g. 16).", elem_id="plan-card", scale=3)
        button = gr.Button("List what fits", variant="secondary", elem_id="plan-button", scale=1)
    status = gr.HTML("", elem_id="plan-status", elem_classes="lab-note")
    table = gr.Dataframe(headers=TABLE_HEADERS, column_widths=TABLE_WIDTHS, interactive=False, wrap=True,
                         elem_id="plan-table", max_height=520)
    return PlanPanel(card=card, button=button, status=status, table=table, rows=gr.State([]))


def wire_plan_panel(ctx: ServerContext, panel: PlanPanel, settings: Any) -> None:
    from lab.controls import PRIVATE

    controls = set(settings.control_list)

    def on_list(data: dict[Any, Any]) -> list[Any]:
        return list_fits(ctx, settings.values_of(data), data[panel.card])

    def on_select(data: dict[Any, Any], evt: gr.SelectData) -> list[Any]:
        return use_fit(ctx, data[panel.rows], settings.values_of(data), evt)

    outputs = [panel.status, panel.table, panel.rows]
    panel.button.click(on_list, {*controls, panel.card}, outputs, **PRIVATE)
    panel.card.change(on_list, {*controls, panel.card}, outputs, **PRIVATE)
    panel.table.select(on_select, {*controls, panel.rows}, settings.fill_outputs, **PRIVATE)


# ------------------------------------------------------------------------------------------------- the API


def plan_report(model: str, gpu: str, *, width: int | None = None, height: int | None = None,
                steps: int | None = None, num_frames: int | None = None, top: int = 10) -> dict[str, Any]:
    """The `plan` endpoint's answer: the card, the run planned, each component's weights by storage, and the
    `top` combinations that fit (and the closest that do not), each with its settings, needs and reason."""
    from optim.models import EMBEDDED_MODEL
    from optim.plan import plan

    if not 1 <= top <= 50:
        raise ConfigError(f"top {top}: between 1 and 50")
    result = plan((model or "").strip() or EMBEDDED_MODEL, (gpu or "").strip() or "rtx-4090", width=width,
                  height=height, steps=steps, num_frames=num_frames)

    def brief(option: Any) -> dict[str, Any]:
        return {"label": option.label, "settings": option.settings, "fits": option.fits,
                "need_gib": round(option.need_bytes / GIB, 3), "peak_gib": round(option.peak_bytes / GIB, 3),
                "load_peak_gib": round(option.load_peak_bytes / GIB, 3),
                "host_gib": round(option.host_bytes / GIB, 3), "peak_phase": option.peak_phase,
                "reason": option.reason}

    closest = result.closest_misses()
    return {"model": result.model, "card": {"name": result.card.name, "memory_gib": result.card.memory_gib,
                                            "note": result.card.note},
            "run": result.run, "weights_gib": {c: {k: round(v / GIB, 3) for k, v in s.items()}
                                               for c, s in result.weights.items()},
            "combinations": len(result.options), "fitting": len(result.fits),
            "fits": [brief(o) for o in result.fits[:top]], "closest_not_fitting": [brief(o) for o in closest]}
