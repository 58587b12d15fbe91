"""How much a ratio of two identical sides (an A/A test) moves, before and after interleaved timing, on a quiet and
on a loaded machine; and what the worker's thread settings do under load.

    python benchmarks/measurement_stability.py --repeats 10 --out benchmarks/records/DATE-stability

Both sides run the `baseline` preset on the embedded model, so the true speedup is exactly 1.0. For each machine
condition (quiet; loaded: another process runs a 2-thread matrix-multiply loop the whole time, like a second ML
job on the box) it repeats:

* before: the old protocol, each side measured to completion in its own process, one after the other, and the
  ratio of the medians (what the lab did before interleaving);
* after: the engine's protocol, both sides loaded, runs in turns, a paired interval and a verdict.

With `--threads` it also compares worker thread settings under load (OpenMP's wait policy, thread count). It
prints a table and writes a dated record (JSON and markdown) next to the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from optim.logs import quiet_libraries

quiet_libraries()

from optim.config import OptimConfig, parse_run  # noqa: E402
from optim.engine import compare, prepare  # noqa: E402
from optim.measure import SideJob  # noqa: E402
from optim.presets import load_preset  # noqa: E402
from optim.worker import RemoteSide, launcher  # noqa: E402

COMPETITOR = """
import torch, time
torch.set_num_threads(2)
a = torch.randn(512, 512)
while True:
    a = (a @ a).tanh_()
"""


def competitor() -> subprocess.Popen:
    """Another CPU-heavy process: 2-thread matrix multiplies, forever."""
    return subprocess.Popen([sys.executable, "-c", COMPETITOR])


def before(run: dict[str, Any], runs: int) -> float:
    """The old protocol: baseline to completion, then the optimized side, each in its own process; median ratio."""
    spec = parse_run({**run, "timed_runs": runs})
    ref, resolved = prepare(spec, OptimConfig())
    medians = []
    for side in ("baseline", "optimized"):
        handle = RemoteSide(SideJob(side, ref, resolved, OptimConfig()))
        try:
            handle.prepare()
            medians.append(statistics.median(handle.timed().latency_s for _ in range(runs)))
            handle.finish()
        finally:
            handle.close()
    return medians[0] / medians[1]


def after(run: dict[str, Any], runs: int | str, budget: float) -> dict[str, Any]:
    report = compare(
        parse_run({**run, "timed_runs": runs, "time_budget_s": budget}), load_preset("baseline")
    ).to_report()
    timing = report["timing"]
    return {"speedup": report["speedup"], "low": report["speedup_interval"][0], "high": report["speedup_interval"][1],
            "verdict": report["verdict"], "runs": timing["runs_per_side"],
            "busy_share": timing["contention"]["busy_share"]}


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "max": max(values), "median": statistics.median(values),
            "worst_error": max(abs(v - 1.0) for v in values)}


def measure(condition: str, args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    load = competitor() if condition == "loaded" else None
    try:
        time.sleep(2 if load else 0)
        old = [before(run, args.runs) for _ in range(args.repeats)]
        new = [after(run, "auto", args.budget) for _ in range(args.repeats)]
    finally:
        if load:
            load.kill()
            load.wait()
    return {"before": old, "after": new}


def thread_settings(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """A/A under load with different worker thread settings (each: a fresh zygote with that environment)."""
    settings = {
        "PASSIVE wait, 1 thread per core (the lab's choice)": {"OMP_WAIT_POLICY": "PASSIVE"},
        "default wait policy (libgomp spins), 1 thread per core": {"OMP_WAIT_POLICY": ""},
        "PASSIVE wait, 1 thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
    }
    out = {}
    load = competitor()
    try:
        time.sleep(2)
        for name, env in settings.items():
            launcher.stop()  # the next side starts a zygote with this environment
            saved = {k: os.environ.get(k) for k in env}
            for key, value in env.items():
                if value:
                    os.environ[key] = value
                else:
                    os.environ.pop(key, None)
            if env.get("OMP_WAIT_POLICY") == "":
                os.environ["OMP_WAIT_POLICY"] = "ACTIVE_DEFAULT_SPIN"  # not a libgomp value: libgomp's default
            try:
                results = [after(run, args.runs, args.budget) for _ in range(args.repeats)]
                out[name] = {"results": results,
                             "latency_note": "speedups of identical sides; closer to 1.0 and narrower is better"}
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        launcher.stop()
    finally:
        load.kill()
        load.wait()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per side for the old protocol")
    parser.add_argument("--budget", type=float, default=30.0, help="time budget of an auto comparison (s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--conditions", default="quiet,loaded")
    parser.add_argument("--threads", action="store_true", help="also compare worker thread settings under load")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    run = {"steps": args.steps}
    record: dict[str, Any] = {"date": str(date.today()), "command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
                              "load_average_start": os.getloadavg()[0], "conditions": {}}
    for condition in args.conditions.split(","):
        record["conditions"][condition] = measure(condition, args, run)
        data = record["conditions"][condition]
        old = spread(data["before"])
        new = spread([r["speedup"] for r in data["after"]])
        verdicts = [r["verdict"] for r in data["after"]]
        print(f"{condition}: before {old['min']:.2f}-{old['max']:.2f}x (worst {old['worst_error']:.0%} off 1.0); "
              f"after {new['min']:.2f}-{new['max']:.2f}x (worst {new['worst_error']:.0%}); verdicts: "
              f"{verdicts.count('no measurable difference')}/{len(verdicts)} no measurable difference")
    if args.threads:
        record["threads"] = thread_settings(args, run)
        for name, data in record["threads"].items():
            values = [r["speedup"] for r in data["results"]]
            widths = [(r["high"] / r["low"]) ** 0.5 - 1 for r in data["results"] if r["low"]]
            print(f"{name}: speedups {min(values):.2f}-{max(values):.2f}x, median half-width "
                  f"{statistics.median(widths):.1%}" if widths else name)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(record))
        print(f"wrote {args.out}.json and .md")
    return 0


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# A/A stability of the reported speedup ({record['date']})", "", f"Command: `{record['command']}`",
             "", f"{record['cpu_count']} cores; load average at the start {record['load_average_start']:.2f}. Both "
             "sides run the `baseline` preset on the embedded model: the true speedup is 1.0.", "",
             "| machine | protocol | speedups reported | worst distance from 1.0 | verdicts |", "|---|---|---|---|---|"]
    for condition, data in record["conditions"].items():
        old = spread(data["before"])
        lines.append(f"| {condition} | before: sides one after the other, ratio of medians | "
                     f"{', '.join(f'{v:.2f}' for v in data['before'])} | {old['worst_error']:.0%} | - |")
        new = spread([r["speedup"] for r in data["after"]])
        verdicts = [r["verdict"] for r in data["after"]]
        lines.append(f"| {condition} | after: interleaved, auto runs, paired 95% CI | "
                     + ", ".join(f"{r['speedup']:.2f} ({r['low']:.2f}-{r['high']:.2f})" for r in data["after"])
                     + f" | {new['worst_error']:.0%} | {verdicts.count('no measurable difference')}/{len(verdicts)} "
                     "no measurable difference |")
    if "threads" in record:
        lines += ["", "## Worker thread settings under load", "", "| setting | speedups (95% CI) |", "|---|---|"]
        for name, data in record["threads"].items():
            lines.append(f"| {name} | " + ", ".join(f"{r['speedup']:.2f} ({r['low']:.2f}-{r['high']:.2f})"
                                                      for r in data["results"] if r["low"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
