"""Auto-tune: the fastest configuration whose worst-case quality over a prompt set stays above the floors.

    python -m optim tune --floor "ssim>=0.98" --budget 10m --prompts embedded --out runs/tuned

The search space is a space file (`optim.sweep.Space`): `grid` for choices (e.g. the cache method) and `ranges`
for numbers, e.g. {"cache.threshold": {"low": 0.02, "high": 0.6}}. Two strategies, chosen from the space:

* Bisection, when every number is a setting that skips more work as it grows (`faster_when_higher` in its
  facts: cache thresholds, TaylorSeer's interval, skip ranges): quality falls as it rises, so for each
  combination of choices the largest value that still meets the floors is found by bisection, in a handful of
  evaluations.
* Otherwise Optuna's TPE sampler with the floors as constraints (`constraints_func`), maximizing the speedup,
  until the budget is spent.

Every evaluation is a sweep point (the same workers, baseline, interleaved timing and rows.jsonl); the answer is
the evaluated point that meets every floor with the highest speedup, saved as tuned.json, with the evidence:
sweep.json, sweep.csv, pareto.png.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optim import config as C
from optim.config import RunSpec, parse_optim, parse_run
from optim.errors import ConfigError
from optim.presets import make_preset, preset_to_json
from optim.prompts import PromptSet
from optim.sweep import (
    SETTABLE,
    Evaluator,
    Floor,
    Space,
    pareto_front,
    point_of,
    read_rows,
    set_path,
    write_sweep,
)

BISECTION_STEPS = 4  # per combination, after its two ends: the answer is within (high - low) / 2**4


@dataclass
class TuneResult:
    best: dict[str, Any] | None
    rows: list[dict[str, Any]]
    evaluations: int
    strategy: str
    files: list[str]
    elapsed_s: float


def parse_budget(text: str) -> float:
    """'10m', '90s', '1h', '600' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConfigError(f"budget {text!r}: write it as seconds or with a unit, e.g. 600, 90s, 10m, 1h")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if value <= 0:
        raise ConfigError(f"budget {text!r} must be more than zero")
    return value


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
        point = point_of(settings, where="tuning point")
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
        try:
            row = self.evaluate(settings)
        except ConfigError as error:  # a combination that does not take this field
            trial.set_user_attr("constraints", [1.0])
            study.tell(trial, 0.0)
            self.rows.append({"id": f"invalid-{trial.number}", "label": str(error)[:80], "status": "refused",
                              "reason": str(error), "settings": {}})
            return
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


def tune(space: Space, prompts: PromptSet, floors: list[Floor], out: Path, *, budget_s: float,
         run_spec: RunSpec | None = None, seeds: list[int] | None = None, resume: bool = False,
         progress: Callable[[str, int, int], None] | None = None,
         should_stop: Callable[[], bool] | None = None, point_budget_s: float = 10.0,
         max_evaluations: int | None = None, evaluator: Any | None = None) -> TuneResult:
    """Find the fastest configuration of `space` meeting every floor (see the module docstring).

    `evaluator`: what measures the points instead of a local `Evaluator` (e.g. `optim.distributed.RayEvaluator`);
    with `slots` > 1 the combinations (or batches of trials) are evaluated that many at a time. Closed here."""
    if not floors:
        raise ConfigError("give at least one quality floor, e.g. --floor 'ssim>=0.98'")
    if not space.ranges and not space.grid and not space.points:
        raise ConfigError("the space has nothing to tune")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    cached = {row["id"]: row for row in read_rows(out)} if resume else {}
    if not resume and (out / "rows.jsonl").exists():
        (out / "rows.jsonl").unlink()
    if evaluator is None:
        evaluator = Evaluator(run_spec or parse_run(space.run), prompts, seeds or [0], should_stop=should_stop,
                              point_budget_s=point_budget_s)
    slots = getattr(evaluator, "slots", 1)
    tuner = _Tuner(evaluator, floors, out, budget_s, cached, progress, max_evaluations)
    combos = _combinations(space)
    monotone = bool(space.ranges) and len(space.ranges) == 1 and all(_monotone(p) for p in space.ranges)
    strategy = "bisection" if monotone or not space.ranges else "optuna-tpe"
    try:
        if not space.ranges:
            _each(lambda settings: tuner.out_of_time() or tuner.evaluate(settings), combos + space.points, slots)
        elif monotone:
            path, bounds = next(iter(space.ranges.items()))
            _each(lambda settings: tuner.out_of_time() or tuner.bisect(settings, path, float(bounds["low"]),
                                                                     float(bounds["high"])), combos, slots)
        else:
            tuner.optuna(space, combos)
    finally:
        evaluator.close()
    rows = tuner.rows
    feasible = [row for row in rows if tuner.feasible(row)]
    best = max(feasible, key=lambda row: row["speedup"]) if feasible else None
    quality = floors[0].metric
    files = write_sweep(out, space, prompts, evaluator.run, rows, pareto_front(rows, quality), quality)
    summary = {"floors": [str(f) for f in floors], "strategy": strategy, "evaluations": len(rows),
               "best": best["id"] if best else None, "budget_s": budget_s,
               "elapsed_s": time.perf_counter() - started}
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    files.append("tune.json")
    if best is not None:
        floors_text = ", ".join(str(f) for f in floors)
        preset = make_preset(f"tuned-{space.name}"[:64].lower(), parse_optim(best["settings"]),
                             description=(f"Tuned over the {prompts.name} prompts for {floors_text} (worst case): "
                                          f"{best['speedup']:.2f}x, {best['label']}.")[:500])
        (out / "tuned.json").write_text(preset_to_json(preset))
        files.append("tuned.json")
    return TuneResult(best=best, rows=rows, evaluations=len(rows), strategy=strategy, files=files,
                      elapsed_s=time.perf_counter() - started)
