"""Sweeps: many configurations, each measured against one baseline over a prompt set, with the same interleaved,
interval-backed timing as a comparison; a speed-quality Pareto front; each front point saved as a preset.

    python -m optim sweep --space SPACE.json --prompts embedded --out runs/fbc

A space file (JSON) names what to vary, over what values:

    {"name": "fbc-threshold",
     "base": {"cache": {"method": "first_block_cache"}},          # optional: settings every point starts from
     "grid": {"cache.threshold": [0.05, 0.1, 0.15, 0.2]},         # field paths -> values; their product
     "points": [{"cache": {"method": "mag_cache"}}],              # optional: extra configurations, as given
     "run": {"steps": 20}}                                        # optional: run settings

Cheap evaluations: the baseline's worker stays loaded for the whole sweep (its images and work are computed
once per prompt and seed, its runs timed again in turns with each point), and a point's worker keeps its
pipeline loaded while the next point only changes what can be undone in place (attention backend, cache, VAE:
`optim.measure.swappable`); a point that changes quantization, offload or compile gets a fresh worker.

Nothing measured is lost: each point's row is appended to rows.jsonl as it finishes, and `--resume` skips the
points already there. Outputs: sweep.json, sweep.csv, pareto.png, front/*.json.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from optim import compat
from optim import config as C
from optim.config import OptimConfig, RunSpec, minimal_dict, parse_optim, parse_run
from optim.data import DATA_DIR
from optim.engine import prepare
from optim.errors import Cancelled, ConfigError, OptimError
from optim.measure import Item, Setup, SideJob, swappable
from optim.metrics import image_quality
from optim.presets import load_json, make_preset, preset_to_json
from optim.prompts import PromptSet
from optim.rows import Resumed, append_row, identity_key, measurement_identity, resume_rows
from optim.timing import Plan, Turns, paired_speedup, run_time, take_turns

MAX_SPACE_BYTES = 64 * 1024
SWEEPS_DIR = DATA_DIR / "sweeps"
# A point's timed runs: at least one pair per item, then "auto" until the interval is this narrow or the
# point's time budget is spent.
POINT_TARGET = 0.05
POINT_BUDGET_S = 20.0
QUALITY_METRICS = ("psnr_mean", "psnr_worst", "ssim_mean", "ssim_worst", "ms_ssim_mean", "ms_ssim_worst",
                   "lpips_mean", "lpips_worst", "adherence", "adherence_worst")
# LPIPS is a distance: lower is closer, its worst case the largest, and its floors are ceilings (lpips<=0.1).
LOWER_IS_BETTER = frozenset({"lpips_mean", "lpips_worst"})
# A floor's short name means the worst case over the prompt set (what a tuned preset must guarantee).
FLOOR_NAMES = {"psnr": "psnr_worst", "ssim": "ssim_worst", "ms_ssim": "ms_ssim_worst", "lpips": "lpips_worst",
               "adherence": "adherence_worst"}
IDENTICAL_PSNR = 99.0  # stands for "identical" (infinite PSNR) in means, floors and charts


def floor_scope(metric: str) -> str:
    """What a floor on `metric` holds, in words (the tuned preset and the reports say it)."""
    if metric == "adherence":
        return "share of the prompts still drawn"
    if metric == "adherence_worst":
        return "every prompt still drawn"
    return "mean over the prompts" if metric.endswith("_mean") else "worst prompt"


@dataclass(frozen=True)
class Point:
    """One configuration of a sweep."""

    id: str
    label: str
    optim: OptimConfig


@dataclass
class Space:
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, dict[str, Any]] = field(default_factory=dict)  # the tuner's continuous ranges
    stack: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # the stack tuner's parts (tune_stack)


# ------------------------------------------------------------------------------------------------ space


def _settable_paths() -> dict[str, tuple[type, str]]:
    """Every settings field a space may vary, by path: 'cache.threshold' (the field of whichever variant the
    point picks), 'attention.backend', 'compile.mode' ..."""
    paths: dict[str, tuple[type, str]] = {}
    for section, cls in C.SECTIONS.items():
        for name in cls.model_fields:
            paths[f"{section}.{name}"] = (cls, name)
    for section, (_tag, classes) in C.UNIONS.items():
        for cls in classes.values():
            for name in cls.model_fields:
                paths.setdefault(f"{section}.{name}", (cls, name))
    return paths


SETTABLE = _settable_paths()


def load_space(text: str | bytes, *, where: str = "space") -> Space:
    """A space from JSON text, checked: known keys, known field paths, non-empty value lists."""
    data = load_json(text, where=where, max_bytes=MAX_SPACE_BYTES)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object with 'grid' and/or 'points'")
    unknown = set(data) - {"name", "base", "grid", "points", "run", "ranges", "stack", "description"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, base, grid, points, "
                          "ranges, stack, run, description")
    space = Space(name=str(data.get("name") or "sweep"), base=data.get("base") or {}, grid=data.get("grid") or {},
                  points=data.get("points") or [], run=data.get("run") or {}, ranges=data.get("ranges") or {},
                  stack=data.get("stack") or {})
    if space.stack:
        check_stack(space.stack, where=f"{where}.stack")
    for key, value in (("base", space.base), ("grid", space.grid), ("run", space.run), ("ranges", space.ranges)):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}: expected a JSON object")
    if not isinstance(space.points, list) or not all(isinstance(p, dict) for p in space.points):
        raise ConfigError(f"{where}.points: expected a list of settings objects")
    for path, values in space.grid.items():
        _check_path(path, where=f"{where}.grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.grid.{path}: give a non-empty list of values (got {json.dumps(values)[:60]})")
    for path, bounds in space.ranges.items():
        _check_path(path, where=f"{where}.ranges")
        if not (isinstance(bounds, dict) and {"low", "high"} <= set(bounds) and bounds["low"] < bounds["high"]):
            raise ConfigError(f"{where}.ranges.{path}: give {{\"low\": L, \"high\": H}} with L < H")
    if not space.grid and not space.points and not space.ranges and not space.stack:
        raise ConfigError(f"{where}: nothing to vary: give 'grid' (field paths -> lists of values), 'points', "
                          "'ranges' or 'stack'")
    parse_run(space.run, where=f"{where}.run")
    return space


def check_stack(stack: Any, *, where: str) -> None:
    """A space's `stack`, checked: parts -> non-empty option lists, each with settings that parse and ranges over
    known fields."""
    if not isinstance(stack, dict) or not stack:
        raise ConfigError(f"{where}: expected an object of parts (e.g. cache, compile) -> lists of options")
    for part, options in stack.items():
        if not isinstance(options, list) or not options:
            raise ConfigError(f"{where}.{part}: give a non-empty list of options")
        for index, option in enumerate(options):
            here = f"{where}.{part}[{index}]"
            if not isinstance(option, dict) or set(option) - {"settings", "ranges"} or "settings" not in option:
                raise ConfigError(f"{here}: an option is {{\"settings\": {{...}}, \"ranges\": {{...}}}} (ranges "
                                  "optional)")
            settings = option["settings"]
            for path, bounds in (option.get("ranges") or {}).items():
                if path not in SETTABLE:
                    raise ConfigError(f"{here}.ranges: unknown field path {path!r}")
                if not (isinstance(bounds, dict) and {"low", "high"} <= set(bounds) and bounds["low"] < bounds["high"]):
                    raise ConfigError(f"{here}.ranges.{path}: give {{\"low\": L, \"high\": H}} with L < H")
                settings = set_path(settings, path, bounds["low"])
            parse_optim(settings, where=here)


def shipped_spaces() -> list[str]:
    return sorted(path.stem for path in SWEEPS_DIR.glob("*.json"))


def load_space_file(name_or_path: str) -> Space:
    """A shipped space by name (optim/data/sweeps/), or a JSON file by path."""
    if name_or_path in shipped_spaces():
        path = SWEEPS_DIR / f"{name_or_path}.json"
    else:
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            raise ConfigError(f"unknown space {name_or_path!r}: give a shipped one ({', '.join(shipped_spaces())}) "
                              "or the path of a .json space file")
    return load_space(path.read_bytes(), where=f"space {path.name}")


def _check_path(path: str, *, where: str) -> None:
    if path not in SETTABLE:
        import difflib

        hint = difflib.get_close_matches(path, list(SETTABLE), n=1)
        raise ConfigError(f"{where}: unknown field {path!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + "; give a settings path such as cache.threshold, attention.backend, compile.mode")


def set_path(settings: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `settings` with `path` ('cache.threshold') set to `value`."""
    out = json.loads(json.dumps(settings))
    section, name = path.split(".", 1)
    out.setdefault(section, {})[name] = value
    return out


def point_of(settings: dict[str, Any], *, where: str, varied: tuple[str, ...] = ()) -> Point:
    """A point from its settings; `varied`: the field paths the space varies, named in its label even at their
    default value (a grid over thresholds must not label one of them just "mag_cache")."""
    optim = parse_optim(settings, where=where)
    return Point(id=point_id(optim), label=label_of(optim, varied), optim=optim)


def point_id(optim: OptimConfig) -> str:
    return hashlib.sha256(json.dumps(minimal_dict(optim), sort_keys=True).encode()).hexdigest()[:12]


def label_of(optim: OptimConfig, varied: tuple[str, ...] = ()) -> str:
    """A short readable name: 'first_block_cache threshold=0.1', 'compile regional' ..., with every field in
    `varied` ('cache.threshold') shown even when it has its default value."""
    parts = []
    settings = minimal_dict(optim)
    full = optim.model_dump(mode="json")
    for path in varied:
        section, name = path.split(".", 1)
        chosen = full.get(section)
        if isinstance(chosen, dict) and chosen.get(name) is not None:
            shown = settings.setdefault(section, {k: chosen[k] for k in ("method", "backend") if k in chosen})
            shown.setdefault(name, chosen[name])
    for section, values in settings.items():
        details = " ".join(f"{k}={v}" for k, v in values.items() if k not in ("method", "backend"))
        head = values.get("method") or values.get("backend") or section
        parts.append(f"{head} {details}".strip() if head != section else f"{section} {details}".strip())
    return ", ".join(parts) or "baseline"


def expand(space: Space) -> list[Point]:
    """The space's points: the grid's product over `base`, then the explicit points; duplicates dropped."""
    points: list[Point] = []
    paths = list(space.grid)
    for index, values in enumerate(itertools.product(*(space.grid[p] for p in paths))):
        settings = space.base
        for path, value in zip(paths, values):
            settings = set_path(settings, path, value)
        points.append(point_of(settings, where=f"space point {index + 1} ({', '.join(map(str, values))})",
                               varied=tuple(paths)))
    for index, settings in enumerate(space.points):
        merged = json.loads(json.dumps(space.base))
        for section, values in settings.items():
            merged[section] = {**merged.get(section, {}), **values} if isinstance(values, dict) else values
        given = tuple(f"{section}.{name}" for section, values in settings.items() if isinstance(values, dict)
                      for name in values if name not in ("method", "backend"))
        points.append(point_of(merged, where=f"space.points[{index}]", varied=given))
    unique = {point.id: point for point in points}
    return list(unique.values())


# ------------------------------------------------------------------------------------------------ floors


@dataclass(frozen=True)
class Floor:
    """A quality floor over the prompt set's worst case: 'ssim>=0.98' -> ssim_worst >= 0.98; LPIPS, a distance,
    takes a ceiling: 'lpips<=0.1' -> lpips_worst <= 0.1."""

    metric: str
    value: float

    @property
    def op(self) -> str:
        return "<=" if self.metric in LOWER_IS_BETTER else ">="

    def violation(self, row: dict[str, Any]) -> float:
        """How far the row is on the wrong side of the floor (<= 0: met); a missing figure fails it."""
        value = row.get(self.metric)
        if value is None:
            return 1e9
        return value - self.value if self.op == "<=" else self.value - value

    def met(self, row: dict[str, Any]) -> bool:
        return self.violation(row) <= 0

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_floor(text: str) -> Floor:
    compact = text.replace(" ", "")
    op = "<=" if "<=" in compact else ">="
    name, sep, value = compact.partition(op)
    if not sep:
        raise ConfigError(f"quality floor {text!r}: write it as METRIC>=VALUE, e.g. ssim>=0.98 or psnr>=35 "
                          "(LPIPS, lower is closer: lpips<=0.1)")
    metric = FLOOR_NAMES.get(name, name)
    if metric not in QUALITY_METRICS:
        raise ConfigError(f"quality floor {text!r}: unknown metric {name!r}; use one of "
                          f"{', '.join(sorted(set(FLOOR_NAMES) | set(QUALITY_METRICS)))}")
    wanted = "<=" if metric in LOWER_IS_BETTER else ">="
    if op != wanted:
        kind = "a distance (lower is closer)" if wanted == "<=" else "higher when closer"
        raise ConfigError(f"quality floor {text!r}: {name} is {kind}; write {name}{wanted}{value}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"quality floor {text!r}: {value!r} is not a number") from None
    return Floor(metric, number)


# ---------------------------------------------------------------------------------------------- evaluator


def _adherence(model: str) -> Callable[[str, Any], bool] | None:
    """For the embedded model: does an image still draw its prompt (colours and shape; the model's own judge)."""
    if model != "embedded":
        return None
    from embedded.dataset import judge_image

    def ok(prompt: str, image: Any) -> bool:
        judged = judge_image(prompt, image)
        return bool(judged.get("background_ok") and judged.get("shape_ok"))

    return ok


class Evaluator:
    """Measures points against one baseline over a prompt set, keeping workers loaded between points.

    `evaluate(point)` returns the point's row (a plain dict). `close()` ends every worker."""

    def __init__(self, run_spec: RunSpec, prompts: PromptSet, seeds: list[int], *,
                 progress: Callable[[str, int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, point_budget_s: float = POINT_BUDGET_S,
                 target: float = POINT_TARGET) -> None:
        self.ref, self.run = prepare(run_spec, OptimConfig())
        self.model = compat.describe_model(self.ref)
        self.items = [Item(prompt, seed) for seed in seeds for prompt in prompts.prompts]
        # What every row is measured for besides its settings (optim.rows): what --resume checks.
        self.identity = measurement_identity(self.ref, self.run, list(prompts.prompts), list(seeds),
                                             device_label(self.run.device))
        self.identity_key = identity_key(self.identity)
        self.progress = progress
        self.should_stop = should_stop
        # A point never takes more timed runs than a comparison with the same run settings would.
        self.point_budget_s = min(point_budget_s, self.run.time_budget_s)
        self.target = target
        self.pipeline_s = 0.0  # time spent inside pipeline calls (the cost benchmark's denominator)
        self._baseline = None
        self._baseline_images: list[Any] = []
        self._baseline_work: list[list[float]] = []
        self._baseline_setup: Setup | None = None
        self._worker = None
        self._worker_optim: OptimConfig | None = None
        self._adherent = _adherence(self.run.model)

    def _open(self, side: str, optim: OptimConfig) -> Any:
        job = SideJob(side, self.ref, self.run, optim, items=tuple(self.items))
        report = (lambda phase, done, total: self.progress(f"{side}: {phase}", done, total)) if self.progress else None
        # Always a process per side: both stay loaded and take turns, so one's process-wide settings (the
        # attention dispatcher, dynamo) must not reach the other.
        from optim.worker import RemoteSide

        return RemoteSide(job, report, self.should_stop)

    def _ensure_baseline(self) -> None:
        if self._baseline is not None:
            return
        self._baseline = self._open("baseline", OptimConfig())
        self._baseline_setup = self._baseline.prepare()
        probes = self._baseline.probes
        self._baseline_images = [probe.image for probe in probes]
        self._baseline_work = [probe.step_work for probe in probes]
        self.pipeline_s += sum(probe.latency_s for probe in probes) + sum(self._baseline_setup.warmup_s[1:])
        self._baseline_adherence = ([self._adherent(item.prompt, image)
                                     for item, image in zip(self.items, self._baseline_images)]
                                    if self._adherent else None)

    def _worker_for(self, optim: OptimConfig) -> tuple[Any, Setup, bool]:
        """A worker configured as `optim`: the current one changed in place when possible, else a fresh one."""
        if self._worker is not None and swappable(self._worker_optim, optim):
            setup = self._worker.reconfigure(optim)
            reused = True
        else:
            if self._worker is not None:
                self._worker.close()
                self._worker = None
            self._worker = self._open("optimized", optim)
            setup = self._worker.prepare()
            reused = False
        self._worker_optim = optim
        return self._worker, setup, reused

    def evaluate(self, point: Point) -> dict[str, Any]:
        started = time.perf_counter()
        row: dict[str, Any] = {"id": point.id, "label": point.label, "settings": minimal_dict(point.optim),
                               "identity": self.identity_key, "measured_for": self.identity}
        try:
            compat.check(point.optim, self.run, self.model)
        except OptimError as error:
            return {**row, "status": "refused", "reason": str(error)}
        self._ensure_baseline()  # a baseline that fails is the sweep's failure, not this point's
        try:
            worker, setup, reused = self._worker_for(point.optim)
            probes = worker.probes
            self.pipeline_s += sum(probe.latency_s for probe in probes) + sum(setup.warmup_s[1:])
            turns = self._time(worker)
            images = worker.images()
        except Cancelled:
            raise
        except OptimError as error:
            if self._worker is not None:
                self._worker.close()
                self._worker, self._worker_optim = None, None
            return {**row, "status": "failed", "reason": str(error)}
        row.update(self._row(point, setup, probes, images, turns, reused))
        row["elapsed_s"] = time.perf_counter() - started
        return row

    def _time(self, worker: Any) -> Turns:
        """The point's runs in turns with the baseline, under the one timing protocol (`optim.timing`): balanced
        blocks, one prompt per block in turn, at least one block per prompt, then until the interval is within
        the target or the point's budget is spent."""
        plan = Plan.for_sweep(len(self.items), target_precision=self.target, time_budget_s=self.point_budget_s)
        turns = take_turns(self._baseline, worker, plan, device=self.run.device,
                           label=lambda pair: f"timed run {pair + 1}")
        self.pipeline_s += turns.timed_s
        return turns

    def _row(self, point: Point, setup: Setup, probes: list[Any], images: list[Any], turns: Turns,
             reused: bool) -> dict[str, Any]:
        interval, estimator = paired_speedup(turns.baseline, turns.optimized, self.run.device)
        optimized_walls = [t.latency_s for t in turns.optimized]  # the cold compile is wall time
        per_item = []
        for index, (item, image) in enumerate(zip(self.items, images)):
            quality = image_quality(self._baseline_images[index], image)
            base_work = sum(self._baseline_work[index]) or 1.0
            entry = {"prompt": item.prompt, "seed": item.seed, "psnr_db": quality["psnr_db"], "ssim": quality["ssim"],
                     "ms_ssim": quality["ms_ssim"], "lpips": quality["lpips"], "max_abs_diff": quality["max_abs_diff"],
                     "work_fraction": sum(probes[index].step_work) / base_work}
            if self._adherent:
                entry["adherent"] = self._adherent(item.prompt, image)
                entry["baseline_adherent"] = self._baseline_adherence[index]
            per_item.append(entry)
        psnr = [IDENTICAL_PSNR if e["psnr_db"] is None else min(e["psnr_db"], IDENTICAL_PSNR) for e in per_item]
        ssim = [e["ssim"] for e in per_item]
        ms = [e["ms_ssim"] for e in per_item]
        distances = [e["lpips"] for e in per_item]
        has_lpips = all(d is not None for d in distances)
        compiled = "compiled_graphs" in setup.details
        return {
            "status": "ok",
            "speedup": interval.estimate,
            "speedup_low": interval.low,
            "speedup_high": interval.high,
            "verdict": interval.verdict,
            "pairs": interval.runs,
            "estimator": estimator,
            "sequence": turns.sequence,
            # A generation's time on each side (median of the timed runs, under the estimator): what a compiled
            # point's cold compile is repaid from (`optim.tune_stack.compile_cost`).
            "baseline_s": statistics.median(run_time(t, estimator) for t in turns.baseline),
            "time_s": statistics.median(run_time(t, estimator) for t in turns.optimized),
            "work_fraction": statistics.fmean(e["work_fraction"] for e in per_item),
            "peak_memory_mb": max(t.peak_memory_mb for t in turns.optimized),
            "baseline_peak_memory_mb": (self._baseline_setup.setup_peak_mb if self._baseline_setup else None),
            "psnr_mean": statistics.fmean(psnr),
            "psnr_worst": min(psnr),
            "ssim_mean": statistics.fmean(ssim),
            "ssim_worst": min(ssim),
            "ms_ssim_mean": statistics.fmean(ms),
            "ms_ssim_worst": min(ms),
            "lpips_mean": statistics.fmean(distances) if has_lpips else None,
            "lpips_worst": max(distances) if has_lpips else None,
            "adherence": (statistics.fmean(e["adherent"] for e in per_item) if self._adherent else None),
            # Every prompt still drawn (1.0) or not (0.0): what a floor "adherence>=1" guarantees per prompt.
            "adherence_worst": (float(min(e["adherent"] for e in per_item)) if self._adherent else None),
            "compile_s": (max(0.0, setup.warmup_s[1] - statistics.median(optimized_walls)) if compiled else None),
            "worker_reused": reused,
            "applied": setup.applied,
            "items": per_item,
        }

    def close(self) -> None:
        for handle in (self._worker, self._baseline):
            if handle is not None:
                handle.close()
        self._worker = self._baseline = None


# ------------------------------------------------------------------------------------------------- sweep


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    files: list[str]
    pipeline_s: float
    elapsed_s: float
    resumed: int = 0
    resume_note: str | None = None  # what --resume reused and why it measured the rest again


ROW_FIELDS = ["id", "label", "status", "speedup", "speedup_low", "speedup_high", "verdict", "pairs", "work_fraction",
              "peak_memory_mb", "psnr_mean", "psnr_worst", "ssim_mean", "ssim_worst", "ms_ssim_mean", "ms_ssim_worst",
              "lpips_mean", "lpips_worst", "adherence", "adherence_worst", "compile_s",
              "elapsed_s", "reason"]


def pareto_front(rows: list[dict[str, Any]], quality: str = "ssim_worst") -> list[dict[str, Any]]:
    """The rows no other row beats on both speedup and `quality` (higher is better for both, lower for LPIPS),
    fastest first."""
    ok = [row for row in rows if row.get("status") == "ok" and row.get(quality) is not None]
    sign = -1.0 if quality in LOWER_IS_BETTER else 1.0
    front = []
    for row in ok:
        dominated = any(
            other is not row and other["speedup"] >= row["speedup"] and sign * other[quality] >= sign * row[quality]
            and (other["speedup"] > row["speedup"] or sign * other[quality] > sign * row[quality])
            for other in ok
        )
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: -r["speedup"])


def device_label(device: str) -> str:
    """The device rows are measured on, as their identity names it: the GPU's name, or the CPU's."""
    from optim.capabilities import detect

    info = detect().device
    return f"cuda: {info.name}" if device == "cuda" else f"cpu: {info.cpu}"


def identity_for(run_spec: RunSpec, prompts: PromptSet, seeds: list[int]) -> dict[str, Any]:
    """The identity rows of this run will have (`Evaluator.identity`), without starting anything."""
    ref, run = prepare(run_spec, OptimConfig())
    return measurement_identity(ref, run, list(prompts.prompts), list(seeds), device_label(run.device))


def start_sweep(space: Space, out: Path, *, run_spec: RunSpec | None, resume: bool, max_points: int | None,
                prompts: PromptSet, seeds: list[int], any_device: bool = False) -> tuple[list[Point], RunSpec,
                                                                                         Resumed]:
    """What every sweep does first (here and on Ray): the points within the server's limit, the run settings
    (the space's when none are given), the output folder, and, when resuming, the rows measured for exactly this
    run (`optim.rows.resume_rows`: a row measured for other run settings, prompts, seeds, model, versions or
    device, or whose Ray workers were all lost, is measured again); a fresh sweep starts an empty rows.jsonl."""
    if space.stack:
        raise ConfigError(f"space {space.name!r} is a stack for the tuner (its parts are searched, not listed): run "
                          f"python -m optim tune --space {space.name} --floor ...")
    points = expand(space)
    if max_points is not None and len(points) > max_points:
        raise ConfigError(f"the space has {len(points)} points; this server allows at most {max_points}")
    run_spec = run_spec or parse_run(space.run)
    identity = identity_for(run_spec, prompts, seeds) if resume else {}
    return points, run_spec, resume_rows(out, identity, resume=resume, any_device=any_device)


def run_sweep(space: Space, prompts: PromptSet, out: Path, *, run_spec: RunSpec | None = None,
              seeds: list[int] | None = None, resume: bool = False, quality: str = "ssim_worst",
              progress: Callable[[str, int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, max_points: int | None = None,
              max_seconds: float | None = None, point_budget_s: float = POINT_BUDGET_S) -> SweepResult:
    """Evaluate every point of `space` (see the module docstring) and write the artefacts into `out`."""
    started = time.perf_counter()
    seeds = seeds or [0]
    points, run_spec, resumed = start_sweep(space, out, run_spec=run_spec, resume=resume, max_points=max_points,
                                            prompts=prompts, seeds=seeds)
    done = resumed.rows
    if resume and progress is not None:
        progress(resumed.note, 0, len(points))
    evaluator = Evaluator(run_spec, prompts, seeds, progress=None,
                          should_stop=should_stop, point_budget_s=point_budget_s)
    rows = [done[p.id] for p in points if p.id in done]
    try:
        todo = [p for p in points if p.id not in done]
        for point in todo:
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
            if progress is not None:
                progress(f"point {len(rows) + 1}/{len(points)}: {point.label}", len(rows), len(points))
            row = evaluator.evaluate(point)
            rows.append(row)
            append_row(out, row)
    finally:
        evaluator.close()
    order = {p.id: i for i, p in enumerate(points)}
    rows.sort(key=lambda r: order.get(r["id"], len(order)))
    front = pareto_front(rows, quality)
    files = write_sweep(out, space, prompts, evaluator.run, rows, front, quality)
    return SweepResult(rows, front, files, evaluator.pipeline_s, time.perf_counter() - started, resumed=len(done),
                       resume_note=resumed.note if resume else None)


def write_sweep(out: Path, space: Space, prompts: PromptSet, run: Any, rows: list[dict[str, Any]],
                front: list[dict[str, Any]], quality: str) -> list[str]:
    """sweep.json, sweep.csv, pareto.png and front/*.json (each front point as a preset)."""
    from optim.charts import pareto_chart

    summary = {"space": asdict(space), "prompts": {"name": prompts.name, "prompts": list(prompts.prompts)},
               "run": run.to_dict(), "quality_metric": quality, "rows": rows, "front": [r["id"] for r in front]}
    (out / "sweep.json").write_text(json.dumps(_finite(summary), indent=2) + "\n")
    with open(out / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    pareto_chart(rows, front, quality, title=f"{space.name}: speed against {quality} ({prompts.name} prompts)")\
        .savefig(out / "pareto.png")
    folder = out / "front"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    files = ["sweep.json", "sweep.csv", "pareto.png", "rows.jsonl"]
    for rank, row in enumerate(front, start=1):
        preset = front_preset(space, row, rank, quality)
        (folder / f"{preset.name}.json").write_text(preset_to_json(preset))
        files.append(f"front/{preset.name}.json")
    return files


def front_preset(space: Space, row: dict[str, Any], rank: int, quality: str) -> Any:
    import re

    from optim.presets import NAME_PATTERN

    name = re.sub(r"[^a-z0-9._-]+", "-", f"{space.name}-{rank}-{row['label']}".lower()).strip("-._")[:64]
    if not re.match(NAME_PATTERN, name):
        name = f"sweep-{row['id']}"
    low, high = row.get("speedup_low"), row.get("speedup_high")
    interval = f" (95% CI {low:.2f}-{high:.2f}x)" if low and high else ""
    description = (f"From sweep '{space.name}': {row['speedup']:.2f}x{interval}, {quality} "
                   f"{row.get(quality):.4f}, work {row['work_fraction']:.0%}.")[:500]
    return make_preset(name, parse_optim(row["settings"]), description=description)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
