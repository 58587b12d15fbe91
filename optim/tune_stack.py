"""The tuner over whole stacks: the fastest combination of a cache (and its parameters), compile, the attention
backend and the weights' dtype that meets the quality floors, and what each part contributes.

    python -m optim tune --space tune-stack --floor "psnr_mean>=40" --floor "psnr>=35" --budget 20m --out out/stack

A space's `stack` names the parts and each part's options (a part is off unless an option is chosen):

    "stack": {
      "cache": [{"settings": {"cache": {"method": "mag_cache"}},
                 "ranges": {"cache.threshold": {"low": 0.02, "high": 0.8}}}, ...],
      "compile": [{"settings": {"compile": {"mode": "regional"}}}],
      "attention": [{"settings": {"attention": {"backend": "_native_flash"}}}]
    }

The search, in three phases, every evaluation a sweep point (the same baseline, interleaved timing, rows.jsonl):

1. Each option alone: an option with one "faster when higher" range is bisected for its largest value meeting
   the floors (`optim.tuner._Tuner.bisect`); one with other ranges is tried at its ends and middle; one without
   ranges is evaluated once.
2. Together: Optuna's TPE sampler with the floors as constraints, maximizing the speedup, warm-started with every
   evaluation of phase 1 (as completed trials) and first trying the combination of each part's best alone. A
   combination that compat refuses is never timed (the evaluator refuses it before loading anything).
3. The winner, with each part removed in turn: the part's contribution is the winner's speedup over the speedup
   without it. Where every part was measured alone at the winner's settings, the product of those speedups is
   set beside the stack's (below one: the parts interfere).

Compile cost stays apart: a point's speedup is steady-state (the timed runs follow the warm-up, and the cold
compile is the first warm-up's extra time), and the report says how many generations repay the compile.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from optim.config import parse_optim
from optim.sweep import Space, label_of, set_path
from optim.tuner import BISECTION_STEPS, _integer, _monotone, _Tuner

MAX_TRIALS = 64
Assignment = dict[str, tuple[int, dict[str, Any]]]  # part -> (option index, {range path: value})


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for settings in parts:
        for section, values in settings.items():
            out[section] = {**out.get(section, {}), **values} if isinstance(values, dict) else values
    return out


class StackTuner(_Tuner):
    """`_Tuner` over a space's stack: remembers which assignment each evaluated row came from."""

    def __init__(self, space: Space, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.space = space
        self.parts = space.stack
        self.assignments: dict[str, Assignment] = {}
        self._context: dict[str, int] = {}  # the parts being evaluated alone: part -> option index
        self.combined_bests: Assignment | None = None  # each part's best alone, together (phase 2's first trial)

    # ----------------------------------------------------------------------------------------- assignments

    def settings(self, assignment: Assignment) -> dict[str, Any]:
        settings = _merge(self.space.base, *(self.parts[part][index]["settings"]
                                             for part, (index, _) in assignment.items()))
        for _, values in assignment.values():
            for path, value in values.items():
                settings = set_path(settings, path, value)
        return settings

    def _values(self, part: str, index: int, settings: dict[str, Any]) -> dict[str, Any]:
        values = {}
        for path in self.parts[part][index].get("ranges") or {}:
            section, name = path.split(".", 1)
            values[path] = settings.get(section, {}).get(name)
        return values

    def evaluate(self, settings: dict[str, Any]) -> dict[str, Any]:
        row = super().evaluate(settings)
        if self._context and row["id"] not in self.assignments:
            self.assignments[row["id"]] = {part: (index, self._values(part, index, settings))
                                           for part, index in self._context.items()}
        return row

    def evaluate_assignment(self, assignment: Assignment) -> dict[str, Any]:
        row = super().evaluate(self.settings(assignment))  # settings that do not go together: a refused row
        self.assignments.setdefault(row["id"], assignment)
        return row

    # ------------------------------------------------------------------------------------------ phase 1

    def alone(self) -> dict[str, tuple[Assignment, dict[str, Any]]]:
        """Each option of each part alone; returns each part's best feasible (assignment, row)."""
        best: dict[str, tuple[Assignment, dict[str, Any]]] = {}
        for part, options in self.parts.items():
            for index, option in enumerate(options):
                if self.out_of_time():
                    return best
                self._context = {part: index}
                settings = _merge(self.space.base, option["settings"])
                ranges = option.get("ranges") or {}
                first = len(self.rows)
                if len(ranges) == 1 and all(_monotone(path) for path in ranges):
                    path, bounds = next(iter(ranges.items()))
                    self.bisect(settings, path, float(bounds["low"]), float(bounds["high"]))
                elif ranges:
                    for share in (0.0, 0.5, 1.0):
                        point = settings
                        for path, bounds in ranges.items():
                            value = bounds["low"] + share * (bounds["high"] - bounds["low"])
                            point = set_path(point, path, int(round(value)) if _integer(path) else round(value, 6))
                        self.evaluate(point)
                else:
                    self.evaluate(settings)
                self._context = {}
                for row in self.rows[first:]:
                    if self.feasible(row) and row.get("verdict") == "faster" and (
                            part not in best or row["speedup"] > best[part][1]["speedup"]):
                        best[part] = (self.assignments[row["id"]], row)
        return best

    # ------------------------------------------------------------------------------------------ phase 2

    def _distributions(self, assignment: Assignment) -> dict[str, Any]:
        import optuna

        out: dict[str, Any] = {}
        for part, options in self.parts.items():
            out[part] = optuna.distributions.CategoricalDistribution(list(range(len(options) + 1)))
            if part in assignment:
                index, values = assignment[part]
                for path, bounds in (options[index].get("ranges") or {}).items():
                    out[f"{part}[{index + 1}].{path}"] = self._distribution(path, bounds)
        return out

    @staticmethod
    def _distribution(path: str, bounds: dict[str, Any]) -> Any:
        import optuna

        if _integer(path):
            return optuna.distributions.IntDistribution(int(bounds["low"]), int(bounds["high"]))
        return optuna.distributions.FloatDistribution(float(bounds["low"]), float(bounds["high"]),
                                                      log=bool(bounds.get("log")))

    @staticmethod
    def _params(assignment: Assignment, parts: dict[str, Any]) -> dict[str, Any]:
        """Optuna's parameters of an assignment: each part's option (0: off, i + 1: option i) and its values."""
        params: dict[str, Any] = {part: 0 for part in parts}
        for part, (index, values) in assignment.items():
            params[part] = index + 1
            for path, value in values.items():
                params[f"{part}[{index + 1}].{path}"] = value
        return params

    def _score(self, row: dict[str, Any]) -> tuple[float, list[float]]:
        if row.get("status") != "ok":
            return 0.0, [1.0]
        return row["speedup"], [floor.violation(row) for floor in self.floors]

    def together(self, best_alone: dict[str, tuple[Assignment, dict[str, Any]]]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=0, constraints_func=lambda t: t.user_attrs.get("constraints",
                                                                                                 [1.0]))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        for row in list(self.rows):  # warm start: what phase 1 measured
            assignment = self.assignments.get(row["id"])
            if assignment is None:
                continue
            value, constraints = self._score(row)
            study.add_trial(optuna.trial.create_trial(
                params=self._params(assignment, self.parts), distributions=self._distributions(assignment),
                value=value, user_attrs={"constraints": constraints}))
        if len(best_alone) > 1:
            combined: Assignment = {part: found[0][part] for part, found in best_alone.items()}
            self.combined_bests = combined
            study.enqueue_trial(self._params(combined, self.parts), skip_if_exists=True)
        trials = 0
        while not self.out_of_time() and trials < MAX_TRIALS:
            trial = study.ask()
            assignment: Assignment = {}
            for part, options in self.parts.items():
                choice = trial.suggest_categorical(part, list(range(len(options) + 1)))
                if choice == 0:
                    continue
                values = {}
                for path, bounds in (options[choice - 1].get("ranges") or {}).items():
                    name = f"{part}[{choice}].{path}"
                    if _integer(path):
                        values[path] = trial.suggest_int(name, int(bounds["low"]), int(bounds["high"]))
                    else:
                        values[path] = round(trial.suggest_float(name, float(bounds["low"]), float(bounds["high"]),
                                                                 log=bool(bounds.get("log"))), 6)
                assignment[part] = (choice - 1, values)
            if not assignment:  # every part off: the baseline itself (1x, identical), not worth a measurement
                study.tell(trial, 1.0)
                trials += 1
                continue
            row = self.evaluate_assignment(assignment)
            value, constraints = self._score(row)
            trial.set_user_attr("constraints", constraints)
            study.tell(trial, value)
            trials += 1

    # ------------------------------------------------------------------------------------------ phase 3

    def contributions(self, winner: dict[str, Any]) -> list[dict[str, Any]]:
        """The winner with each of its parts removed in turn (measured even when out of time: it is the answer's
        evidence)."""
        assignment = self.assignments.get(winner["id"]) or {}
        out = []
        for part in assignment:
            without = {p: a for p, a in assignment.items() if p != part}
            row = self.evaluate_assignment(without) if without else None
            entry: dict[str, Any] = {"part": part, "option": self.describe(part, assignment[part])}
            if row is None:
                entry.update(without_speedup=1.0, share=winner["speedup"], without="the baseline")
            elif row.get("status") == "ok":
                entry.update(without_speedup=row["speedup"], share=winner["speedup"] / row["speedup"],
                             without=row["label"], without_meets_floors=self.feasible(row),
                             without_quality={f.metric: row.get(f.metric) for f in self.floors})
            else:
                entry.update(without_speedup=None, share=None, without=row["label"],
                             note=f"without it: {row['status']} ({row.get('reason', '')[:120]})")
            out.append(entry)
        return out

    def describe(self, part: str, choice: tuple[int, dict[str, Any]]) -> str:
        """One part's choice in the words of a sweep label ('mag_cache threshold=0.3', 'compile mode=regional')."""
        settings = self.settings({part: choice})
        varied = tuple(choice[1]) + tuple(f"{section}.{name}" for section, values in
                                          self.parts[part][choice[0]]["settings"].items()
                                          if isinstance(values, dict) for name in values
                                          if name not in ("method", "backend"))
        return label_of(parse_optim(settings, where=f"stack part {part}"), varied)

    def alone_product(self, winner: dict[str, Any]) -> float | None:
        """The product of the winner's parts' speedups measured alone at the same settings (None if one was not)."""
        assignment = self.assignments.get(winner["id"]) or {}
        product = 1.0
        for part, choice in assignment.items():
            match = [row for row in self.rows if row.get("status") == "ok"
                     and self.assignments.get(row["id"]) == {part: choice}]
            if not match:
                return None
            product *= match[0]["speedup"]
        return product


def compile_cost(row: dict[str, Any]) -> dict[str, Any] | None:
    """A compiled point's cold compile, kept apart from its steady-state speedup: how many generations repay it."""
    if row.get("compile_s") is None:
        return None
    saving = row.get("baseline_s", 0.0) - row.get("time_s", 0.0)
    generations = math.ceil(row["compile_s"] / saving) if saving > 0 else None
    return {"compile_s": row["compile_s"], "saving_per_generation_s": saving, "generations_to_repay": generations}


def tune_stack(tuner: StackTuner, out: Path, progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """Run the three phases on `tuner`; returns the stack summary for tune.json."""

    def say(text: str) -> None:
        if progress is not None:
            progress(text, len(tuner.rows), 0)

    say("phase 1: each part's options alone")
    best_alone = tuner.alone()
    say("phase 2: whole stacks (Optuna TPE, warm-started from phase 1)")
    tuner.together(best_alone)
    feasible = [row for row in tuner.rows if tuner.feasible(row)]
    winner = max(feasible, key=lambda row: row["speedup"]) if feasible else None
    summary: dict[str, Any] = {
        "best_alone": {part: {"id": row["id"], "label": row["label"], "speedup": row["speedup"]}
                       for part, (_, row) in best_alone.items()},
        "bisection_steps": BISECTION_STEPS,
    }
    if tuner.combined_bests is not None:
        # Each part's best alone, together: beside the product of their speedups alone, what interference costs.
        row = next((r for r in tuner.rows if tuner.assignments.get(r["id"]) == tuner.combined_bests), None)
        product = math.prod(found[1]["speedup"] for found in best_alone.values())
        summary["bests_together"] = {
            "label": row["label"] if row else None, "status": row.get("status") if row else "not evaluated",
            "speedup": row.get("speedup") if row else None, "meets_floors": bool(row and tuner.feasible(row)),
            "alone_product": product, "reason": row.get("reason") if row else None}
    if winner is not None:
        say("phase 3: each part of the winner removed in turn")
        summary["winner"] = {"id": winner["id"], "label": winner["label"], "speedup": winner["speedup"],
                             "speedup_low": winner["speedup_low"], "speedup_high": winner["speedup_high"],
                             "parts": {part: tuner.describe(part, choice)
                                       for part, choice in (tuner.assignments.get(winner["id"]) or {}).items()}}
        summary["contributions"] = tuner.contributions(winner)
        summary["alone_product"] = tuner.alone_product(winner)
        summary["compile"] = compile_cost(winner)
    return summary
