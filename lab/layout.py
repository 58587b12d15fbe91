"""The page: the header, what this machine can run, the settings column (settings, run, sharing) beside the results
column, and the hidden API endpoint. Each area is built and wired by its own module; this file only places them.

    demo = build_demo(ServerContext.create())
"""

from __future__ import annotations

import gradio as gr

from lab.api import build_api, wire_api
from lab.context import ServerContext
from lab.controls import build_settings, wire_settings
from lab.fields import CONTROL_KEYS
from lab.plan_panel import build_plan_panel, wire_plan_panel
from lab.results import build_results, wire_results
from lab.run_panel import build_run_panel, wire_run_panel
from lab.sharing import build_sharing, default_values, wire_sharing
from lab.sweep_panel import build_sweep_panel, wire_sweep_panel
from lab.text import capabilities_sections, header_html

THEME = gr.themes.Soft(
    primary_hue="orange",
    secondary_hue="blue",
    neutral_hue="slate",
    font=["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

CSS = """
.gradio-container { max-width: 1500px !important; margin: 0 auto; }
#lab-header { padding: 4px 2px 0 2px; }
#lab-header h1 { font-size: 1.7rem; margin: 0 0 2px 0; letter-spacing: -0.01em; }
#lab-header .lab-tagline { font-size: 1rem; opacity: 0.85; margin: 0 0 6px 0; }
#lab-header .lab-device { display: flex; flex-wrap: wrap; gap: 6px; font-size: 0.82rem; }
#lab-header .lab-device span, .lab-badges span {
  border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 2px 10px;
  background: var(--background-fill-secondary);
}
.lab-note { font-size: 0.85rem; opacity: 0.9; }
.lab-note.warn, .bad { color: #c2410c; }
.lab-check { font-size: 0.86rem; line-height: 1.45; padding: 8px 12px; border-radius: 8px;
  border: 1px dashed var(--border-color-primary); background: var(--background-fill-secondary); }
.lab-check.bad { border-color: #c2410c; }
.lab-stats { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px; }
@media (max-width: 800px) { .lab-stats { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
.lab-stat { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px 14px;
  background: var(--background-fill-secondary); }
.lab-stat-title { font-size: 0.78rem; text-transform: uppercase; letter-spacing: 0.05em; opacity: 0.7; }
.lab-stat-value { font-size: clamp(1.15rem, 1.9vw, 1.7rem); white-space: nowrap; font-weight: 700;
  line-height: 1.2; font-variant-numeric: tabular-nums; }
.lab-stat-sub { font-size: 0.8rem; opacity: 0.75; }
.lab-stat.good .lab-stat-value { color: #15803d; }
.lab-stat.bad .lab-stat-value { color: #c2410c; }
.lab-stat.unsure .lab-stat-value { opacity: 0.45; }  /* a ratio its interval does not back */
.lab-badges { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 10px; font-size: 0.8rem; }
.lab-error { color: #c2410c; border-color: #c2410c !important; text-align: left !important; opacity: 1 !important; }
.lab-error .lab-note { color: var(--body-text-color); }
/* Tables break lines between words only ("speedup", not "speedu p"). */
#history-table :is(th, td, span), #metrics-table :is(th, td, span), #sweep-table :is(th, td, span) {
  word-break: normal !important; overflow-wrap: normal !important; hyphens: none; }
.lab-empty { padding: 28px; text-align: center; opacity: 0.75; border: 1px dashed var(--border-color-primary);
  border-radius: 12px; }
#run-button { font-size: 1.05rem; }
/* Show the exact pixels: a one-level difference must not be blurred away by the browser's scaling. */
#image-slider img, #heatmap img { image-rendering: pixelated; }
#technique-tabs button[role="tab"] { padding-left: 10px; padding-right: 10px; }
.lab-section-title { margin: 4px 0 -4px 0; font-weight: 600; }
"""

# theme/css are launch() arguments in Gradio 6; tests launch with the same.
LAUNCH_KWARGS = dict(
    theme=THEME,
    css=CSS,
    max_file_size=1024 * 1024,  # uploads are presets; the app itself refuses more than limits.max_upload_bytes
    footer_links=["api", "gradio"],
)


def build_demo(ctx: ServerContext) -> gr.Blocks:
    defaults = default_values(ctx)
    with gr.Blocks(title="Diffusion Optimization Lab", fill_width=True) as demo:
        gr.HTML(header_html(ctx))
        with gr.Accordion("What this machine can run (and why not)", open=False, elem_id="capabilities"):
            for title, body in capabilities_sections(ctx.capabilities):
                with gr.Accordion(title, open=False):
                    gr.Markdown(body)
        with gr.Tabs(elem_id="lab-tabs"):
            with gr.Tab("Compare", id="tab-compare"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1, min_width=440):
                        run_panel = build_run_panel()  # first: above the fold on any screen
                        settings = build_settings(ctx, defaults)
                        with settings.tabs, gr.Tab("Will it fit?", id="tab-plan"):
                            plan = build_plan_panel(ctx)
                        sharing = build_sharing(ctx, defaults, settings.controls)
                    with gr.Column(scale=1, min_width=480):
                        results = build_results()
            with gr.Tab("Sweep & tune", id="tab-sweep"):
                sweep = build_sweep_panel(ctx)
        api = build_api(ctx)
        missing = set(CONTROL_KEYS) - set(settings.controls)
        if missing:  # a config field without a control is a bug of this package
            raise RuntimeError(f"no control for {sorted(missing)}")
        wire_settings(ctx, settings)
        wire_plan_panel(ctx, plan, settings)
        wire_sharing(ctx, demo, settings, sharing)
        wire_run_panel(ctx, run_panel, settings, results)
        wire_results(results)
        wire_api(ctx, api)
        wire_sweep_panel(ctx, sweep, settings)
    demo.queue(max_size=64, default_concurrency_limit=8)
    return demo
