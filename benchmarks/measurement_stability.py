"""Does the ratio hold under load? Repeated A/A comparisons (both sides the `baseline` preset: the true speedup is
exactly 1.0) and `mag-cache` comparisons (about half the transformer's work skipped) under several load patterns.

    python benchmarks/measurement_stability.py --repeats 10 --out benchmarks/records/DATE-measurement-stability

Load patterns (each a set of processes running for the whole pattern):

* idle: nothing else;
* steady: two single-threaded processes busy the whole time (a 2-process CPU load on a 2-core machine);
* on-off: two processes busy for 0.1 s then idle for 0.1 s, a period near one pipeline call of these settings;
* suite: what the test suite's two workers do - another comparison running at once, in its own process, beside
  a 2-thread competitor.

For each comparison it records the headline (the estimator's ratio, its interval and verdict) and what wall time
alone said. It prints per pattern: the spread of the A/A ratio, how many A/A intervals exclude 1.0 (the interval
promises at most about 1 in 20) and by how much, the verdicts, and how many cache runs are called faster.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

from optim.logs import quiet_libraries

quiet_libraries()

from optim.config import parse_run  # noqa: E402
from optim.engine import compare  # noqa: E402
from optim.presets import load_preset  # noqa: E402

BUSY = "while True: pass"
ON_OFF = """
import time
while True:
    end = time.perf_counter() + 0.1
    while time.perf_counter() < end:
        pass
    time.sleep(0.1)
"""
COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(384, 384)
while True:
    a = (a @ a).tanh_()
"""


def other_comparisons(run: dict[str, Any]) -> None:
    """In a separate process: A/A comparisons, forever (the suite's other worker)."""
    quiet_libraries()
    while True:
        compare(parse_run(run), load_preset("baseline"))


def load(pattern: str, run: dict[str, Any]) -> list[Any]:
    """Start the pattern's processes; returns them (stop with `stop`)."""
    python = [sys.executable, "-c"]
    if pattern == "idle":
        return []
    if pattern == "steady":
        return [subprocess.Popen([*python, BUSY]) for _ in range(2)]
    if pattern == "on-off":
        return [subprocess.Popen([*python, ON_OFF]) for _ in range(2)]
    if pattern == "suite":
        other = multiprocessing.get_context("spawn").Process(target=other_comparisons, args=(run,), daemon=True)
        other.start()
        return [subprocess.Popen([*python, COMPETITOR]), other]
    raise SystemExit(f"unknown load pattern {pattern!r}")


def stop(processes: list[Any]) -> None:
    for process in processes:
        if isinstance(process, subprocess.Popen):
            process.kill()
            process.wait()
        else:
            process.terminate()
            process.join()


def one(run: dict[str, Any], preset: str) -> dict[str, Any]:
    report = compare(parse_run(run), load_preset(preset)).to_report()
    timing = report["timing"]
    wall = timing["speedup_wall"]
    return {"preset": preset, "speedup": report["speedup"], "low": report["speedup_interval"][0],
            "high": report["speedup_interval"][1], "verdict": report["verdict"],
            "estimator": timing["estimator"]["name"], "wall": wall["estimate"], "wall_low": wall["low"],
            "wall_high": wall["high"], "wall_verdict": wall["verdict"], "pairs": timing["runs_per_side"],
            "sequence": timing["sequence"], "busy_share": timing["contention"]["busy_share"],
            "wait_share": timing["contention"]["wait_share_mean"],
            "memory_verdict": timing["memory_saving_mb"]["verdict"],
            "work_fraction": report["optimized"]["work_fraction"]}


def summary(results: list[dict[str, Any]], wall: bool = False) -> dict[str, Any]:
    """Per pattern: the A/A spread, intervals excluding 1.0, verdicts; the cache's ratios and verdicts. `wall`:
    the same from wall time alone."""
    ratio, low, high, word = ("wall", "wall_low", "wall_high", "wall_verdict") if wall else (
        "speedup", "low", "high", "verdict")
    aa = [r for r in results if r["preset"] == "baseline"]
    cache = [r for r in results if r["preset"] == "mag-cache"]
    excluded = [r for r in aa if r[low] is not None and not r[low] <= 1.0 <= r[high]]

    def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
        words = [r[word] for r in rows]
        return {v: words.count(v) for v in sorted(set(words))}

    return {"aa_ratios": [r[ratio] for r in aa], "aa_excluding_one": len(excluded),
            "aa_worst_exclusion": max((max(r[low] - 1.0, 1.0 - r[high]) for r in excluded), default=0.0),
            "aa_verdicts": counts(aa), "cache_ratios": [r[ratio] for r in cache], "cache_verdicts": counts(cache)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--budget", type=float, default=10.0, help="time budget of each auto comparison (s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--patterns", default="idle,steady,on-off,suite")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    run = {"steps": args.steps, "width": args.size, "height": args.size, "timed_runs": "auto",
           "time_budget_s": args.budget}
    record: dict[str, Any] = {"date": str(date.today()), "command": " ".join(sys.argv), "cpu_count": os.cpu_count(),
                              "load_average_start": os.getloadavg()[0], "run": run, "patterns": {}}
    for pattern in args.patterns.split(","):
        processes = load(pattern, run)
        results = []
        try:
            time.sleep(8.0 if pattern == "suite" else 1.0 if processes else 0.0)
            for index in range(args.repeats):
                for preset in ("baseline", "mag-cache"):
                    result = one(run, preset)
                    results.append(result)
                    print(f"{pattern} {index + 1}/{args.repeats} {preset}: {result['speedup']:.3f} "
                          f"({result['low']:.3f}-{result['high']:.3f}) {result['verdict']}; wall "
                          f"{result['wall']:.3f} ({result['wall_low']:.3f}-{result['wall_high']:.3f}) "
                          f"{result['wall_verdict']}; busy {result['busy_share']:.0%}", flush=True)
        finally:
            stop(processes)
        record["patterns"][pattern] = {"results": results, "summary": summary(results),
                                       "wall_summary": summary(results, wall=True)}
        if args.out:  # written after every pattern, so an interrupted run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
            args.out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0


def _verdicts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Measurement stability under load ({record['date']})", "", f"Command: `{record['command']}`", "",
             f"{record['cpu_count']} cores; load average at the start {record['load_average_start']:.2f}. Run "
             f"settings: {json.dumps(record['run'])}. A/A: both sides the `baseline` preset (true ratio 1.0); "
             "cache: `mag-cache`.", "",
             "| load | estimator | A/A ratios (min-max) | A/A intervals excluding 1.0 (worst, beyond) | A/A verdicts "
             "| cache ratios (min-max) | cache verdicts |", "|---|---|---|---|---|---|---|"]
    for pattern, data in record["patterns"].items():
        for name, key in (("headline", "summary"), ("wall time", "wall_summary")):
            s = data[key]
            aa, cache = s["aa_ratios"], s["cache_ratios"]
            lines.append(
                f"| {pattern} | {name} | {min(aa):.3f}-{max(aa):.3f} | {s['aa_excluding_one']}/{len(aa)} "
                f"({s['aa_worst_exclusion']:.1%}) | {_verdicts(s['aa_verdicts'])} | {min(cache):.2f}-{max(cache):.2f} "
                f"| {_verdicts(s['cache_verdicts'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
