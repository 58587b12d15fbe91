"""What a sweep and a comparison cost beyond the pipeline calls they contain.

    python benchmarks/sweep_cost.py --out benchmarks/records/DATE-sweep-cost

1. A 10-point First Block Cache threshold sweep on the embedded model over 4 prompts (the shipped `fbc-threshold`
   space): wall time against the time spent inside pipeline calls (probes, warm-ups, timed runs of both the
   baseline and the points). Goal: at most 1.5x.
2. Single comparisons through a warm app server (`python app.py`, gradio_client): after one comparison has
   warmed it (worker zygote started, the baseline's process kept loaded), each further comparison's wall time
   against the pipeline time in its report. Goal: at most 2x.

Both include everything a user waits for: worker processes, loads, metrics, charts, files.
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

from optim.logs import quiet_libraries

quiet_libraries()

from optim.config import parse_run  # noqa: E402
from optim.prompts import PromptSet, load_prompt_set  # noqa: E402
from optim.sweep import load_space_file, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sweep_cost(steps: int, prompts: int) -> dict[str, Any]:
    space = load_space_file("fbc-threshold")
    chosen = load_prompt_set("embedded")
    prompt_set = PromptSet("embedded-first-4", chosen.prompts[:prompts])
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = run_sweep(space, prompt_set, Path(folder), run_spec=parse_run({"steps": steps}))
        wall = time.perf_counter() - started
    return {"points": len(result.rows), "prompts": prompts, "steps": steps, "wall_s": wall,
            "pipeline_s": result.pipeline_s, "ratio": wall / result.pipeline_s}


def pipeline_seconds(report: dict[str, Any]) -> float:
    """Time inside pipeline calls in one comparison: both sides' timed runs, and the warm-ups (the eager probe
    included) of each side that was prepared for it (a warm baseline was prepared earlier)."""
    total = sum(report["baseline"]["latency_s"]["runs"]) + sum(report["optimized"]["latency_s"]["runs"])
    total += sum(report["optimized"]["warmup_runs_s"])
    if not report["baseline"]["reused"]:
        total += sum(report["baseline"]["warmup_runs_s"])
    return total


def app_cost(repeats: int) -> dict[str, Any]:
    from gradio_client import Client

    port = 7900 + os.getpid() % 90
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the app did not start") from None
                time.sleep(1)
        client = Client(url, verbose=False)
        client.predict("baseline", api_name="/compare")  # warm: workers started, the baseline kept loaded
        runs = []
        presets = ["first-block-cache", "mag-cache", "taylorseer", "attention-native-flash"]
        for index in range(repeats):
            started = time.perf_counter()
            report = client.predict(presets[index % len(presets)], api_name="/compare")[0]
            wall = time.perf_counter() - started
            runs.append({"preset": report["preset"]["name"], "wall_s": wall, "pipeline_s": pipeline_seconds(report),
                         "baseline_reused": report["baseline"]["reused"],
                         "runs_per_side": report["timing"]["runs_per_side"]})
    finally:
        server.terminate()
        server.wait(timeout=60)
    ratios = [r["wall_s"] / r["pipeline_s"] for r in runs]
    return {"runs": runs, "ratio_median": sorted(ratios)[len(ratios) // 2], "ratio_max": max(ratios)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=4, help="warm app comparisons")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    record = {"date": str(date.today()), "command": " ".join(sys.argv), "load_average_start": os.getloadavg()[0]}
    record["sweep"] = sweep_cost(args.steps, args.prompts)
    sweep = record["sweep"]
    print(f"sweep: {sweep['points']} points x {sweep['prompts']} prompts, {sweep['wall_s']:.1f} s wall for "
          f"{sweep['pipeline_s']:.1f} s of pipeline calls: {sweep['ratio']:.2f}x (goal <= 1.5x)")
    record["app"] = app_cost(args.repeats)
    app = record["app"]
    for run in app["runs"]:
        print(f"app, warm: {run['preset']}: {run['wall_s']:.1f} s wall, {run['pipeline_s']:.1f} s pipeline "
              f"({run['wall_s'] / run['pipeline_s']:.2f}x; baseline kept warm: {run['baseline_reused']})")
    print(f"app, warm: median {app['ratio_median']:.2f}x, worst {app['ratio_max']:.2f}x (goal <= 2x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        lines = [f"# Sweep and comparison cost ({record['date']})", "", f"Command: `{record['command']}`", "",
                 f"Load average at the start: {record['load_average_start']:.2f}.", "",
                 "| what | wall (s) | inside pipeline calls (s) | ratio | goal |", "|---|---|---|---|---|",
                 f"| sweep: {sweep['points']} points x {sweep['prompts']} prompts, {sweep['steps']} steps | "
                 f"{sweep['wall_s']:.1f} | {sweep['pipeline_s']:.1f} | {sweep['ratio']:.2f}x | <= 1.5x |"]
        for run in app["runs"]:
            lines.append(f"| app (warm server): {run['preset']}, {run['runs_per_side']} runs per side | "
                         f"{run['wall_s']:.1f} | {run['pipeline_s']:.1f} | {run['wall_s'] / run['pipeline_s']:.2f}x "
                         "| <= 2x |")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
