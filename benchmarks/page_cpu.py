"""What an open browser tab costs the measurement: Chromium's CPU time while the app runs a comparison.

    python benchmarks/page_cpu.py --out benchmarks/records/DATE-page-cpu

Starts `python app.py`, opens the page in Debian's Chromium (Playwright, headless), and measures the CPU time of
Chromium's whole process tree over three windows of the same length:

* idle: the page open, nothing running;
* run from the page: the Run button, with the page showing progress;
* run from the API while the page is open but idle.

It also reads the comparison's own contention report (other processes' CPU during its timed runs), which is
what a user sees. Chromium on this machine renders in software, so every repaint is CPU time taken from the
measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_cpu() -> float:
    """CPU seconds used so far by every Chromium process."""
    total = 0.0
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            if "chromium" in (process.info["name"] or "") or any("chromium" in part for part in
                                                                 (process.info["cmdline"] or [])[:1]):
                times = process.cpu_times()
                total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def main() -> int:
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    port = 7950 + os.getpid() % 40
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    record: dict[str, Any] = {"date": str(date.today()), "command": " ".join(sys.argv),
                              "load_average_start": os.getloadavg()[0]}
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(1)
        client = Client(url, verbose=False)
        settings = ("baseline", "embedded", "", 0, args.steps, None, None, None, "8")
        client.predict(*settings, api_name="/compare")  # warm the server (workers, the baseline kept loaded)
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS,
                                                                    headless=True,
                                                                    viewport={"width": 1440, "height": 1000})
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#run-button").wait_for(timeout=120_000)
            time.sleep(5)
            # The same comparison three ways; each window is the comparison's own duration.
            started, before = time.perf_counter(), chromium_cpu()
            report = client.predict(*settings, api_name="/compare")[0]
            api_window = time.perf_counter() - started
            api_cpu = chromium_cpu() - before
            api_busy = report["timing"]["contention"]
            time.sleep(2)
            before = chromium_cpu()
            time.sleep(api_window)
            idle_cpu = chromium_cpu() - before
            steps = page.locator("#ctl-run-steps input[type=number]").first
            steps.fill(str(args.steps))
            steps.press("Enter")
            page.get_by_text("More run settings").click()
            runs = page.locator("#ctl-run-timed-runs input").first
            runs.fill("8")
            runs.press("Enter")
            time.sleep(1)
            before, started = chromium_cpu(), time.perf_counter()
            page.locator("#run-button").click()
            page.locator("#headline").get_by_text("Speedup").wait_for(timeout=600_000)
            page_window = time.perf_counter() - started
            page_cpu = chromium_cpu() - before
            context.close()
        record.update({
            "window_s": api_window,
            "idle": {"chromium_cpu_s": idle_cpu, "cores": idle_cpu / api_window},
            "api_run_page_open": {"chromium_cpu_s": api_cpu, "cores": api_cpu / api_window,
                                  "contention": api_busy},
            "page_run": {"chromium_cpu_s": page_cpu, "seconds": page_window, "cores": page_cpu / page_window},
        })
    finally:
        server.terminate()
        server.wait(timeout=60)
    for name in ("idle", "api_run_page_open", "page_run"):
        print(f"{name}: Chromium used {record[name]['chromium_cpu_s']:.2f} CPU s "
              f"({record[name]['cores']:.2f} of a core)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
