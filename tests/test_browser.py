"""The app in a real browser (Debian's Chromium driven by Playwright): a share link restores the controls, a
comparison runs, the metrics show, and a screenshot is saved.

    OPTIM_SCREENSHOT=docs/screenshot.png python -m pytest tests/test_browser.py    # also writes the README image
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def context():
    from lab.context import ServerContext

    ctx = ServerContext.create()
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def server_url(context):
    from lab.layout import LAUNCH_KWARGS, build_demo
    from lab.server import announce_port

    demo = build_demo(context)
    port = free_port()
    announce_port(port)  # the page this test's browser opens is the lab's own, not contention
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **LAUNCH_KWARGS)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture()
def page(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with playwright_api.sync_playwright() as playwright:
        # A persistent context is how Playwright takes a user-data-dir: a fresh one, so nothing is remembered.
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1440, "height": 1000}, device_scale_factor=1,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def control(page, key: str):
    from lab.controls import elem_id

    return page.locator(f"#{elem_id(key)}")


def input_value(page, key: str) -> str:
    return control(page, key).locator("input, textarea").first.input_value()


def test_share_link_restores_the_controls_then_a_comparison_runs(server_url, page, tmp_path):
    from lab.controls import elem_id
    from optim.config import RunSpec, parse_optim
    from optim.presets import make_preset
    from optim.share import encode_share

    preset = make_preset("fbc-strong", parse_optim({"cache": {"method": "first_block_cache", "threshold": 0.2}}),
                         description="First Block Cache, skipping more")
    run = RunSpec(prompt="a yellow triangle on a blue background", seed=7, steps=20, timed_runs=2)
    page.goto(f"{server_url}?s={encode_share(preset, run)}", wait_until="domcontentloaded")

    # The link's values reach the controls (the page restores them on load).
    page.wait_for_function(
        "(id) => { const el = document.querySelector(`#${id} input, #${id} textarea`); "
        "return el && el.value === 'a yellow triangle on a blue background'; }",
        arg=elem_id("run.prompt"), timeout=60_000,
    )
    assert input_value(page, "run.seed") == "7"
    assert input_value(page, "run.steps") == "20"
    page.get_by_text("More run settings").click()  # closed accordions render their controls when opened
    control(page, "run.timed_runs").wait_for(timeout=10_000)
    assert input_value(page, "run.timed_runs") == "2"
    page.locator("#share-accordion").get_by_text("Save, share, import").click()
    control(page, "preset.name").locator("input, textarea").first.wait_for(timeout=10_000)
    assert input_value(page, "preset.name") == "fbc-strong"
    assert input_value(page, "preset.description") == "First Block Cache, skipping more"
    page.locator("#share-accordion").get_by_text("Save, share, import").click()  # fold it again
    page.get_by_role("tab", name="Cache").click()
    assert input_value(page, "cache.method") == "First Block Cache"
    assert float(input_value(page, "cache.first_block_cache.threshold")) == 0.2
    summary = page.locator("#settings-summary").inner_html()
    assert "cache</b> method=first_block_cache, threshold=0.2" in summary
    assert "GPU memory, planned for GeForce RTX 4090 24 GB" in summary  # the planner, before anything runs

    # Cancel a comparison while it runs (its worker process is killed), then run one to the end.
    page.locator("#run-button").click()
    page.get_by_text("Baseline ·").first.wait_for(timeout=120_000)
    page.locator("#cancel-button").click()
    page.get_by_text("Cancelled").first.wait_for(timeout=30_000)
    assert "Speedup" not in page.locator("#headline").inner_text()

    page.locator("#run-button").click()
    headline = page.locator("#headline")
    headline.get_by_text("Speedup").wait_for(timeout=300_000)
    text = headline.inner_text()
    assert "×" in text and "PEAK MEMORY" in text.upper() and "fbc-strong" in text

    page.get_by_role("tab", name="Metrics").click()
    table = page.locator("#metrics-table")
    table.get_by_text("PSNR vs baseline").wait_for(timeout=30_000)
    assert "speedup" in table.inner_text() and "peak memory" in table.inner_text()
    page.get_by_role("tab", name="Images").click()
    page.locator("#image-slider img").first.wait_for(timeout=30_000)

    page.get_by_text("Cancelled: the comparison").first.wait_for(state="hidden", timeout=30_000)  # toast gone
    path = tmp_path / "app.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    target = os.environ.get("OPTIM_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def type_into(page, key: str, text: str) -> None:
    """Type like a user. A box in a just-opened accordion takes a moment to listen to input (a person is never
    that fast), so check that the text took and type again if not."""
    box = control(page, key).locator("input, textarea").first
    for _ in range(10):
        box.fill(text)
        box.press("Tab")
        page.wait_for_timeout(300)
        if box.input_value() == text:
            return
    raise AssertionError(f"{key} did not take {text!r}")


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_preset_picker_share_button_and_presets_saved_in_the_browser(server_url, page, context):
    from lab.controls import elem_id
    from lab.sharing import default_values
    from optim.share import decode_share

    page.goto(server_url, wait_until="domcontentloaded")
    page.wait_for_function(
        "([id, text]) => { const el = document.querySelector(`#${id} input, #${id} textarea`); "
        "return el && el.value === text; }",
        arg=[elem_id("run.prompt"), default_values(context)["run.prompt"]], timeout=60_000,
    )
    # The attention help shows on screen exactly as written (Gradio's Markdown used to eat its `*` wildcards).
    from optim.config import AttentionConfig, facts

    page.get_by_role("tab", name="Attention").click()
    shown = " ".join(control(page, "attention.backend").inner_text().split())
    assert " ".join(facts(AttentionConfig, "backend").help.split()) in shown, shown
    pick(page, "preset-picker", "taylorseer")
    page.get_by_role("tab", name="Cache").click()
    page.wait_for_function(
        "(id) => document.querySelector(`#${id} input`)?.value === 'TaylorSeer'",
        arg=elem_id("cache.method"), timeout=30_000,
    )
    control(page, "cache.taylorseer.cache_interval").wait_for(state="visible", timeout=10_000)
    assert not control(page, "cache.first_block_cache.threshold").is_visible()
    page.locator("#settings-summary").get_by_text("method=taylorseer").wait_for(timeout=30_000)

    # A user's edit updates the live check of the settings.
    interval = control(page, "cache.taylorseer.cache_interval").locator("input[type=number]").first
    interval.fill("7")
    interval.press("Enter")
    page.locator("#settings-summary").get_by_text("cache_interval=7").wait_for(timeout=30_000)

    page.locator("#share-accordion").get_by_text("Save, share, import").click()
    type_into(page, "preset.name", "my-taylor")
    page.locator("#share-button").click()
    page.wait_for_function(
        "(id) => (document.querySelector(`#${id} input, #${id} textarea`)?.value || '').includes('?s=')",
        arg="share-link", timeout=30_000,
    )
    link = page.locator("#share-link").locator("input, textarea").first.input_value()
    assert link.startswith(server_url.rstrip("/"))
    preset, _ = decode_share(link.split("?s=", 1)[1])
    assert preset.name == "my-taylor" and preset.optim.cache.cache_interval == 7

    page.get_by_role("button", name="Save current settings").click()
    page.get_by_text("Saved 'my-taylor' in this browser.").first.wait_for(timeout=30_000)
    page.reload(wait_until="domcontentloaded")
    page.locator("#share-accordion").get_by_text("Save, share, import").click()
    pick(page, "saved-presets", "my-taylor")  # it survived the reload
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_role("tab", name="Cache").click()
    page.wait_for_function(
        "(id) => document.querySelector(`#${id} input[type=number]`)?.value === '7'",
        arg=elem_id("cache.taylorseer.cache_interval"), timeout=30_000,
    )


def test_a_small_sweep_runs_in_the_app_and_a_point_loads_into_the_controls(server_url, page):
    from lab.controls import elem_id

    page.goto(server_url, wait_until="domcontentloaded")
    page.wait_for_function(
        "(id) => { const el = document.querySelector(`#${id} input`); return el && el.value !== ''; }",
        arg=elem_id("run.steps"), timeout=60_000)
    steps = control(page, "run.steps").locator("input[type=number]").first
    steps.fill("4")
    steps.press("Enter")
    page.get_by_text("More run settings").first.click()
    budget = control(page, "run.time_budget_s").locator("input[type=number]").first
    budget.fill("1")  # a point's timed runs stop after a second (a sweep point never exceeds the run's budget)
    budget.press("Enter")
    page.get_by_role("tab", name="Sweep & tune").click()
    space = ('{"name": "two", "base": {"cache": {"method": "first_block_cache"}}, '
             '"grid": {"cache.threshold": [0.1, 0.45]}}')
    editor = page.locator("#sweep-space-json .cm-content")
    editor.wait_for(timeout=30_000)
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(space)
    page.locator("#sweep-prompts input").first.click()
    page.get_by_role("option", name="quick", exact=True).click()
    page.locator("#sweep-button").click()
    page.locator("#sweep-status").get_by_text("2 points").wait_for(timeout=300_000)
    table = page.locator("#sweep-table")
    cell = table.get_by_test_id("cell-1-1")  # row 2 (0.45), the configuration column
    cell.wait_for(timeout=30_000)
    assert "first_block_cache threshold=0.45" in cell.inner_text()
    assert "★" in table.inner_text()
    assert page.locator("#sweep-chart img, #sweep-chart canvas, #sweep-chart svg").count() > 0
    cell.click()
    page.get_by_text("into the settings").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("tab", name="Cache").click()
    page.wait_for_function(
        "(id) => document.querySelector(`#${id} input`)?.value === '0.45'",
        arg=elem_id("cache.first_block_cache.threshold"), timeout=30_000)


def test_what_the_user_typed_is_kept_or_refused_never_silently_changed(server_url, page, context):
    """Issues: steps 0 was clamped to 1 and ran; typing a model id overwrote the prompt; the summary kept saying
    "20 steps". Now: the box keeps 0, the summary and Run say why it cannot run; a new model keeps the typed prompt
    and the button sets the model's own."""
    from lab.controls import elem_id
    from lab.sharing import default_values

    page.goto(server_url, wait_until="domcontentloaded")
    page.wait_for_function(
        "([id, text]) => { const el = document.querySelector(`#${id} input, #${id} textarea`); "
        "return el && el.value === text; }",
        arg=[elem_id("run.prompt"), default_values(context)["run.prompt"]], timeout=60_000,
    )
    steps = control(page, "run.steps").locator("input[type=number]").first
    steps.fill("0")
    steps.press("Enter")
    summary = page.locator("#settings-summary")
    summary.get_by_text("0 is out of range").wait_for(timeout=30_000)
    assert "Cannot run" in summary.inner_text()
    page.locator("#run-button").click()
    headline = page.locator("#headline")
    headline.get_by_text("Not run").wait_for(timeout=30_000)
    assert "run.steps: 0 is out of range" in headline.inner_text()
    assert steps.input_value() == "0"  # not clamped to 1
    assert page.locator("#image-slider img").count() == 0

    type_into(page, "run.prompt", "my own prompt")
    model = control(page, "run.model").locator("input").first
    model.fill("synthetic:flux-schnell")
    model.press("Enter")
    page.get_by_text("Kept what you set in Prompt").first.wait_for(timeout=30_000)
    assert input_value(page, "run.prompt") == "my own prompt"
    page.locator("#recommended-button").click()
    page.wait_for_function(
        "(id) => (document.querySelector(`#${id} textarea`)?.value || '') !== 'my own prompt'",
        arg=elem_id("run.prompt"), timeout=30_000)
    assert input_value(page, "run.steps") == "4"


def test_will_it_fit_lists_what_fits_loads_a_row_and_a_side_that_cannot_fit_is_refused(server_url, page, context,
                                                                                         monkeypatch):
    """This server, as if on a 24 GB GPU: FLUX.1-dev's summary says each side's planned memory and that the
    baseline cannot fit; the "Will it fit?" tab lists what fits a 16 GB card and loads a row into the controls;
    Run is refused with the reason before anything loads."""
    from dataclasses import replace

    from lab import run_panel
    from lab.controls import elem_id

    gpu = replace(context.capabilities.device, cuda=True, device="cuda", name="NVIDIA test", memory_gb=23.99)
    monkeypatch.setattr(context, "capabilities", replace(context.capabilities, device=gpu))
    compared = []
    monkeypatch.setattr(run_panel, "compare", lambda *a, **k: compared.append(a))
    page.goto(server_url, wait_until="domcontentloaded")
    model = control(page, "run.model").locator("input").first
    model.wait_for(timeout=60_000)
    model.fill("black-forest-labs/FLUX.1-dev")
    model.press("Enter")
    page.wait_for_function("(id) => document.querySelector(`#${id} input`)?.value === '1024'",
                           arg=elem_id("run.width"), timeout=60_000)
    summary = page.locator("#settings-summary")
    summary.get_by_text("compare on a larger GPU").wait_for(timeout=60_000)
    text = summary.inner_text()
    assert "GPU memory, planned for this GPU: baseline 33.2 GiB (does not fit)" in text, text
    assert "Will be refused: each side needs about 35.3 GiB" in text  # nothing changed yet

    page.get_by_role("tab", name="Will it fit?").click()
    card = page.locator("#plan-card input").first
    card.fill("16")
    card.press("Enter")
    status = page.locator("#plan-status")
    status.get_by_text("combinations fit").wait_for(timeout=60_000)
    assert "16 GB" in status.inner_text() and "does not fit" in status.inner_text()
    first = page.locator("#plan-table").get_by_test_id("cell-0-1")
    first.wait_for(timeout=30_000)
    label = first.inner_text()
    assert label.startswith("bitsandbytes NF4"), label
    first.click()
    page.get_by_text("into the settings").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Quantize").click()
    page.wait_for_function("(id) => (document.querySelector(`#${id} input`)?.value || '').includes('4-bit')",
                           arg=elem_id("quantization.backend"), timeout=30_000)
    summary.get_by_text("bitsandbytes_4bit").first.wait_for(timeout=30_000)

    page.locator("#run-button").click()
    headline = page.locator("#headline")
    headline.get_by_text("will not fit").wait_for(timeout=60_000)
    assert "the baseline side needs about 35.3 GiB" in headline.inner_text()
    assert not compared  # refused before anything loaded
