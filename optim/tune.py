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

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optim.config import RunSpec, parse_optim, parse_run
from optim.errors import ConfigError
from optim.presets import make_preset, preset_to_json
from optim.prompts import PromptSet
from optim.rows import resume_rows
from optim.sweep import Evaluator, Floor, Space, floor_scope, identity_for, pareto_front, write_sweep
from optim.tune_stack import StackTuner, tune_stack
from optim.tuner import _combinations, _each, _monotone, _Tuner


@dataclass
class TuneResult:
    best: dict[str, Any] | None
    rows: list[dict[str, Any]]
    evaluations: int
    strategy: str
    files: list[str]
    elapsed_s: float
    stack: dict[str, Any] | None = None  # the stack tuner's summary (optim.tune_stack.tune_stack)
    resume_note: str | None = None  # what --resume reused and why it evaluated the rest again


def parse_budget(text: str) -> float:
    """'10m', '90s', '1h', '600' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConfigError(f"budget {text!r}: write it as seconds or with a unit, e.g. 600, 90s, 10m, 1h")
    value = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if value <= 0:
        raise ConfigError(f"budget {text!r} must be more than zero")
    return value


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
    if not space.ranges and not space.grid and not space.points and not space.stack:
        raise ConfigError("the space has nothing to tune")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    seeds = seeds or [0]
    run_spec = run_spec or parse_run(space.run)
    # Rows measured for exactly this run (optim.rows): other run settings, prompts, seeds, model, versions or
    # device, and rows whose Ray workers were lost, are evaluated again.
    any_device = getattr(evaluator, "any_device", False)
    resumed = resume_rows(out, identity_for(run_spec, prompts, seeds) if resume else {}, resume=resume,
                          any_device=any_device)
    cached = resumed.rows
    if resume and progress is not None:
        progress(resumed.note, 0, 0)
    if evaluator is None:
        evaluator = Evaluator(run_spec, prompts, seeds, should_stop=should_stop,
                              point_budget_s=point_budget_s)
    slots = getattr(evaluator, "slots", 1)
    combos = _combinations(space)
    monotone = bool(space.ranges) and len(space.ranges) == 1 and all(_monotone(p) for p in space.ranges)
    # What the search is, in words the report and the CLI print: every combination once (a grid), bisection of
    # one "faster when higher" setting per combination, or Optuna's TPE sampler.
    strategy = "grid" if not space.ranges else "bisection" if monotone else "optuna-tpe"
    stack: dict[str, Any] | None = None
    if space.stack:  # whole stacks: optim/tune_stack.py
        tuner: _Tuner = StackTuner(space, evaluator, floors, out, budget_s, cached, progress, max_evaluations)
        strategy = "stack: alone, then Optuna TPE over stacks, then removal"
    else:
        tuner = _Tuner(evaluator, floors, out, budget_s, cached, progress, max_evaluations)
    try:
        if space.stack:
            stack = tune_stack(tuner, out, progress)
        elif not space.ranges:
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
    if stack is not None:  # the stack tuner's winner (its removal rows came after it was chosen)
        best = next((row for row in rows if row["id"] == stack.get("winner", {}).get("id")), None)
    quality = floors[0].metric
    files = write_sweep(out, space, prompts, evaluator.run, rows, pareto_front(rows, quality), quality)
    summary = {"floors": [str(f) for f in floors], "strategy": strategy, "evaluations": len(rows),
               "best": best["id"] if best else None, "budget_s": budget_s,
               "elapsed_s": time.perf_counter() - started}
    if stack is not None:
        summary["stack"] = stack
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    files.append("tune.json")
    if best is not None:
        floors_text = ", ".join(f"{f} ({floor_scope(f.metric)})" for f in floors)
        preset = make_preset(f"tuned-{space.name}"[:64].lower(), parse_optim(best["settings"]),
                             description=(f"Tuned over the {prompts.name} prompts for {floors_text}: "
                                          f"{best['speedup']:.2f}x, {best['label']}.")[:500])
        (out / "tuned.json").write_text(preset_to_json(preset))
        files.append("tuned.json")
    return TuneResult(best=best, rows=rows, evaluations=len(rows), strategy=strategy, files=files,
                      elapsed_s=time.perf_counter() - started, stack=stack,
                      resume_note=resumed.note if resume else None)
