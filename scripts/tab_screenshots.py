"""Screenshots of every tab of the app at 1440 and 1280 px, as a user walks through it: a MagCache comparison
(Images, Metrics, Charts, Details, History), the model dropdown, the capabilities panel, a 10-point sweep.

    python scripts/tab_screenshots.py [OUT] [WIDTHS]      # default docs/screenshots, 1440,1280

Needs Debian's chromium (apt-get install -y chromium) and Playwright; takes a few minutes on 2 cores. Look at every
image it writes: no clipped table, no missing glyph, no panel taller than it needs to be.
"""

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
out = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "screenshots")
os.makedirs(out, exist_ok=True)
port = 7995
env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "HF_HUB_OFFLINE": "1",
       "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
log = open(os.path.join(tempfile.gettempdir(), "tab_screenshots-app.log"), "w")
app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
url = f"http://127.0.0.1:{port}/"
for _ in range(180):
    try:
        urllib.request.urlopen(url, timeout=5)
        break
    except OSError:
        time.sleep(1)
sys.path.insert(0, str(ROOT))
from playwright.sync_api import sync_playwright  # noqa: E402

from lab.controls import elem_id  # noqa: E402

ARGS = [
    "--no-sandbox","--headless","--disable-gpu","--disable-quic","--no-first-run","--disable-background-networking","--disable-component-update","--disable-sync"]

def shot(page, name):
    page.wait_for_timeout(800)
    page.screenshot(path=f"{out}/{name}.png", full_page=False)
    print("shot", name, page.evaluate("document.body.scrollHeight"), flush=True)

try:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        widths = [int(w) for w in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1440, 1280]
        for width in widths:
            page = b.new_page(viewport={"width": width, "height": 1000})
            page.goto(url)
            page.locator("#run-button").wait_for(timeout=60000)
            page.wait_for_timeout(3000)
            if width == widths[0]:
                page.locator("#preset-picker input").first.click()
                page.get_by_role("option", name="mag-cache", exact=True).click()
                page.wait_for_timeout(1500)
                page.locator("#run-button").click()
                page.locator("#headline").get_by_text("Speedup").wait_for(timeout=300000)
                shot(page, f"compare-{width}")
                for tab in ("Metrics", "Charts", "Details", "History"):
                    page.get_by_role("tab", name=tab).click()
                    shot(page, f"{tab.lower()}-{width}")
                page.get_by_role("tab", name="Images").click()
            # model dropdown with the video model chosen
            model = page.locator(f"#{elem_id('run.model')} input").first
            model.click()
            page.get_by_role("option", name="embedded-video · tiny CogVideoX, runs on CPU").click()
            page.wait_for_timeout(1500)
            page.locator(f"#{elem_id('run.model')}").screenshot(path=f"{out}/model-dropdown-{width}.png")
            # will it fit? FLUX.1-dev on a 16 GB card
            model.fill("black-forest-labs/FLUX.1-dev")
            model.press("Enter")
            page.wait_for_function("(id) => document.querySelector(`#${id} input`)?.value === '1024'",
                                   arg=elem_id("run.width"), timeout=60000)
            page.get_by_role("tab", name="Will it fit?").click()
            card = page.locator("#plan-card input").first
            card.click()
            page.get_by_role("option", name="GeForce RTX 4080 16 GB (15.7 GiB)").click()
            page.locator("#plan-status").get_by_text("combinations fit").wait_for(timeout=60000)
            page.wait_for_timeout(1000)
            page.locator("#technique-tabs").screenshot(path=f"{out}/will-it-fit-{width}.png")
            page.get_by_role("tab", name="Model").click()
            # capabilities
            page.get_by_text("What this machine can run (and why not)").click()
            page.wait_for_timeout(800)
            caps = page.locator("#capabilities")
            print("capabilities height", caps.bounding_box()["height"], flush=True)
            caps.screenshot(path=f"{out}/capabilities-{width}.png")
            page.get_by_text("What this machine can run (and why not)").click()
            # sweep tab
            page.goto(url)
            page.locator("#run-button").wait_for(timeout=60000)
            page.wait_for_timeout(2500)
            steps = page.locator(f"#{elem_id('run.steps')} input[type=number]").first
            steps.fill("4")
            steps.press("Enter")
            page.get_by_text("More run settings").first.click()
            budget = page.locator(f"#{elem_id('run.time_budget_s')} input[type=number]").first
            budget.fill("1")
            budget.press("Enter")
            page.get_by_role("tab", name="Sweep & tune").click()
            page.locator("#sweep-prompts input").first.click()
            page.get_by_role("option", name="quick", exact=True).click()
            page.locator("#sweep-button").click()
            page.locator("#sweep-table").get_by_test_id("cell-9-1").wait_for(timeout=900000)
            page.wait_for_timeout(1500)
            table = page.locator("#sweep-table")
            box = table.bounding_box()
            scroll = page.evaluate("document.querySelector('#sweep-table').scrollWidth")
            print("sweep table", box, "scrollWidth", scroll, flush=True)
            shot(page, f"sweep-{width}")
            page.close()
        b.close()
finally:
    app.terminate()
    app.wait()
