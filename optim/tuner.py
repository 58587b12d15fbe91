"""The tuner's search primitives, shared by the plain tuner (`optim.tune`) and the stack tuner
(`optim.tune_stack`): evaluations that append to rows.jsonl, bisection of a "faster when higher" setting, Optuna's
TPE sampler over a space's grid and ranges with the floors as constraints.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from optim import config as C
from optim.errors import ConfigError
from optim.sweep import SETTABLE, Evaluator, Floor, Space, point_of, set_path

BISECTION_STEPS = 4  # per combination, after its two ends: the answer is within (high - low) / 2**4


def _integer(path: str) -> bool:
    """Whether a settings field takes whole numbers (read from its annotation)."""
    cls, name = SETTABLE[path]
    annotation = str(cls.model_fields[name].annotation)
    return "int" in annotation and "float" not in annotation


def _monotone(path: str) -> bool:
    cls, name = SETTABLE[path]
    return C.facts(cls, name).faster_when_higher


def _combinations(space: Space) -> list[dict[str, Any]]:
    """The settings of every combination of the grid's choices, over the space's base."""
    paths = list(space.grid)
    out = []
    for values in itertools.product(*(space.grid[p] for p in paths)):
        settings = space.base
        for path, value in zip(paths, values):
            settings = set_path(settings, path, value)
        out.append(settings)
    return out or [space.base]


class _Tuner:
    def __init__(self, evaluator: Evaluator, floors: list[Floor], out: Path, budget_s: float,
                 cached: dict[str, dict[str, Any]], progress: Callable[[str, int, int], None] | None,
                 max_evaluations: int | None = None) -> None:
        self.max_evaluations = max_evaluations
        self.evaluator = evaluator
        self.floors = floors
        self.out = out
        self.deadline = time.perf_counter() + budget_s
        self.cached = cached
        self.rows: list[dict[str, Any]] = []
        self.progress = progress
        self._lock = threading.Lock()  # evaluations may run in threads (an evaluator with several slots)

    def out_of_time(self) -> bool:
        """The budget is spent (time, or the number of evaluations a server allows)."""
        too_many = self.max_evaluations is not None and len(self.rows) >= self.max_evaluations
        return too_many or time.perf_counter() >= self.deadline

    def feasible(self, row: dict[str, Any]) -> bool:
        return row.get("status") == "ok" and all(floor.met(row) for floor in self.floors)

    def evaluate(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The row of `settings` (measured, or from the resumed rows). Settings that do not go together (a grid's
        method without the ranged field: TaylorSeer has no threshold) are a refused row with the reason, never
        the end of the tune."""
        try:
            point = point_of(settings, where="tuning point")
        except ConfigError as error:
            digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
            row = {"id": f"invalid-{digest}", "label": str(error)[:80], "status": "refused", "reason": str(error),
                   "settings": settings}
            with self._lock:
                if all(r["id"] != row["id"] for r in self.rows):
                    self.rows.append(row)
            return row
        row = self.cached.get(point.id)
        if row is None:
            if self.progress is not None:
                self.progress(f"evaluation {len(self.rows) + 1}: {point.label}", len(self.rows), 0)
            row = self.evaluator.evaluate(point)
            with self._lock, open(self.out / "rows.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
        with self._lock:
            if all(r["id"] != row["id"] for r in self.rows):
                self.rows.append(row)
        return row

    def bisect(self, base: dict[str, Any], path: str, low: float, high: float) -> None:
        """The largest value of `path` in [low, high] that meets the floors, quality falling as it rises."""
        integer = _integer(path)
        value = (lambda x: int(round(x))) if integer else (lambda x: round(float(x), 6))
        low_row = self.evaluate(set_path(base, path, value(low)))
        if not self.feasible(low_row) or self.out_of_time():
            return  # even the gentlest setting of this combination fails the floors
        high_row = self.evaluate(set_path(base, path, value(high)))
        if self.feasible(high_row):
            return
        good, bad = low, high
        for _ in range(BISECTION_STEPS):
            if self.out_of_time() or (integer and bad - good <= 1):
                break
            middle = (good + bad) / 2
            if value(middle) in (value(good), value(bad)):
                break
            row = self.evaluate(set_path(base, path, value(middle)))
            if self.feasible(row):
                good = middle
            else:
                bad = middle

    def optuna(self, space: Space, combos: list[dict[str, Any]]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        def constraints(trial: Any) -> list[float]:
            return trial.user_attrs.get("constraints", [1.0])

        sampler = optuna.samplers.TPESampler(seed=0, constraints_func=constraints)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        slots = getattr(self.evaluator, "slots", 1)
        while not self.out_of_time():
            if slots > 1:  # a batch of trials at once, one per slot
                batch = [study.ask() for _ in range(slots)]
                _each(lambda trial: self._trial(study, space, combos, trial), batch, slots)
            else:
                self._trial(study, space, combos, study.ask())
            if len(study.trials) >= 64:
                break

    def _trial(self, study: Any, space: Space, combos: list[dict[str, Any]], trial: Any) -> None:
        settings = combos[trial.suggest_categorical("combination", list(range(len(combos))))]
        for path, bounds in space.ranges.items():
            if _integer(path):
                number = trial.suggest_int(path, int(bounds["low"]), int(bounds["high"]))
            else:
                number = trial.suggest_float(path, float(bounds["low"]), float(bounds["high"]),
                                             log=bool(bounds.get("log")))
            settings = set_path(settings, path, number)
        row = self.evaluate(settings)  # a combination that does not take this field is a refused row
        values = [floor.violation(row) for floor in self.floors] if row.get("status") == "ok" else [1.0]
        trial.set_user_attr("constraints", values)
        study.tell(trial, row.get("speedup", 0.0) if row.get("status") == "ok" else 0.0)


def _each(function: Callable[[Any], Any], items: list[Any], slots: int) -> None:
    """`function` on every item: in turn, or `slots` at a time in threads (an evaluator with several slots,
    e.g. `optim.distributed.RayEvaluator`)."""
    if slots <= 1 or len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=slots) as pool:
        list(pool.map(function, items))
