"""Both cache libraries on one front, and the stack tuner's answer, confirmed side by side.

    python benchmarks/cache_libraries.py --out benchmarks/records/DATE-cache-libraries [--budget 20m]

1. The `cache-libraries` sweep (every diffusers cache and cache-dit configuration) on the embedded model at its
   defaults over the `embedded` prompt set: the Pareto front.
2. `tune --space tune-stack` with the floors of the goal: mean PSNR >= 40 dB and worst prompt >= 35 dB.
3. A fresh run, one baseline for all: the tuner's stack, the fastest diffusers-only cache and the fastest
   cache-dit-only configuration meeting the same floors (from steps 1 and 2), measured side by side.
   Goal: the stack at least 2.0x over the baseline at those floors.
4. The `cache-libraries` points on each tiny family cache-dit has an adapter for (random weights: the work skipped
   and the speedups are real, the quality figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from optim.logs import quiet_libraries

quiet_libraries()

from optim import families as F  # noqa: E402
from optim.config import CACHE_DIT_METHODS, parse_run  # noqa: E402
from optim.prompts import load_prompt_set  # noqa: E402
from optim.sweep import IDENTICAL_PSNR, Space, load_space_file, parse_floor, run_sweep  # noqa: E402
from optim.tune import parse_budget, tune  # noqa: E402

FLOORS = ["psnr_mean>=40", "psnr>=35"]
GOAL = 2.0


def _progress(text: str, done: int, total: int) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "label", "status", "speedup", "speedup_low", "speedup_high", "verdict", "psnr_mean", "psnr_worst",
            "ssim_worst", "ms_ssim_worst", "work_fraction", "compile_s", "reason", "settings")
    return {key: row.get(key) for key in keys if key in row}


def _library(row: dict[str, Any]) -> str | None:
    """'diffusers' or 'cache-dit' for a row that is a cache alone; None for stacks and other settings."""
    settings = row.get("settings") or {}
    if set(settings) != {"cache"}:
        return None
    return "cache-dit" if settings["cache"].get("method") in CACHE_DIT_METHODS else "diffusers"


def fastest(rows: list[dict[str, Any]], floors: list[Any], library: str) -> dict[str, Any] | None:
    ok = [row for row in rows if row.get("status") == "ok" and _library(row) == library
          and all(floor.met(row) for floor in floors)]
    return max(ok, key=lambda row: row["speedup"]) if ok else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="record path without suffix (.md and .json written)")
    parser.add_argument("--budget", default="20m", help="the stack tuner's budget")
    parser.add_argument("--prompts", default="embedded")
    parser.add_argument("--family-steps", type=int, default=8)
    parser.add_argument("--families", default="all", help="comma-separated family keys, or all")
    parser.add_argument("--steps", type=int, default=None, help="embedded model steps (default: its own, 20)")
    args = parser.parse_args()
    floors = [parse_floor(text) for text in FLOORS]
    prompts = load_prompt_set(args.prompts)
    record: dict[str, Any] = {"command": "PYTHONPATH=. python " + " ".join(sys.argv),
                              "date": date.today().isoformat(), "floors": [str(f) for f in floors], "goal": GOAL,
                              "prompts": args.prompts, "prompt_count": len(prompts.prompts)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        print("1. cache-libraries sweep on the embedded model", flush=True)
        embedded = parse_run({"steps": args.steps} if args.steps else {})
        sweep = run_sweep(load_space_file("cache-libraries"), prompts, work / "sweep", quality="psnr_mean",
                          progress=_progress, run_spec=embedded)
        record["sweep"] = {"rows": [_brief(r) for r in sweep.rows], "front": [r["id"] for r in sweep.front],
                           "elapsed_s": sweep.elapsed_s}
        print("2. tune-stack", flush=True)
        tuned = tune(load_space_file("tune-stack"), prompts, floors, work / "tune",
                     budget_s=parse_budget(args.budget), progress=_progress, run_spec=embedded)
        record["tune"] = {"strategy": tuned.strategy, "evaluations": tuned.evaluations, "elapsed_s": tuned.elapsed_s,
                          "best": _brief(tuned.best) if tuned.best else None, "stack": tuned.stack}
        candidates = sweep.rows + tuned.rows
        chosen = {"stack": tuned.best, "diffusers": fastest(candidates, floors, "diffusers"),
                  "cache-dit": fastest(candidates, floors, "cache-dit")}
        record["chosen"] = {name: _brief(row) if row else None for name, row in chosen.items()}
        points = [row["settings"] for row in chosen.values() if row is not None]
        print(f"3. confirmation: {len(points)} configurations side by side, one baseline", flush=True)
        confirm = run_sweep(Space(name="confirm", points=points), prompts, work / "confirm", quality="psnr_mean",
                            progress=_progress, point_budget_s=40.0, run_spec=embedded)
        by_settings = {json.dumps(row["settings"], sort_keys=True): row for row in confirm.rows}
        record["confirmed"] = {}
        for name, row in chosen.items():
            if row is not None:
                again = by_settings.get(json.dumps(row["settings"], sort_keys=True))
                record["confirmed"][name] = _brief(again) if again else None
        stack = record["confirmed"].get("stack")
        record["goal_met"] = bool(stack and stack.get("status") == "ok" and stack["speedup"] >= GOAL
                                  and all(floor.met(stack) for floor in floors))
        print("4. tiny families with a cache-dit adapter", flush=True)
        record["families"] = {}
        for key, fam in F.FAMILIES.items():
            if not fam.cache_dit_adapter or (args.families != "all" and key not in args.families.split(",")):
                continue
            run = {"model": f"tiny:{key}", "steps": args.family_steps, "width": 64, "height": 64}
            if fam.video:
                run.update(num_frames=9, width=32, height=32)
            result = run_sweep(load_space_file("cache-libraries"), load_prompt_set("quick"), work / key,
                               run_spec=parse_run(run), quality="psnr_mean", progress=None, point_budget_s=6.0)
            record["families"][key] = {"run": run, "rows": [_brief(r) for r in result.rows],
                                       "front": [r["id"] for r in result.front]}
            print(f"  {key}: {len(result.rows)} points", flush=True)
    record["elapsed_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(record))
    print(f"wrote {args.out}.md and .json ({record['elapsed_s'] / 60:.0f} min)")
    return 0


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "none meets the floors"
    if row.get("status") != "ok":
        return f"{row.get('status')}: {str(row.get('reason', ''))[:60]}"
    def db(value: float) -> str:
        return "identical" if value >= IDENTICAL_PSNR else f"{value:.1f} dB"

    return (f"{row['speedup']:.2f}x ({row['speedup_low']:.2f}-{row['speedup_high']:.2f}), "
            f"{db(row['psnr_mean'])} / {db(row['psnr_worst'])}, work {row['work_fraction']:.0%}")


def markdown(record: dict[str, Any]) -> str:
    lines = [f"# Both cache libraries, and the stack tuner ({record['date']})", "",
             f"Command: `{record['command']}`", "",
             f"Embedded model at its defaults, the `{record['prompts']}` prompt set ({record['prompt_count']} "
             f"prompts), floors {', '.join(record['floors'])} (PSNR mean over the prompts / worst prompt).", "",
             "## Confirmed side by side (one run, one baseline)", "",
             "| configuration | label | speedup (95% CI), PSNR mean / worst, work computed |", "|---|---|---|"]
    for name in ("stack", "diffusers", "cache-dit"):
        chosen = record["chosen"].get(name)
        lines.append(f"| {name} | {chosen['label'] if chosen else '-'} | "
                     f"{_cell(record['confirmed'].get(name)) if chosen else 'none meets the floors'} |")
    verdict = "met" if record["goal_met"] else "NOT met"
    lines += ["", f"Goal (the stack at least {record['goal']:.1f}x at the floors, confirmed): **{verdict}**.", ""]
    stack = (record["tune"] or {}).get("stack") or {}
    if stack.get("contributions"):
        lines += ["## The stack's parts (the winner with each removed)", ""]
        for entry in stack["contributions"]:
            share = "not measured" if entry.get("share") is None else (
                f"x{entry['share']:.2f} (without it {entry['without_speedup']:.2f}x)")
            lines.append(f"* {entry['part']}: {entry['option']}: {share}")
        if stack.get("alone_product"):
            lines.append(f"* the parts alone multiply to {stack['alone_product']:.2f}x; together "
                         f"{stack['winner']['speedup']:.2f}x")
        together = stack.get("bests_together")
        if together and together.get("speedup"):
            lines.append(f"* each part's best alone, together ({together['label']}): {together['speedup']:.2f}x "
                         f"against {together['alone_product']:.2f}x if they multiplied"
                         + ("" if together["meets_floors"] else ", below the floors"))
        if stack.get("compile"):
            cost = stack["compile"]
            lines.append(f"* compile: {cost['compile_s']:.1f} s once, outside the speedup; repaid after "
                         f"{cost['generations_to_repay']} generations")
        lines.append("")
    tune_info = record["tune"]
    lines += [f"Tuner: {tune_info['evaluations']} evaluations in {tune_info['elapsed_s'] / 60:.0f} min "
              f"({tune_info['strategy']}).", "", "## The cache-libraries front on the embedded model", "",
              "| point | on the front | speedup (95% CI), PSNR mean / worst, work computed |", "|---|---|---|"]
    front = set(record["sweep"]["front"])
    for row in sorted(record["sweep"]["rows"], key=lambda r: -(r.get("speedup") or 0)):
        lines.append(f"| {row['label']} | {'yes' if row['id'] in front else ''} | {_cell(row)} |")
    lines += ["", "## Tiny families (random weights: speed and work are real, quality means nothing)", ""]
    for key, family in record["families"].items():
        lines += [f"### {key} ({family['run']})", "", "| point | speedup (95% CI), work computed |", "|---|---|"]
        for row in family["rows"]:
            cell = (f"{row['speedup']:.2f}x ({row['speedup_low']:.2f}-{row['speedup_high']:.2f}), work "
                    f"{row['work_fraction']:.0%}" if row.get("status") == "ok"
                    else f"{row.get('status')}: {str(row.get('reason', ''))[:90]}")
            lines.append(f"| {row['label']} | {cell} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
