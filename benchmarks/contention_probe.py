"""Why do identical sides read differently under load? Log every timed run of A/A comparisons (both sides the
`baseline` preset) with what each side's process did and suffered, under the loads the suite puts on a 2-core
machine, and compare the ratio each candidate estimator gives.

    python benchmarks/contention_probe.py --repeats 4 --out benchmarks/records/DATE-contention-probe

Per timed run (from `optim.machine.Load`, recorded in report.json's runs): wall time, the side's own CPU time
(all its threads), its run-queue wait (the kernel's schedstat: ready to run, no CPU free), the CPU time of every
other process, the core it started and ended on, and how often it was preempted. Conditions:

* idle: one comparison at a time, nothing else;
* competitor: one comparison beside a 2-thread matrix-multiply loop (tests/test_measurement.py's competitor);
* two-comparisons: two comparisons at once, each in its own process with its own workers (what the suite's two
  pytest-xdist workers do), beside the competitor.

For each A/A comparison it prints the speedup three ways: wall time (what the lab reported), the side's own CPU
time, and wall time less the run-queue wait (the time the side would have taken had a CPU been free for it).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(384, 384)
while True:
    a = (a @ a).tanh_()
"""


def one_comparison(run: dict[str, Any], preset: str) -> dict[str, Any]:
    from optim.config import parse_run
    from optim.engine import compare
    from optim.presets import load_preset

    report = compare(parse_run(run), load_preset(preset)).to_report()
    return {"speedup": report["speedup"], "interval": report["speedup_interval"], "verdict": report["verdict"],
            "order": report["timing"]["order"], "baseline": report["baseline"]["runs"],
            "optimized": report["optimized"]["runs"], "work_fraction": report["optimized"]["work_fraction"],
            "timing": {k: report["timing"][k] for k in ("mode", "stopped_because", "runs_per_side")}}


def split_placement(run: dict[str, Any], runs: int) -> dict[str, Any]:
    """A/A with the two sides on different cores, the baseline's shared with a busy thread: what a scheduler
    that keeps two long-lived processes where they are can do. Placed by hand here, to show its effect."""
    from optim.config import OptimConfig, parse_run
    from optim.engine import prepare
    from optim.measure import SideJob
    from optim.worker import RemoteSide

    ref, resolved = prepare(parse_run(run), OptimConfig())
    sides = {name: RemoteSide(SideJob(name, ref, resolved, OptimConfig())) for name in ("baseline", "optimized")}
    try:
        for handle in sides.values():
            handle.prepare()
        os.sched_setaffinity(sides["baseline"].pid, {0})
        os.sched_setaffinity(sides["optimized"].pid, {1})
        out: dict[str, list[dict[str, Any]]] = {"baseline": [], "optimized": []}
        for pair in range(runs):
            order = ("baseline", "optimized") if pair % 2 == 0 else ("optimized", "baseline")
            for name in order:
                timing = sides[name].timed()
                out[name].append({"latency_s": timing.latency_s, **timing.load.to_dict()})
        return out
    finally:
        for handle in sides.values():
            handle.close()


def loop(run: dict[str, Any], preset: str, repeats: int, queue: Any) -> None:
    """In a separate process: `repeats` comparisons, each result put on `queue`."""
    from optim.logs import quiet_libraries

    quiet_libraries()
    for _ in range(repeats):
        queue.put(one_comparison(run, preset))
    queue.put(None)


def log_ratio(b: list[float], o: list[float]) -> tuple[float, float, float]:
    """Geometric-mean ratio with its paired 95% interval (as optim.stats computes it)."""
    from scipy.stats import t

    logs = [math.log(x / y) for x, y in zip(b, o)]
    mean = statistics.fmean(logs)
    spread = t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - spread), math.exp(mean + spread)


def estimators(result: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    b, o = result["baseline"], result["optimized"]
    out = {"wall": log_ratio([r["latency_s"] for r in b], [r["latency_s"] for r in o]),
           "cpu": log_ratio([r["cpu_s"] for r in b], [r["cpu_s"] for r in o])}
    if all(r.get("wait_s") is not None for r in b + o):
        out["wall-wait"] = log_ratio([r["latency_s"] - r["wait_s"] for r in b],
                                     [r["latency_s"] - r["wait_s"] for r in o])
    return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    def side(runs: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "wall_s": statistics.median(r["latency_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "wait_s": statistics.median(r.get("wait_s") or 0.0 for r in runs),
            "others_cores": statistics.median((r["others_cpu_s"] or 0.0) / r["latency_s"] for r in runs),
            "preempted": statistics.median(r.get("preempted") or 0 for r in runs),
            "cores": sorted({r.get("core_start") for r in runs} | {r.get("core_end") for r in runs}),
        }

    return {"baseline": side(result["baseline"]), "optimized": side(result["optimized"]),
            "estimators": estimators(result)}


def condition(name: str, run: dict[str, Any], preset: str, repeats: int) -> list[dict[str, Any]]:
    competitor = None
    other = None
    results = []
    try:
        if name in ("competitor", "two-comparisons"):
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
            time.sleep(1.0)
        if name == "pinned-competitor":
            # One busy thread that stays on core 0 (as a long-lived process the scheduler keeps in place does).
            competitor = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c",
                                           COMPETITOR.replace("set_num_threads(2)", "set_num_threads(1)")])
            time.sleep(1.0)
        context = multiprocessing.get_context("spawn")
        if name == "two-comparisons":
            queue = context.Queue()
            other = context.Process(target=loop, args=(run, preset, repeats + 2, queue))
            other.start()
            time.sleep(8.0)  # its workers are loaded and timing before ours start
        if name == "split-placement":
            competitor = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c",
                                           COMPETITOR.replace("set_num_threads(2)", "set_num_threads(1)")])
            time.sleep(1.0)
        for index in range(repeats):
            result = (split_placement(run, run["timed_runs"]) if name == "split-placement"
                      else one_comparison(run, preset))
            result["summary"] = summary(result)
            results.append(result)
            est = result["summary"]["estimators"]
            print(f"{name} #{index + 1}: " + "; ".join(
                f"{key} {v[0]:.3f} ({v[1]:.3f}-{v[2]:.3f})" for key, v in est.items()), flush=True)
            for side in ("baseline", "optimized"):
                s = result["summary"][side]
                print(f"    {side:9s} wall {s['wall_s']:.3f} cpu {s['cpu_s']:.3f} wait {s['wait_s']:.3f} "
                      f"others {s['others_cores']:.2f} preempted {s['preempted']:.0f} cores {s['cores']}",
                      flush=True)
    finally:
        if other is not None:
            other.terminate()
            other.join()
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--runs", type=int, default=8, help="timed runs per side")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--conditions", default="idle,competitor,two-comparisons")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from optim.logs import quiet_libraries

    quiet_libraries()
    run = {"steps": args.steps, "width": args.size, "height": args.size, "timed_runs": args.runs}
    record: dict[str, Any] = {"date": str(date.today()), "command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
                              "load_average_start": os.getloadavg()[0], "run": run, "preset": args.preset,
                              "conditions": {}}
    for name in args.conditions.split(","):
        record["conditions"][name] = condition(name, run, args.preset, args.repeats)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
