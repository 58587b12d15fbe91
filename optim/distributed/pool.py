"""The pool of Ray workers: how many and what each asks for (`plan_workers`), which point a free worker takes
(`pick`: one it can swap in place, then a group nobody holds), and what happens when a worker is lost (its point
goes back to the queue, at most `retries` more times; a replacement starts)."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from optim.config import OptimConfig, RunSpec, minimal_dict
from optim.distributed.actor import Slot
from optim.distributed.cluster import require_ray
from optim.errors import ConfigError, OptimError, RunError, first_line, rebuild_error
from optim.prompts import PromptSet
from optim.sweep import POINT_BUDGET_S, POINT_TARGET, Point

RETRIES = 2  # a point whose worker is lost is tried again this many times, each time on another worker
START_TIMEOUT_S = 900.0  # no worker ready by then (the cluster lacks the resources asked for): the sweep fails
CLOSE_TIMEOUT_S = 30.0

Events = Callable[[str, dict[str, Any]], None]
log = logging.getLogger(__name__)


def swap_key(optim: OptimConfig, point_id: str = "") -> str:
    """Points with the same key can follow each other on one loaded worker (`optim.measure.swappable`): the same
    quantization and offload, compile off. A compiled point has a key of its own."""
    if optim.compile.mode != "off":
        return f"compiled:{point_id}"
    settings = minimal_dict(optim)
    return json.dumps({"quantization": settings.get("quantization"), "offload": settings.get("offload")},
                      sort_keys=True)


@dataclass
class Job:
    point: Point
    key: str
    future: concurrent.futures.Future
    attempts: int = 0
    avoid: set[str] = field(default_factory=set)  # workers (actor names) that lost it
    reasons: list[str] = field(default_factory=list)


def pick(pending: list[Job], worker: str, loaded: str | None, held: set[str], ready: set[str]) -> int | None:
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
    job: Job | None = None
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
        self._pending: list[Job] = []
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
        actor_class = self.ray.remote(Slot).options(max_restarts=0, max_concurrency=1, scheduling_strategy="SPREAD",
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
            self._pending.append(Job(point, swap_key(point.optim, point.id), future))
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
        log.info(message)
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
                                    f"({first_line(error)})", replace=True)
            return
        except self.ray.exceptions.RayError as error:  # an exception inside the actor (a bug) or a lost object
            self._lost(worker, job, f"its Ray worker {worker.name} failed ({first_line(error)})", replace=False)
            return
        self.pipeline_s += spent
        if "_lost" in row:
            kind, message = row["_error"]
            error = rebuild_error(kind, message)
            if error.exit_code == 2:
                self._fail_all(error)  # a bad model or setting: no other worker does better
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
            worker.info = {"host": "?", "error": ("RunError", first_line(error))}
            self._lost(worker, None, f"its Ray worker {worker.name} could not start ({first_line(error)})",
                       replace=True)
            return
        if info.get("error"):
            kind, message = info["error"]
            self._fail_all(rebuild_error(kind, f"on the Ray worker {worker.name} ({info.get('host')}): {message}"))
            return
        worker.info = info
        if self.run is None:
            self.run = info.get("run")
        self._say(f"worker {worker.name} ready on {info.get('host')} ({info.get('device_name')})")
        self._emit("worker", worker=worker.name, pid=info.get("pid"), host=info.get("host"),
                   device_name=info.get("device_name"))

    def _lost(self, worker: _Worker, job: Job | None, reason: str, *, replace: bool) -> None:
        """A worker could not finish `job`: retry it elsewhere (bounded); replace the worker if it is dead."""
        log.warning("worker %s lost %s: %s%s", worker.name, job.point.label if job else "no point", reason,
                    " (replacing it)" if replace else "")
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
