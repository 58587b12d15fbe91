"""Sweeps and the tuner on a Ray cluster: many GPUs, many nodes, nothing lost.

    python -m optim sweep --space fbc-threshold --out runs/fbc --ray                # RAY_ADDRESS, `ray start`'s, or new
    python -m optim sweep --space fbc-threshold --out runs/fbc --ray 10.0.0.1:6379  # a running cluster's head

Ray is optional (`pip install -r requirements-scale.txt`, or the `scale` extra): nothing else imports this module.

Workers. A worker slot is one Ray actor (`_Slot`) holding an `optim.sweep.Evaluator`: its own baseline worker
(loaded once, timed again in turns with each point, so a speedup is always a ratio of two runs on the same
machine and device) and its point worker, reconfigured in place when the next point allows it. Each actor asks
Ray for what it uses: `gpus_per_worker` GPUs (one by default) on a cluster with GPUs, or its share of the CPUs
on a CPU cluster (Ray then sets OMP_NUM_THREADS to it, which the side processes inherit). By default there is one
worker per GPU (GPU cluster) or per node (CPU cluster).

Placement. A free worker takes, first, a point it can swap in place (same quantization and offload, compile off:
`optim.measure.swappable`, the point's `swap_key`), then a point of a group no other worker is loaded with (the
largest such group), then anything. So a group of swappable points tends to stay on one worker, and a worker
loads a fresh pipeline only when it moves to another group.

Faults. A worker whose actor or node dies mid-evaluation (or whose baseline process dies) is replaced, and the
point goes back to the queue for another worker, at most `retries` more times; after that its row says
"failed" and why. The rows already written stay. A point that fails by itself (an out-of-memory setting, a
crash in one configuration's process) fails as it does locally: no retry.

Rows are written to OUT/rows.jsonl by the driver as they arrive (flushed and synced), in the local path's format
plus where each ran: `host`, `device`, `device_name`, `worker`, and `attempts` (with `retried_because`) when it
took more than one; a point lost on every try has `"lost": true`. A killed driver takes its actors with it (Ray
ends a dead driver's actors; their side processes end when their connection closes) and `--resume` skips the
rows written, except lost ones, which it tries again. sweep.json gains `ray` (the cluster and workers) and
`devices` (the rows grouped by device, each group with its own front: a speedup on an H100 is not one on an L4).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optim import errors
from optim.config import OptimConfig, RunSpec, minimal_dict, parse_run
from optim.errors import ConfigError, OptimError, RunError
from optim.prompts import PromptSet
from optim.sweep import (
    POINT_BUDGET_S,
    POINT_TARGET,
    Evaluator,
    Point,
    Space,
    SweepResult,
    pareto_front,
    start_sweep,
    write_sweep,
)

INSTALL = "pip install -r requirements-scale.txt (or: pip install 'diffusion-optimization-lab[scale]')"
RETRIES = 2  # a point whose worker is lost is tried again this many times, each time on another worker
START_TIMEOUT_S = 900.0  # no worker ready by then (the cluster lacks the resources asked for): the sweep fails
CLOSE_TIMEOUT_S = 30.0
WHERE_FIELDS = ("host", "device", "device_name", "worker")

Events = Callable[[str, dict[str, Any]], None]


def require_ray() -> Any:
    """The `ray` module, or a `ConfigError` (exit 2, one line) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


class Cluster:
    """A connection to a Ray cluster for the length of a `with` block.

    `address`: None or "auto" -> RAY_ADDRESS, else the cluster `ray start` started on this machine, else a new
    local cluster on this machine (ended with the block); "local" -> always a new local one; anything else is a
    cluster's address ("10.0.0.1:6379", "ray://head:10001"). If Ray is already initialized in this process
    (a test, a notebook), that connection is used and left open."""

    def __init__(self, address: str | None = None, **local_options: Any) -> None:
        self.address = address
        self.local_options = local_options
        self.started = False
        self.ray: Any = None

    def __enter__(self) -> Cluster:
        ray = self.ray = require_ray()
        if ray.is_initialized():
            return self
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        address = None if self.address in (None, "", "auto") else self.address
        try:
            if address is None:
                try:
                    ray.init(address="auto", **quiet)
                except ConnectionError:
                    ray.init(address="local", include_dashboard=False, **quiet, **self.local_options)
            elif address == "local":
                ray.init(address="local", include_dashboard=False, **quiet, **self.local_options)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise ConfigError(f"--ray {self.address or 'auto'}: could not connect to a Ray cluster: "
                              f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
        self.started = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.ray.shutdown()

    def describe(self) -> dict[str, Any]:
        resources = self.ray.cluster_resources()
        nodes = [node for node in self.ray.nodes() if node.get("Alive")]
        return {"address": self.address or "auto", "nodes": len(nodes), "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0)}


# ------------------------------------------------------------------------------------------------ the actor


class _Slot:
    """A worker slot, run as a Ray actor: an `Evaluator` kept loaded between the points it is given.

    Never raises from a method for a reason the driver should act on: it answers with what happened, so that a
    Python exception reaching the driver means a bug or a dead process, not a measured outcome."""

    def __init__(self, run_spec: RunSpec, prompts: PromptSet, seeds: list[int], point_budget_s: float,
                 target: float, name: str) -> None:
        from optim.machine import steady_threads

        steady_threads()
        self.settings = (run_spec, prompts, seeds, point_budget_s, target)
        self.name = name
        self.error: tuple[str, str] | None = None
        self.evaluator: Evaluator | None = None
        self.where = {"host": socket.gethostname(), "pid": os.getpid(), "worker": name}
        try:
            self.evaluator = self._new_evaluator()
            self.where.update(self._device(self.evaluator.run.device))
        except OptimError as error:
            self.error = (type(error).__name__, str(error))

    def _new_evaluator(self) -> Evaluator:
        run_spec, prompts, seeds, point_budget_s, target = self.settings
        return Evaluator(run_spec, prompts, seeds, point_budget_s=point_budget_s, target=target)

    @staticmethod
    def _device(device: str) -> dict[str, Any]:
        from optim.capabilities import device_info, device_name

        info = device_info()
        found = {"device": device, "device_name": device_name(device) if device == "cuda" else info.name}
        try:
            import ray

            found["node_ip"] = ray.util.get_node_ip_address()
            found["gpu_ids"] = [str(i) for i in ray.get_gpu_ids()]
        except Exception:  # noqa: BLE001 - where it ran is a courtesy; never fail a worker for it
            pass
        return found

    def hello(self) -> dict[str, Any]:
        """Where this worker runs, the resolved run settings, or why it cannot run."""
        run = self.evaluator.run.to_dict() if self.evaluator is not None else None
        return {**self.where, "error": self.error, "run": run}

    def evaluate(self, point: Point) -> tuple[dict[str, Any], float]:
        """(the point's row with where it ran, seconds spent inside pipeline calls); a row {"_lost": reason,
        "_error": (class, message)} when this worker could not measure it (the baseline failed or its process
        died): the worker has reset itself and the point should go to another."""
        if self.evaluator is None:
            self.evaluator = self._new_evaluator()
        before = self.evaluator.pipeline_s
        try:
            row = self.evaluator.evaluate(point)
        except OptimError as error:  # the baseline failed: the local path's sweep failure, here this worker's
            self._reset()
            return {"_lost": f"the baseline failed: {error}", "_error": (type(error).__name__, str(error))}, 0.0
        spent = self.evaluator.pipeline_s - before
        if not self._baseline_alive():
            # Its process died during this point's timed runs: the row blames the point for the baseline's death.
            reason = row.get("reason") or "the baseline's process ended"
            self._reset()
            return {"_lost": f"the baseline's process died: {reason}", "_error": ("RunError", reason)}, spent
        row.update({key: self.where.get(key) for key in WHERE_FIELDS})
        return row, spent

    def _baseline_alive(self) -> bool:
        baseline = getattr(self.evaluator, "_baseline", None)  # a RemoteSide: `status` is set once it has ended
        return baseline is None or getattr(baseline, "status", None) is None

    def _reset(self) -> None:
        if self.evaluator is not None:
            try:
                self.evaluator.close()
            except Exception:  # noqa: BLE001 - its processes may be dead already
                pass
        self.evaluator = None

    def close(self) -> bool:
        from optim.worker import launcher

        self._reset()
        launcher.stop()
        return True


# ------------------------------------------------------------------------------------------------ placement


def swap_key(optim: OptimConfig, point_id: str = "") -> str:
    """Points with the same key can follow each other on one loaded worker (`optim.measure.swappable`): the same
    quantization and offload, compile off. A compiled point has a key of its own."""
    if optim.compile.mode != "off":
        return f"compiled:{point_id}"
    settings = minimal_dict(optim)
    return json.dumps({"quantization": settings.get("quantization"), "offload": settings.get("offload")},
                      sort_keys=True)


@dataclass
class _Job:
    point: Point
    key: str
    future: concurrent.futures.Future
    attempts: int = 0
    avoid: set[str] = field(default_factory=set)  # workers (actor names) that lost it
    reasons: list[str] = field(default_factory=list)


def pick(pending: list[_Job], worker: str, loaded: str | None, held: set[str], ready: set[str]) -> int | None:
    """Which pending job a free `worker` (loaded with key `loaded`; other workers loaded with `held`) takes:
    one it can swap in place; else one of the largest group no other worker holds; else the largest group.
    A job is not given back to a worker that lost it while another ready worker could take it."""
    eligible = [i for i, job in enumerate(pending) if worker not in job.avoid or ready <= job.avoid]
    if not eligible:
        return None
    if loaded is not None:
        for i in eligible:
            if pending[i].key == loaded:
                return i
    unheld = [i for i in eligible if pending[i].key not in held]
    candidates = unheld or eligible
    counts = collections.Counter(pending[i].key for i in candidates)
    biggest = max(counts.values())
    return next(i for i in candidates if counts[pending[i].key] == biggest)


def plan_workers(nodes: list[dict[str, float]], device: str, workers: int | None = None,
                 gpus_per_worker: float = 1.0, cpus_per_worker: float | None = None) -> tuple[int, dict[str, float]]:
    """(number of workers, Ray resources each asks for) for a cluster whose nodes have these resources.

    GPU cluster (and a device other than cpu): `gpus_per_worker` GPUs each and their share of the node's CPUs,
    one worker per GPU by default. CPU cluster: one worker per node by default, each with the smallest node's
    CPUs; for a given number of workers, an equal share of all the CPUs (at most one node's)."""
    gpus = sum(n.get("GPU", 0) for n in nodes)
    if device == "cuda" and not gpus:
        raise ConfigError("--device cuda: the Ray cluster has no GPUs (`ray status` lists its resources)")
    if gpus and device != "cpu":
        each = float(gpus_per_worker)
        count = workers or max(1, int(gpus // each))
        cpus_per_gpu = min(n.get("CPU", 0) / n["GPU"] for n in nodes if n.get("GPU"))
        cpu_each = cpus_per_worker or max(1.0, math.floor(cpus_per_gpu * each))
        return count, {"num_gpus": each, "num_cpus": cpu_each}
    cpu_nodes = [n.get("CPU", 0) for n in nodes if n.get("CPU", 0) >= 1] or [1.0]
    if workers:
        count, cpu_each = workers, max(1.0, min(max(cpu_nodes), math.floor(sum(cpu_nodes) / workers)))
    else:
        count, cpu_each = len(cpu_nodes), min(cpu_nodes)
    return count, {"num_gpus": 0, "num_cpus": cpus_per_worker or cpu_each}


@dataclass
class _Worker:
    index: int
    generation: int
    actor: Any
    hello_ref: Any
    started: float
    info: dict[str, Any] | None = None
    loaded: str | None = None
    busy: Any = None  # the ObjectRef of the evaluation in flight
    job: _Job | None = None
    alive: bool = True

    @property
    def name(self) -> str:
        return f"w{self.index}" + (f".{self.generation}" if self.generation else "")


class RayPool:
    """Ray actors evaluating points: `submit(point)` -> a Future of the point's row. A dispatcher thread places
    the points (see `pick`), collects results as they arrive, replaces lost workers and retries their points."""

    def __init__(self, run_spec: RunSpec, prompts: PromptSet, seeds: list[int], *, workers: int | None = None,
                 point_budget_s: float = POINT_BUDGET_S, target: float = POINT_TARGET, retries: int = RETRIES,
                 gpus_per_worker: float = 1.0, cpus_per_worker: float | None = None,
                 progress: Callable[[str, int, int], None] | None = None, events: Events | None = None,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.ray = require_ray()
        if workers is not None and workers < 1:
            raise ConfigError(f"--ray-workers {workers}: give at least 1")
        self.run_spec = run_spec
        self.prompts = prompts
        self.seeds = list(seeds)
        self.point_budget_s = point_budget_s
        self.target = target
        self.retries = max(0, retries)
        self.requested_workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.progress = progress
        self.events = events
        self.start_timeout_s = start_timeout_s
        self.pipeline_s = 0.0
        self.replacements = 0
        self.workers: list[_Worker] = []
        self.shape: dict[str, float] = {}
        self.run: dict[str, Any] | None = None  # the resolved run settings, from the first worker that started
        self._pending: list[_Job] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._fatal: BaseException | None = None
        self._started_at = 0.0
        self._submitted = 0
        self._finished = 0

    # -------------------------------------------------------------------------------------------- sizing

    def plan(self) -> tuple[int, dict[str, float]]:
        """How many workers and what each asks for (`plan_workers`), from the cluster's live nodes."""
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        return plan_workers(nodes, self.run_spec.device, self.requested_workers, self.gpus_per_worker,
                            self.cpus_per_worker)

    def _start_worker(self, index: int, generation: int) -> _Worker:
        name = f"w{index}" + (f".{generation}" if generation else "")
        actor_class = self.ray.remote(_Slot).options(max_restarts=0, max_concurrency=1, scheduling_strategy="SPREAD",
                                                     **self.shape)
        actor = actor_class.remote(self.run_spec, self.prompts, self.seeds, self.point_budget_s, self.target, name)
        worker = _Worker(index, generation, actor, actor.hello.remote(), time.monotonic())
        return worker

    def start(self) -> None:
        if self._thread is not None:
            return
        count, self.shape = self.plan()
        self.workers = [self._start_worker(i, 0) for i in range(count)]
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="ray-dispatcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------- the API

    def submit(self, point: Point) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._fatal is not None:
                future.set_exception(self._fatal)
                return future
            self._pending.append(_Job(point, swap_key(point.optim, point.id), future))
            self._submitted += 1
            self._lock.notify_all()
        self.start()
        return future

    def evaluate(self, point: Point) -> dict[str, Any]:
        """One point's row, blocking (the tuner's evaluations: several threads may call it at once)."""
        return self.submit(point).result()

    @property
    def slots(self) -> int:
        if not self.workers:
            count, _ = self.plan()
            return count
        return len(self.workers)

    def describe(self) -> dict[str, Any]:
        return {"workers": [{"name": w.name, **{k: v for k, v in (w.info or {}).items() if k not in ("run", "error")},
                             "alive": w.alive} for w in self.workers],
                "per_worker": self.shape, "replaced": self.replacements, "retries": self.retries}

    def close(self) -> None:
        """Stop dispatching, fail what is still queued, end every actor (gracefully first: its side processes
        and zygote end with it)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            for job in self._pending:
                if not job.future.done():
                    job.future.set_exception(RunError("the sweep was stopped before this point ran"))
            self._pending.clear()
        closing = []
        for worker in self.workers:
            if worker.alive:
                try:
                    closing.append(worker.actor.close.remote())
                except Exception:  # noqa: BLE001
                    pass
        if closing:
            try:
                self.ray.wait(closing, num_returns=len(closing), timeout=CLOSE_TIMEOUT_S)
            except Exception:  # noqa: BLE001
                pass
        for worker in self.workers:
            try:
                self.ray.kill(worker.actor)
            except Exception:  # noqa: BLE001
                pass
            if worker.job is not None and not worker.job.future.done():
                worker.job.future.set_exception(RunError("the sweep was stopped while this point ran"))
            worker.alive = False

    # --------------------------------------------------------------------------------------- dispatching

    def _emit(self, kind: str, **info: Any) -> None:
        if self.events is not None:
            try:
                self.events(kind, info)
            except Exception:  # noqa: BLE001 - a listener's bug must not stop the sweep
                logging.getLogger(__name__).exception("event listener failed")

    def _say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message, self._finished, self._submitted)

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closing:
                        return
                    self._assign()
                    refs = [w.busy for w in self.workers if w.busy is not None]
                    refs += [w.hello_ref for w in self.workers if w.alive and w.info is None]
                    if not refs:
                        self._lock.wait(0.2)
                        continue
                ready, _ = self.ray.wait(refs, num_returns=1, timeout=0.2)
                with self._lock:
                    for ref in ready:
                        self._settle(ref)
                    self._check_progress()
        except BaseException as error:  # noqa: BLE001 - never leave a caller waiting on a future
            with self._lock:
                self._fail_all(error if isinstance(error, OptimError) else
                               RunError(f"the Ray dispatcher failed: {type(error).__name__}: {error}"))

    def _assign(self) -> None:
        ready = {w.name for w in self.workers if w.alive and w.info is not None}
        for worker in self.workers:
            if not (worker.alive and worker.info is not None and worker.busy is None and self._pending):
                continue
            held = {w.loaded for w in self.workers if w is not worker and w.alive and w.loaded is not None}
            index = pick(self._pending, worker.name, worker.loaded, held, ready)
            if index is None:
                continue
            job = self._pending.pop(index)
            job.attempts += 1
            worker.job, worker.loaded = job, job.key
            worker.busy = worker.actor.evaluate.remote(job.point)
            where = f"{worker.name} ({worker.info.get('host')}, {worker.info.get('device_name')})"
            self._say(f"point {self._finished + 1}/{self._submitted} on {where}: {job.point.label}"
                      + (f" (attempt {job.attempts})" if job.attempts > 1 else ""))
            self._emit("start", point=job.point.id, label=job.point.label, worker=worker.name,
                       pid=worker.info.get("pid"), host=worker.info.get("host"), attempt=job.attempts)

    def _settle(self, ref: Any) -> None:
        worker = next((w for w in self.workers if ref == w.busy or (ref == w.hello_ref and w.info is None)), None)
        if worker is None:
            return
        if worker.info is None:
            self._hello(worker)
            return
        job, worker.busy, worker.job = worker.job, None, None
        try:
            row, spent = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:  # the actor's process or its node died
            self._lost(worker, job, f"its Ray worker {worker.name} on {worker.info.get('host')} died "
                                    f"({_first_line(error)})", replace=True)
            return
        except self.ray.exceptions.RayError as error:  # an exception inside the actor (a bug) or a lost object
            self._lost(worker, job, f"its Ray worker {worker.name} failed ({_first_line(error)})", replace=False)
            return
        self.pipeline_s += spent
        if "_lost" in row:
            kind, message = row["_error"]
            if getattr(errors, kind, None) is not None and getattr(errors, kind).exit_code == 2:
                self._fail_all(_rebuild(kind, message))  # a bad model or setting: no other worker does better
                return
            worker.loaded = None
            self._lost(worker, job, f"{row['_lost']} on {worker.name} ({worker.info.get('host')})", replace=False)
            return
        if row.get("status") == "failed":
            worker.loaded = None  # the evaluator closed its point worker
        if job.attempts > 1:
            row["attempts"] = job.attempts
            row["retried_because"] = job.reasons
        self._finished += 1
        self._emit("row", point=job.point.id, worker=worker.name, status=row.get("status"))
        job.future.set_result(row)

    def _hello(self, worker: _Worker) -> None:
        try:
            info = self.ray.get(worker.hello_ref)
        except self.ray.exceptions.RayError as error:
            worker.info = {"host": "?", "error": ("RunError", _first_line(error))}
            self._lost(worker, None, f"its Ray worker {worker.name} could not start ({_first_line(error)})",
                       replace=True)
            return
        if info.get("error"):
            kind, message = info["error"]
            self._fail_all(_rebuild(kind, f"on the Ray worker {worker.name} ({info.get('host')}): {message}"))
            return
        worker.info = info
        if self.run is None:
            self.run = info.get("run")
        self._say(f"worker {worker.name} ready on {info.get('host')} ({info.get('device_name')})")
        self._emit("worker", worker=worker.name, pid=info.get("pid"), host=info.get("host"),
                   device_name=info.get("device_name"))

    def _lost(self, worker: _Worker, job: _Job | None, reason: str, *, replace: bool) -> None:
        """A worker could not finish `job`: retry it elsewhere (bounded); replace the worker if it is dead."""
        self._emit("lost", worker=worker.name, point=job.point.id if job else None, reason=reason)
        if replace:
            worker.alive = False
            worker.loaded = None
            try:
                self.ray.kill(worker.actor)
            except Exception:  # noqa: BLE001
                pass
            if self.replacements < len(self.workers) * (self.retries + 1):
                self.replacements += 1
                fresh = self._start_worker(worker.index, worker.generation + 1)
                self.workers[self.workers.index(worker)] = fresh
        if job is None:
            return
        job.reasons.append(reason)
        job.avoid.add(worker.name)
        if job.attempts > self.retries:
            self._finished += 1
            point = job.point
            job.future.set_result({"id": point.id, "label": point.label, "settings": minimal_dict(point.optim),
                                   "status": "failed", "lost": True, "attempts": job.attempts,
                                   "reason": f"lost {job.attempts} times: " + "; ".join(job.reasons)})
            return
        self._say(f"{reason}; {job.point.label} goes to another worker")
        self._pending.insert(0, job)

    def _check_progress(self) -> None:
        """Fail the queue if no worker can ever take it: none started in time, or every one is gone."""
        if not self._pending:
            return
        alive = [w for w in self.workers if w.alive]
        if not alive:
            self._fail_all(RunError("every Ray worker was lost and the replacements are spent; the rows "
                                    "measured so far are kept (rerun with --resume)"))
            return
        if any(w.info is not None for w in alive):
            return
        if time.monotonic() - self._started_at > self.start_timeout_s:
            self._fail_all(RunError(
                f"no Ray worker started within {self.start_timeout_s:.0f} s: each asks for {self.shape} and "
                f"the cluster has {self.ray.cluster_resources()}"))

    def _fail_all(self, error: BaseException) -> None:
        self._fatal = error
        jobs = list(self._pending) + [w.job for w in self.workers if w.job is not None]
        self._pending.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)
        self._closing = True


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(error).__name__


def _rebuild(kind: str, message: str) -> OptimError:
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, OptimError)):
        cls = RunError
    return cls(message)


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


# ------------------------------------------------------------------------------------------- by device


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


# ------------------------------------------------------------------------------------------------ sweep


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
    points, run_spec, done = start_sweep(space, out, run_spec=run_spec, resume=resume, max_points=max_points)
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
                    _append(out, row)
            finally:
                pool.close()
                ray_info.update(pool.describe())
    order = {p.id: i for i, p in enumerate(points)}
    rows.sort(key=lambda r: order.get(r["id"], len(order)))
    front = pareto_front(rows, quality)
    files = write_sweep(out, space, prompts, _run_of(pool, run_spec), rows, front, quality)
    devices = _annotate(out, rows, quality, ray_info)
    return RaySweepResult(rows, front, files, pool.pipeline_s if pool else 0.0, time.perf_counter() - started,
                          resumed=len(done), devices=devices, ray=ray_info)


def _append(out: Path, row: dict[str, Any]) -> None:
    with open(out / "rows.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------------------------------ tune


class RayEvaluator:
    """What `optim.tune.tune` evaluates points with, on Ray: `evaluate(point)` (thread-safe, blocking), `slots`
    (how many evaluations run at once), `pipeline_s`, `run`, `close()`."""

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


# ------------------------------------------------------------------------------------------------ the CLI


def _device_title(group: dict[str, Any]) -> str:
    hosts = group["hosts"]
    shown = ", ".join(hosts[:4]) + (f" and {len(hosts) - 4} more" if len(hosts) > 4 else "")
    return f"{group['device_name']} ({group['device'] or '?'}; {shown or 'no host recorded'})"


def sweep_command(args: Any, space: Space, run: RunSpec, prompts: PromptSet, seeds: list[int]) -> int:
    """`python -m optim sweep ... --ray [ADDRESS]`: the local summary, grouped by device."""
    from optim.cli import _progress

    require_ray()
    result = run_sweep_ray(space, prompts, args.out, address=args.ray, workers=args.ray_workers, run_spec=run,
                           seeds=seeds, resume=args.resume, quality=args.quality, progress=_progress(args.quiet),
                           point_budget_s=args.point_budget_s or POINT_BUDGET_S)
    ok = [row for row in result.rows if row["status"] == "ok"]
    workers = result.ray.get("workers", [])
    print(f"{space.name}: {len(result.rows)} points ({len(ok)} measured, {result.resumed} from an earlier run), "
          f"{len(prompts.prompts)} prompts x {len(seeds)} seed(s), {result.elapsed_s:.0f} s "
          f"({result.pipeline_s:.0f} s inside the pipeline) on Ray: {len(workers)} worker(s), "
          f"{result.ray.get('nodes', '?')} node(s)")
    by_id = {row["id"]: row for row in result.rows}
    for group in result.devices:
        print(f"on {_device_title(group)}:")
        front = set(group["front"])
        for row in (by_id[i] for i in group["rows"]):
            mark = "*" if row["id"] in front else " "
            if row["status"] == "ok":
                print(f" {mark} {row['label'][:48]:48}  {row['speedup']:.2f}x ({row['speedup_low']:.2f}-"
                      f"{row['speedup_high']:.2f}, {row['verdict']})  work {row['work_fraction']:.0%}  "
                      f"{args.quality} {row[args.quality]:.4f}")
            else:
                print(f"   {row['label'][:48]:48}  {row['status']}: {row.get('reason', '')[:100]}")
    if len(result.devices) > 1:
        print(f"note: {len(result.devices)} devices: a speedup holds for the device it was measured on")
    print(f"* on its device's Pareto front (speedup against {args.quality}); wrote {args.out}/ "
          f"{', '.join(result.files[:3])} and {len(result.files) - 3} more")
    return 0


def tune_command(args: Any, space: Space, run: RunSpec, prompts: PromptSet, seeds: list[int], floors: list[Any],
                 budget: float) -> int:
    """`python -m optim tune ... --ray [ADDRESS]`."""
    from optim.cli import _progress

    require_ray()
    result = tune_ray(space, prompts, floors, args.out, budget_s=budget, address=args.ray, workers=args.ray_workers,
                      run_spec=run, seeds=seeds, resume=args.resume, progress=_progress(args.quiet),
                      point_budget_s=args.point_budget_s or 10.0)
    print(f"{result.strategy}: {result.evaluations} evaluations in {result.elapsed_s:.0f} s over "
          f"{len(prompts.prompts)} prompts x {len(seeds)} seed(s), on Ray")
    for group in result.devices:
        print(f"on {_device_title(group)}: {group['points']} evaluations, {group['measured']} measured")
    if result.best is None:
        print("no evaluated configuration meets " + ", ".join(str(f) for f in floors))
        return 1
    best = result.best
    where = f" on {best['device_name']}" if best.get("device_name") else ""
    print(f"fastest meeting {', '.join(str(f) for f in floors)}: {best['label']}: {best['speedup']:.2f}x "
          f"({best['speedup_low']:.2f}-{best['speedup_high']:.2f}, {best['verdict']}){where}, "
          + ", ".join(f"{f.metric} {best[f.metric]:.4f}" for f in floors))
    if len(result.devices) > 1:
        print(f"note: {len(result.devices)} devices: the fastest is chosen across them; see sweep.json's devices")
    print(f"wrote {args.out}/tuned.json (the preset) and the evidence: sweep.json, sweep.csv, pareto.png")
    return 0
