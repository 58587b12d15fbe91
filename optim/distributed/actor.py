"""A worker slot: one Ray actor holding an `optim.sweep.Evaluator` (its own baseline worker, loaded once and timed
again in turns with each point, and its point worker, reconfigured in place when the next point allows)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from optim.config import RunSpec
from optim.errors import OptimError
from optim.prompts import PromptSet
from optim.sweep import Evaluator, Point

WHERE_FIELDS = ("host", "device", "device_name", "worker")
log = logging.getLogger(__name__)


class Slot:
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
            log.warning("worker %s: the baseline failed (%s); resetting", self.name, error)
            self._reset()
            return {"_lost": f"the baseline failed: {error}", "_error": (type(error).__name__, str(error))}, 0.0
        spent = self.evaluator.pipeline_s - before
        if not self._baseline_alive():
            # Its process died during this point's timed runs: the row blames the point for the baseline's death.
            reason = row.get("reason") or "the baseline's process ended"
            log.warning("worker %s: the baseline's process died (%s); resetting", self.name, reason)
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
        from optim.launch import launcher

        self._reset()
        launcher.stop()
        return True
