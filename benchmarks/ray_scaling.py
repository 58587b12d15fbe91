"""What placing a sweep's evaluations on Ray costs: the same 8-point sweep on 1 and on 2 Ray workers, against the
local path.

    python benchmarks/ray_scaling.py --out benchmarks/records/DATE-ray-scaling

A local Ray cluster on this machine's CPUs (loopback only, no dashboard), started and stopped here. The sweep: 8
First Block Cache thresholds on the embedded model over 2 prompts (all 8 points swappable in place, so a
worker loads one pipeline and changes its cache 7 times). For each run: wall time, the time inside pipeline calls
(`Evaluator.pipeline_s`, summed over the workers: probes, warm-ups and the timed runs of both sides), the time
until the first worker was ready (a Ray actor: process, imports, its Evaluator), and from them the overhead per
evaluation, in worker-seconds not spent inside the pipeline:

    overhead per evaluation = (workers x (wall - time to the first ready worker) - pipeline) / points

On a machine with fewer cores than workers x threads the workers share the cores, so 2 workers cannot finish
sooner in total: the figure to read is the overhead per evaluation, which is what decides how a sweep scales on
a cluster where each worker has its own GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local cluster on the loopback address only

from optim.logs import quiet_libraries  # noqa: E402
from optim.machine import steady_threads  # noqa: E402

steady_threads()
quiet_libraries()

from optim.config import parse_run  # noqa: E402
from optim.prompts import PromptSet, load_prompt_set  # noqa: E402
from optim.sweep import load_space, run_sweep  # noqa: E402

THRESHOLDS = [0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5]


def space() -> Any:
    return load_space(json.dumps({"name": "fbc-8", "base": {"cache": {"method": "first_block_cache"}},
                                  "grid": {"cache.threshold": THRESHOLDS}}))


def local_run(prompts: PromptSet, run: Any, budget: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = run_sweep(space(), prompts, Path(folder), run_spec=run, point_budget_s=budget)
        wall = time.perf_counter() - started
    return summarize("local", 1, wall, result.pipeline_s, None, result.rows)


def ray_run(workers: int, prompts: PromptSet, run: Any, budget: float) -> dict[str, Any]:
    from optim.distributed import run_sweep_ray

    ready: list[float] = []
    began: dict[str, float] = {}
    round_trips: dict[str, float] = {}
    started = time.perf_counter()

    def events(kind: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if kind == "worker":
            ready.append(now - started)
        elif kind == "start":
            began[info["point"]] = now
        elif kind == "row":
            round_trips[info["point"]] = now - began[info["point"]]

    with tempfile.TemporaryDirectory() as folder:
        result = run_sweep_ray(space(), prompts, Path(folder), run_spec=run, point_budget_s=budget, workers=workers,
                               events=events)
        wall = time.perf_counter() - started
    # What Ray itself adds to an evaluation: the driver's time from dispatching it to holding its row, less the
    # time the actor's Evaluator took (the row's elapsed_s).
    ray_s = [round_trips[r["id"]] - r["elapsed_s"] for r in result.rows
             if r["id"] in round_trips and r.get("elapsed_s")]
    return summarize(f"ray, {workers} worker(s)", workers, wall, result.pipeline_s, min(ready) if ready else None,
                     result.rows, per_worker=result.ray.get("per_worker"),
                     ray_dispatch_s_median=sorted(ray_s)[len(ray_s) // 2] if ray_s else None)


def summarize(name: str, workers: int, wall: float, pipeline: float, first_ready: float | None,
              rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    points = len(rows)
    start = first_ready or 0.0
    overhead = (workers * (wall - start) - pipeline) / points
    by_worker: dict[str, int] = {}
    for row in rows:
        by_worker[row.get("worker", "local")] = by_worker.get(row.get("worker", "local"), 0) + 1
    # A worker's first point also loads its baseline and a fresh pipeline; the others only reconfigure.
    first = [r["elapsed_s"] for r in rows if not r.get("worker_reused") and r.get("elapsed_s")]
    swapped = sorted(r["elapsed_s"] for r in rows if r.get("worker_reused") and r.get("elapsed_s"))
    return {"name": name, "workers": workers, "points": points, "ok": sum(r["status"] == "ok" for r in rows),
            "wall_s": wall, "pipeline_s": pipeline, "first_worker_ready_s": first_ready,
            "worker_s_per_pipeline_s": workers * (wall - start) / pipeline,
            "overhead_per_evaluation_s": overhead, "points_per_worker": by_worker,
            "reused": sum(bool(r.get("worker_reused")) for r in rows),
            "first_point_s_mean": sum(first) / len(first) if first else None,
            "swapped_point_s_median": swapped[len(swapped) // 2] if swapped else None,
            "pipeline_s_per_point": pipeline / points,
            "speedups": [round(r.get("speedup") or 0, 3) for r in rows], **extra}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="width and height")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--point-budget", type=float, default=1.0, help="seconds of timed runs per point at most")
    parser.add_argument("--no-local", action="store_true", help="skip the local reference run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import ray

    prompts = PromptSet(f"embedded-first-{args.prompts}", load_prompt_set("embedded").prompts[: args.prompts])
    run = parse_run({"steps": args.steps, "width": args.size, "height": args.size})
    from optim.capabilities import cpu_name

    record: dict[str, Any] = {"date": str(date.today()), "command": "python " + " ".join(sys.argv),
                              "cpus": os.cpu_count(), "cpu": cpu_name(), "ray": ray.__version__,
                              "settings": {"steps": args.steps, "size": args.size, "prompts": args.prompts,
                                           "point_budget_s": args.point_budget, "points": len(THRESHOLDS)},
                              "load_average_start": os.getloadavg()[0], "runs": []}
    if not args.no_local:
        record["runs"].append(local_run(prompts, run, args.point_budget))
        print(_line(record["runs"][-1]), flush=True)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=0, include_dashboard=False, log_to_driver=False)
    record["cluster_start_s"] = time.perf_counter() - started
    try:
        for workers in (1, 2):
            record["runs"].append(ray_run(workers, prompts, run, args.point_budget))
            print(_line(record["runs"][-1]), flush=True)
    finally:
        ray.shutdown()
    record["load_average_end"] = os.getloadavg()[0]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(record))
        print(f"wrote {args.out}.json and .md")
    return 0


def _line(run: dict[str, Any]) -> str:
    ready = f", first worker ready after {run['first_worker_ready_s']:.1f} s" if run["first_worker_ready_s"] else ""
    return (f"{run['name']}: {run['points']} points ({run['ok']} ok, {run['reused']} swapped in place), "
            f"{run['wall_s']:.1f} s wall, {run['pipeline_s']:.1f} s inside the pipeline{ready}; "
            f"{run['overhead_per_evaluation_s']:.1f} worker-s of overhead per evaluation; a worker's first point "
            f"{run['first_point_s_mean']:.1f} s, a swapped point {run['swapped_point_s_median']:.1f} s (median); "
            f"Ray's own dispatch and return {_s(run.get('ray_dispatch_s_median'))} per evaluation; per worker "
            f"{run['points_per_worker']}")


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def markdown(record: dict[str, Any]) -> str:
    settings = record["settings"]
    lines = [f"# Ray scaling ({record['date']}): the same {settings['points']}-point sweep on 1 and 2 Ray workers",
             "", f"Command: `{record['command']}`", "",
             f"Machine: {record['cpus']} CPU cores ({record['cpu']}), no GPU; Ray {record['ray']}; load average "
             f"{record['load_average_start']:.2f} at the start, {record['load_average_end']:.2f} at the end (other "
             "work shares these cores).", "",
             f"Sweep: First Block Cache, {settings['points']} thresholds, embedded model, {settings['steps']} steps, "
             f"{settings['size']}x{settings['size']}, {settings['prompts']} prompts, at most "
             f"{settings['point_budget_s']:g} s of timed runs per point. Local Ray cluster start: "
             f"{record['cluster_start_s']:.1f} s (not in the figures below).", "",
             "| run | wall (s) | pipeline (s) | first worker ready (s) | worker-s / pipeline-s | overhead per "
             "evaluation (worker-s) | a worker's first point (s) | a swapped point, median (s) | Ray's dispatch "
             "and return per evaluation | points per worker |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in record["runs"]:
        ready = f"{run['first_worker_ready_s']:.1f}" if run["first_worker_ready_s"] else "-"
        lines.append(f"| {run['name']} | {run['wall_s']:.1f} | {run['pipeline_s']:.1f} | {ready} | "
                     f"{run['worker_s_per_pipeline_s']:.2f} | {run['overhead_per_evaluation_s']:.1f} | "
                     f"{run['first_point_s_mean']:.1f} | {run['swapped_point_s_median']:.1f} | "
                     f"{_s(run.get('ray_dispatch_s_median'))} | {run['points_per_worker']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
