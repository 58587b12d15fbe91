"""A video comparison in a real browser (Debian's Chromium driven by Playwright, as tests/test_browser.py): two
sides of `tiny:cogvideox` compared from a share link, then the Video tab shows two players that play together,
the per-frame chart, and a frame slider that shows that frame of both sides.

Cost: about a minute (the server start, one comparison of 2 steps x 9 frames at 32x32, the page).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def server_url():
    from lab.context import ServerContext
    from lab.layout import LAUNCH_KWARGS, build_demo
    from lab.server import announce_port

    ctx = ServerContext.create()
    demo = build_demo(ctx)

    port = free_port()
    announce_port(port)  # the page this test's browser opens is the lab's own, not contention
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **LAUNCH_KWARGS)
    try:
        yield demo.local_url
    finally:
        demo.close()
        ctx.close()


@pytest.fixture()
def page():
    playwright_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1440, "height": 1100}, device_scale_factor=1,
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_a_video_comparison_shows_two_synced_players_the_frames_and_the_chart(server_url, page):
    from lab.controls import elem_id
    from optim.config import RunSpec, parse_optim
    from optim.presets import make_preset
    from optim.share import encode_share

    preset = make_preset("mag-skip", parse_optim({"cache": {"method": "mag_cache", "mag_ratios": [1.0, 1.0],
                                                            "threshold": 2.0, "retention_ratio": 0.0}}))
    run = RunSpec(model="tiny:cogvideox", prompt="a red fox in the snow", steps=2, width=32, height=32,
                  num_frames=9, timed_runs=1)
    page.goto(f"{server_url}?s={encode_share(preset, run)}", wait_until="domcontentloaded")
    page.wait_for_function(
        "(id) => { const el = document.querySelector(`#${id} input, #${id} textarea`); "
        "return el && el.value === 'a red fox in the snow'; }",
        arg=elem_id("run.prompt"), timeout=60_000,
    )
    assert page.locator(f"#{elem_id('run.num_frames')} input").first.input_value() == "9"

    page.locator("#run-button").click()
    headline = page.locator("#headline")
    headline.get_by_text("Speedup").wait_for(timeout=300_000)
    assert "9 frames" in headline.inner_text()

    # A video result opens the Video tab: two players, side by side, with the two sides' clips.
    baseline = page.locator("#video-baseline video")
    optimized = page.locator("#video-optimized video")
    baseline.wait_for(timeout=30_000)
    optimized.wait_for(timeout=30_000)
    sources = [video.get_attribute("src") or "" for video in (baseline, optimized)]
    assert all(src.endswith(".mp4") for src in sources) and sources[0] != sources[1], sources
    left, right = baseline.bounding_box(), optimized.bounding_box()
    assert left["x"] + left["width"] <= right["x"] + 1 and abs(left["y"] - right["y"]) < 40  # side by side
    assert "in sync" in page.locator("#video-summary").inner_text()

    # The per-frame chart.
    page.locator("#frames-plot img").first.wait_for(timeout=30_000)

    # The frame slider shows that frame of both sides and its difference.
    number = page.locator("#frame-slider input[type='number']").first
    number.fill("3")
    number.press("Enter")
    page.locator("#frame-caption").get_by_text("Frame 3").wait_for(timeout=30_000)
    for frame in ("#frame-baseline img", "#frame-optimized img", "#frame-heatmap img"):
        page.locator(frame).first.wait_for(timeout=30_000)

    # The players are synced: seeking or playing one moves the other (where Chromium can decode H.264).
    decodable = page.wait_for_function(
        "() => { const v = document.querySelector('#video-baseline video'); "
        "return v && (v.readyState >= 1 || v.error) ? true : false; }", timeout=30_000)
    assert decodable
    if page.evaluate("() => !!document.querySelector('#video-baseline video').error"):
        pytest.skip("this Chromium cannot decode H.264: the players exist, but their sync cannot be seen play")
    page.evaluate("() => { document.querySelector('#video-baseline video').currentTime = 0.5; }")
    page.wait_for_function(
        "() => Math.abs(document.querySelector('#video-optimized video').currentTime - 0.5) < 0.06", timeout=10_000)
    page.evaluate("() => document.querySelector('#video-optimized video').play()")
    page.wait_for_function("() => !document.querySelector('#video-baseline video').paused", timeout=10_000)
    page.evaluate("() => document.querySelector('#video-baseline video').pause()")
    page.wait_for_function("() => document.querySelector('#video-optimized video').paused", timeout=10_000)
    target = os.environ.get("OPTIM_VIDEO_SCREENSHOT")
    if target:
        page.screenshot(path=target, full_page=True)
