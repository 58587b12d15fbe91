"""A sweep and a tune with their points evaluated by the Ray pool: the local paths' files, rows written as they
arrive, `--resume` skipping what was written (lost rows measured again), and the rows grouped by the device they
ran on (a speedup on an H100 is not one on an L4)."""

from __future__ import annotations

import concurrent.futures
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optim.config import OptimConfig, RunSpec, parse_run
from optim.distributed.cluster import Cluster
from optim.distributed.pool import RETRIES, START_TIMEOUT_S, Events, RayPool
from optim.errors import OptimError
from optim.prompts import PromptSet
from optim.sweep import POINT_BUDGET_S, Point, Space, SweepResult, append_row, pareto_front, start_sweep, write_sweep


class _Run:
    """What `write_sweep` needs of a resolved run: `to_dict()`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)


def _run_of(pool: RayPool | None, run_spec: RunSpec) -> _Run:
    """The resolved run settings: a worker's (they resolve `auto` where they run), else resolved here, else as
    given (a driver without the workers' GPU, resuming a sweep with nothing left to do)."""
    if pool is not None and pool.run is not None:
        return _Run(pool.run)
    try:
        from optim.engine import prepare

        return _Run(prepare(run_spec, OptimConfig())[1].to_dict())
    except OptimError:
        return _Run(run_spec.model_dump(mode="json"))


def by_device(rows: list[dict[str, Any]], quality: str) -> list[dict[str, Any]]:
    """The rows grouped by the device they ran on, each group with its own Pareto front and fastest point."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("device_name") or "unknown", []).append(row)
    out = []
    for name, members in groups.items():
        ok = [r for r in members if r.get("status") == "ok"]
        fastest = max(ok, key=lambda r: r["speedup"]) if ok else None
        out.append({"device_name": name, "device": next((r.get("device") for r in members if r.get("device")), None),
                    "hosts": sorted({r["host"] for r in members if r.get("host")}),
                    "points": len(members), "measured": len(ok),
                    "front": [r["id"] for r in pareto_front(members, quality)],
                    "fastest": fastest["id"] if fastest else None, "rows": [r["id"] for r in members]})
    return sorted(out, key=lambda g: -g["points"])


def _annotate(out: Path, rows: list[dict[str, Any]], quality: str, ray_info: dict[str, Any]) -> list[dict[str, Any]]:
    """Add `ray` and `devices` to sweep.json (written by `write_sweep`)."""
    path = out / "sweep.json"
    summary = json.loads(path.read_text())
    devices = by_device(rows, quality)
    summary["devices"] = devices
    summary["ray"] = ray_info
    if len(devices) > 1:
        summary["note"] = ("the rows ran on different devices: compare speedups within a device (`devices`, each "
                           "with its own front); `front` mixes them")
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return devices


@dataclass
class RaySweepResult(SweepResult):
    devices: list[dict[str, Any]] = field(default_factory=list)
    ray: dict[str, Any] = field(default_factory=dict)


def run_sweep_ray(space: Space, prompts: PromptSet, out: Path, *, address: str | None = None,
                  workers: int | None = None, run_spec: RunSpec | None = None, seeds: list[int] | None = None,
                  resume: bool = False, quality: str = "ssim_worst",
                  progress: Callable[[str, int, int], None] | None = None, events: Events | None = None,
                  point_budget_s: float = POINT_BUDGET_S, retries: int = RETRIES, gpus_per_worker: float = 1.0,
                  cpus_per_worker: float | None = None, max_points: int | None = None,
                  start_timeout_s: float = START_TIMEOUT_S) -> RaySweepResult:
    """`optim.sweep.run_sweep` with the points evaluated by Ray actors (see the module docstring): the same
    files, rows written as they arrive, `resume` skipping the rows already in OUT/rows.jsonl."""
    started = time.perf_counter()
    # A lost row is measured again: its new row, appended later, is the one read back.
    seeds = seeds or [0]
    # Rows from any of the cluster's devices are reused when the rest of their identity matches (optim.rows).
    points, run_spec, resumed = start_sweep(space, out, run_spec=run_spec, resume=resume, max_points=max_points,
                                            prompts=prompts, seeds=seeds, any_device=True)
    done = resumed.rows
    rows = [done[p.id] for p in points if p.id in done]
    todo = [p for p in points if p.id not in done]
    pool: RayPool | None = None
    ray_info: dict[str, Any] = {}
    if todo:
        with Cluster(address) as cluster:
            ray_info = cluster.describe()
            pool = RayPool(run_spec, prompts, seeds or [0], workers=workers, point_budget_s=point_budget_s,
                           retries=retries, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                           progress=progress, events=events, start_timeout_s=start_timeout_s)
            try:
                futures = [pool.submit(point) for point in todo]
                for future in concurrent.futures.as_completed(futures):
                    row = future.result()  # an OptimError here ends the sweep; the rows written stay
                    rows.append(row)
                    append_row(out, row)
            finally:
                pool.close()
                ray_info.update(pool.describe())
    order = {p.id: i for i, p in enumerate(points)}
    rows.sort(key=lambda r: order.get(r["id"], len(order)))
    front = pareto_front(rows, quality)
    files = write_sweep(out, space, prompts, _run_of(pool, run_spec), rows, front, quality)
    devices = _annotate(out, rows, quality, ray_info)
    return RaySweepResult(rows, front, files, pool.pipeline_s if pool else 0.0, time.perf_counter() - started,
                          resumed=len(done), resume_note=resumed.note if resume else None, devices=devices,
                          ray=ray_info)




class RayEvaluator:
    """What `optim.tune.tune` evaluates points with, on Ray: `evaluate(point)` (thread-safe, blocking), `slots`
    (how many evaluations run at once), `pipeline_s`, `run`, `close()`."""

    any_device = True  # its rows come from every device of the cluster: resume compares the rest of the identity

    def __init__(self, pool: RayPool, run_spec: RunSpec) -> None:
        self.pool = pool
        self.run_spec = run_spec

    def evaluate(self, point: Point) -> dict[str, Any]:
        return self.pool.evaluate(point)

    @property
    def slots(self) -> int:
        return self.pool.slots

    @property
    def pipeline_s(self) -> float:
        return self.pool.pipeline_s

    @property
    def run(self) -> _Run:
        return _run_of(self.pool, self.run_spec)

    def close(self) -> None:
        self.pool.close()


def tune_ray(space: Space, prompts: PromptSet, floors: list[Any], out: Path, *, budget_s: float,
             address: str | None = None, workers: int | None = None, run_spec: RunSpec | None = None,
             seeds: list[int] | None = None, resume: bool = False,
             progress: Callable[[str, int, int], None] | None = None, events: Events | None = None,
             point_budget_s: float = 10.0, retries: int = RETRIES, gpus_per_worker: float = 1.0,
             max_evaluations: int | None = None) -> Any:
    """`optim.tune.tune` with its evaluations on Ray actors: the combinations' bisections (or batches of Optuna
    trials) run side by side, one evaluation per worker at a time. sweep.json gains `ray` and `devices`."""
    from optim.tune import tune

    run_spec = run_spec or parse_run(space.run)
    with Cluster(address) as cluster:
        ray_info = cluster.describe()
        pool = RayPool(run_spec, prompts, seeds or [0], workers=workers, point_budget_s=point_budget_s,
                       retries=retries, gpus_per_worker=gpus_per_worker, progress=progress, events=events)
        try:
            result = tune(space, prompts, floors, out, budget_s=budget_s, run_spec=run_spec, seeds=seeds,
                          resume=resume, progress=progress, point_budget_s=point_budget_s,
                          max_evaluations=max_evaluations, evaluator=RayEvaluator(pool, run_spec))
        finally:
            pool.close()
        ray_info.update(pool.describe())
    quality = floors[0].metric
    result.devices = _annotate(out, result.rows, quality, ray_info)
    return result
