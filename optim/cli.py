"""The command line: `python -m optim compare | presets | capabilities | schema`.

Bad input (an unknown preset, a bad field, an unknown model, an unavailable option) exits with status 2 and one
line on stderr naming the problem; a run that fails exits with status 1 and one line. Never a traceback.

    python -m optim compare --preset first-block-cache --out out/fbc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from optim.errors import ConfigError, OptimError
from optim.logs import progress_printer
from optim.plan.cards import CARDS

COMMANDS = ("compare", "sweep", "tune", "presets", "capabilities", "schema", "report-schema", "reference")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, no usage dump
        # argparse reports a subcommand's unknown options from the top-level parser: name the subcommand then.
        command = next((a for a in sys.argv[1:] if a in COMMANDS), None) if self.prog == "python -m optim" else None
        where = f"python -m optim {command}" if command else self.prog
        self.exit(2, f"error: {message} (see {where} --help)\n")


def _runs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'auto'") from None


def _prompt_sets() -> list[str]:
    from optim.prompts import shipped_prompt_sets

    return shipped_prompt_sets()


CARD_NAMES = tuple(CARDS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m optim", description="Compare a diffusers pipeline with and without optimizations.")
    verbose = dict(action="store_true", help="log what the lab does on stderr: worker starts and respawns, "
                   "scheduling and retries, baseline reuse, refusals (also OPTIM_LOG_LEVEL=INFO)")
    parser.add_argument("--verbose", "-v", **verbose)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compare = commands.add_parser("compare", help="run baseline and optimized side by side and write a report")
    compare.add_argument("--preset", required=True, help="a shipped preset name or a path to a preset .json file")
    compare.add_argument("--model", help="'embedded' (default), 'embedded-video', a Hub model id, a local diffusers "
                         "folder, tiny:FAMILY or synthetic:NAME")
    compare.add_argument("--prompt")
    compare.add_argument("--negative-prompt")
    compare.add_argument("--seed", type=int)
    compare.add_argument("--steps", type=int)
    compare.add_argument("--width", type=int)
    compare.add_argument("--height", type=int)
    compare.add_argument("--guidance", type=float, dest="guidance_scale")
    compare.add_argument("--max-sequence-length", type=int)
    compare.add_argument("--num-frames", type=int, help="video models: frames per clip (default: the model's)")
    compare.add_argument("--fps", type=int, help="video models: frame rate of the written MP4 (default: the model's)")
    compare.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    compare.add_argument("--device", choices=["auto", "cpu", "cuda"])
    compare.add_argument("--warmup", type=int, dest="warmup_runs", help="warm-up runs per side (>= 1)")
    compare.add_argument("--runs", type=_runs, dest="timed_runs",
                         help="timed runs per side, taken in turns with the other side; 'auto' (default): until the "
                              "speedup is known to --target or --budget is spent")
    compare.add_argument("--target", type=float, dest="target_precision",
                         help="auto runs: stop when the speedup's 95%% interval is this narrow (default 0.05)")
    compare.add_argument("--budget", type=float, dest="time_budget_s",
                         help="auto runs: stop after this many seconds of timed runs (default 60)")
    compare.add_argument("--timing", choices=["auto", "interleaved", "sequential"],
                         help="interleaved: both sides loaded, runs in turns; sequential: one side after the other")
    compare.add_argument(
        "--isolation",
        choices=["process", "inline"],
        default="process",
        help="run each side in a fresh process (default: clean memory peaks, no leaks) or in this one",
    )
    compare.add_argument("--out", required=True, type=Path, help="directory for report.json, report.md, images, charts")
    compare.add_argument("--quiet", action="store_true", help="no progress on stderr")

    for name, text in (("sweep", "evaluate a space of configurations over a prompt set; a Pareto front"),
                       ("tune", "find the fastest configuration meeting quality floors over a prompt set")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--space", default=None if name == "sweep" else "tune-caches", required=name == "sweep",
                             help="a shipped space (" + ", ".join(_spaces()) + ") or a space .json file")
        command.add_argument("--prompts", default=None, help="a shipped prompt set (" + ", ".join(_prompt_sets())
                             + ") or a text file, one prompt per line (default: the model's)")
        command.add_argument("--seeds", default="0", help="comma-separated seeds, each used with every prompt")
        command.add_argument("--model", help="'embedded' (default), a Hub id, a local folder, tiny:..., synthetic:...")
        command.add_argument("--steps", type=int)
        command.add_argument("--width", type=int)
        command.add_argument("--height", type=int)
        command.add_argument("--device", choices=["auto", "cpu", "cuda"])
        command.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
        command.add_argument("--point-budget", type=float, default=None, dest="point_budget_s",
                             help="seconds of timed runs per point at most (default 20 for sweep, 10 for tune)")
        command.add_argument("--resume", action="store_true", help="keep the points already in OUT/rows.jsonl")
        command.add_argument("--out", required=True, type=Path, help="directory for the rows, tables, chart, presets")
        command.add_argument("--quiet", action="store_true")
        command.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                             help="evaluate on a Ray cluster: 'auto' (the default when given alone: RAY_ADDRESS, "
                                  "this machine's `ray start` cluster, or a new local one) or a head's address; "
                                  "needs the scale extra (docs/ray.md)")
        command.add_argument("--ray-workers", type=int, default=None, metavar="N",
                             help="with --ray: worker actors (default: one per GPU, or one per node on CPUs)")
        if name == "sweep":
            command.add_argument("--quality", default="ssim_worst",
                                 help="the quality axis of the front: psnr_mean, psnr_worst, ssim_mean, ssim_worst, "
                                      "adherence")
        else:
            command.add_argument("--floor", action="append", required=True,
                                 help="a worst-case quality floor, e.g. 'ssim>=0.98', 'psnr>=35' (repeatable)")
            command.add_argument("--budget", default="10m", help="time for the whole search, e.g. 600, 10m, 1h")

    presets = commands.add_parser("presets", help="list the shipped presets")
    presets.add_argument("--json", action="store_true")

    capabilities = commands.add_parser("capabilities", help="what this machine can run, and why not")
    capabilities.add_argument("--json", action="store_true")

    plan = commands.add_parser("plan", help="will it fit my GPU? every combination of weight storage, offload and "
                               "VAE tiling, predicted from the model's configs before anything runs")
    plan.add_argument("--model", required=True, help="a known Hub model (its published configs), embedded, "
                      "tiny:FAMILY, synthetic:NAME or a local diffusers folder")
    plan.add_argument("--gpu", required=True, help="a size in GB (24, 16GB) or a card: " + ", ".join(CARD_NAMES))
    for flag in ("width", "height", "steps", "frames", "max-sequence-length"):
        plan.add_argument(f"--{flag}", type=int, default=None, help="default: the model's own")
    plan.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    plan.add_argument("--attention", default="native", help="attention backend (math keeps the score matrix)")
    plan.add_argument("--top", type=int, default=12, help="how many fitting combinations to list")
    plan.add_argument("--storage", default=None, help="only this weight storage besides the run dtype, e.g. bnb_nf4, "
                      "torchao_int8, layerwise_fp8")
    plan.add_argument("--rules", default="installed", choices=["installed", "transformers-4"],
                      help="whose loaders' rules: the installed versions', or transformers 4.x's (published figures)")
    plan.add_argument("--json", action="store_true", help="everything, every term (plan.json)")

    commands.add_parser("schema", help="print the JSON Schema of a preset file")
    commands.add_parser("report-schema", help="print the JSON Schema of report.json")

    reference = commands.add_parser("reference", help="print README's option tables (written from the settings)")
    reference.add_argument("--write", type=Path, metavar="README", help="rewrite the options part of this file")
    for sub in commands.choices.values():  # `compare ... --verbose` works too (SUPPRESS: never undoes `-v compare`)
        sub.add_argument("--verbose", "-v", **{**verbose, "default": argparse.SUPPRESS})
    return parser


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Only the run settings given on the command line; the rest stay at their defaults."""
    names = [
        "model", "prompt", "negative_prompt", "seed", "steps", "width", "height", "guidance_scale",
        "max_sequence_length", "num_frames", "fps", "dtype", "device", "warmup_runs", "timed_runs",
        "target_precision", "time_budget_s", "timing",
    ]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _check_model_early(model: str) -> None:
    """An unknown model, or a Hub model that cannot be reached, is refused in seconds (before torch loads)."""
    from optim.models import hub_offline, resolve_model

    ref = resolve_model(model)
    if ref.kind == "hub":
        hub_offline(ref)


def cmd_compare(args: argparse.Namespace) -> int:
    from optim.config import parse_run
    from optim.engine import compare
    from optim.presets import load_preset
    from optim.report import runs_text, summary_table, write_report

    run = parse_run(run_settings(args))
    preset = load_preset(args.preset)
    _check_model_early(run.model)
    comparison = compare(run, preset, isolation=args.isolation, progress=progress_printer(args.quiet))
    report = write_report(comparison, args.out)
    print(f"{preset.name}: {report.run['model']}, {report.run['steps']} steps, "
          f"{report.run['width']}x{report.run['height']}, {report.environment['device_name']}")
    print(f"{report.timing.speedup.text}; timed runs: {runs_text(report)}")
    print(summary_table(report))
    notes = [report.timing.reason and f"timing {report.timing.mode}: {report.timing.reason}",
             report.timing.contention.note, *report.optimized.warnings]
    for note in filter(None, notes):
        print(f"note: {note}")
    print(f"wrote {args.out}/report.json and {len(report.files) - 1} more files")
    return 0


def _spaces() -> list[str]:
    """The shipped spaces' names, read without importing the sweep engine (and torch) for --help."""
    from optim.data import DATA_DIR

    return sorted(path.stem for path in (DATA_DIR / "sweeps").glob("*.json"))


def _sweep_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, list[int]]:
    from optim.config import parse_run
    from optim.prompts import default_prompt_set, load_prompt_set
    from optim.sweep import load_space_file

    space = load_space_file(args.space)
    settings = {**space.run, **{k: v for k, v in run_settings(args).items()}}
    run = parse_run(settings)
    prompts = load_prompt_set(args.prompts or default_prompt_set(run.model))
    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: give whole numbers separated by commas") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    return space, run, prompts, seeds


def cmd_sweep(args: argparse.Namespace) -> int:
    from optim.sweep import POINT_BUDGET_S, QUALITY_METRICS, run_sweep

    if args.quality not in QUALITY_METRICS:
        raise ConfigError(f"--quality {args.quality!r}: use one of {', '.join(QUALITY_METRICS)}")
    space, run, prompts, seeds = _sweep_inputs(args)
    if args.ray is not None:
        return sweep_on_ray(args, space, run, prompts, seeds)
    result = run_sweep(space, prompts, args.out, run_spec=run, seeds=seeds, resume=args.resume,
                       quality=args.quality, progress=progress_printer(args.quiet),
                       point_budget_s=args.point_budget_s or POINT_BUDGET_S)
    ok = [row for row in result.rows if row["status"] == "ok"]
    print(f"{space.name}: {len(result.rows)} points ({len(ok)} measured, {result.resumed} from an earlier run), "
          f"{len(prompts.prompts)} prompts x {len(seeds)} seed(s), {result.elapsed_s:.0f} s "
          f"({result.pipeline_s:.0f} s inside the pipeline)")
    if result.resume_note:
        print(f"resume: {result.resume_note}")
    width = _label_width(result.rows)
    for row in result.rows:
        mark = "*" if row["id"] in {r["id"] for r in result.front} else " "
        if row["status"] == "ok":
            print(_row_line(row, mark, args.quality, width))
        else:
            print(f"   {row['label']:{width}}  {row['status']}: {row.get('reason', '')[:100]}")
    print(f"* on the Pareto front (speedup against {args.quality}); wrote {args.out}/ "
          f"{', '.join(result.files[:3])} and {len(result.files) - 3} more")
    return 0


def _label_width(rows: list[dict[str, Any]]) -> int:
    """The label column's width: the longest label (never cut), at most 72 before the figures move right."""
    return min(72, max((len(row["label"]) for row in rows), default=10))


def _row_line(row: dict[str, Any], mark: str, quality: str, width: int) -> str:
    return (f" {mark} {row['label']:{width}}  {row['speedup']:.2f}x ({row['speedup_low']:.2f}-"
            f"{row['speedup_high']:.2f}, {row['verdict']})  work {row['work_fraction']:.0%}  {quality} "
            f"{row[quality]:.4f}")


def cmd_tune(args: argparse.Namespace) -> int:
    from optim.sweep import parse_floor
    from optim.tune import parse_budget, tune

    floors = [parse_floor(text) for text in args.floor]
    budget = parse_budget(args.budget)
    space, run, prompts, seeds = _sweep_inputs(args)
    if args.ray is not None:
        return tune_on_ray(args, space, run, prompts, seeds, floors, budget)
    result = tune(space, prompts, floors, args.out, budget_s=budget, run_spec=run, seeds=seeds, resume=args.resume,
                  progress=progress_printer(args.quiet), point_budget_s=args.point_budget_s or 10.0)
    print(f"{result.strategy}: {result.evaluations} evaluations in {result.elapsed_s:.0f} s over "
          f"{len(prompts.prompts)} prompts x {len(seeds)} seed(s)")
    if result.resume_note:
        print(f"resume: {result.resume_note}")
    if result.best is None:
        print("no evaluated configuration meets " + ", ".join(str(f) for f in floors))
        return 1
    best = result.best
    print(f"fastest meeting {', '.join(str(f) for f in floors)}: {best['label']}: {best['speedup']:.2f}x "
          f"({best['speedup_low']:.2f}-{best['speedup_high']:.2f}, {best['verdict']}), "
          + ", ".join(f"{f.metric} {best[f.metric]:.4f}" for f in floors))
    if result.stack:
        _print_stack(result.stack)
    print(f"wrote {args.out}/tuned.json (the preset) and the evidence: sweep.json, sweep.csv, pareto.png, tune.json")
    return 0


def _print_stack(stack: dict[str, Any]) -> None:
    """The stack tuner's evidence: each part's contribution (the winner without it), interference, compile cost."""
    for entry in stack.get("contributions", []):
        if entry.get("share") is None:
            print(f"  {entry['part']}: {entry['option']}: {entry.get('note', 'not measured')}")
            continue
        print(f"  {entry['part']}: {entry['option']}: x{entry['share']:.2f} (without it {entry['without_speedup']:.2f}x"
              f": {entry['without']})")
    if stack.get("alone_product"):
        winner = stack["winner"]["speedup"]
        print(f"  the parts alone multiply to {stack['alone_product']:.2f}x; together {winner:.2f}x "
              f"({'they interfere' if winner < 0.95 * stack['alone_product'] else 'no interference seen'})")
    cost = stack.get("compile")
    if cost:
        repay = (f"repaid after {cost['generations_to_repay']} generations" if cost["generations_to_repay"]
                 else "never repaid (no time saved per generation)")
        print(f"  compile: {cost['compile_s']:.1f} s once, not in the speedup; {repay}")


def _device_title(group: dict[str, Any]) -> str:
    hosts = group["hosts"]
    shown = ", ".join(hosts[:4]) + (f" and {len(hosts) - 4} more" if len(hosts) > 4 else "")
    return f"{group['device_name']} ({group['device'] or '?'}; {shown or 'no host recorded'})"


def sweep_on_ray(args: argparse.Namespace, space: Any, run: Any, prompts: Any, seeds: list[int]) -> int:
    """`python -m optim sweep ... --ray [ADDRESS]`: the local summary, grouped by device."""
    from optim.distributed import require_ray, run_sweep_ray
    from optim.sweep import POINT_BUDGET_S

    require_ray()
    result = run_sweep_ray(space, prompts, args.out, address=args.ray, workers=args.ray_workers, run_spec=run,
                           seeds=seeds, resume=args.resume, quality=args.quality, progress=progress_printer(args.quiet),
                           point_budget_s=args.point_budget_s or POINT_BUDGET_S)
    ok = [row for row in result.rows if row["status"] == "ok"]
    workers = result.ray.get("workers", [])
    print(f"{space.name}: {len(result.rows)} points ({len(ok)} measured, {result.resumed} from an earlier run), "
          f"{len(prompts.prompts)} prompts x {len(seeds)} seed(s), {result.elapsed_s:.0f} s "
          f"({result.pipeline_s:.0f} s inside the pipeline) on Ray: {len(workers)} worker(s), "
          f"{result.ray.get('nodes', '?')} node(s)")
    if result.resume_note:
        print(f"resume: {result.resume_note}")
    by_id = {row["id"]: row for row in result.rows}
    width = _label_width(result.rows)
    for group in result.devices:
        print(f"on {_device_title(group)}:")
        front = set(group["front"])
        for row in (by_id[i] for i in group["rows"]):
            mark = "*" if row["id"] in front else " "
            if row["status"] == "ok":
                print(_row_line(row, mark, args.quality, width))
            else:
                print(f"   {row['label']:{width}}  {row['status']}: {row.get('reason', '')[:100]}")
    if len(result.devices) > 1:
        print(f"note: {len(result.devices)} devices: a speedup holds for the device it was measured on")
    print(f"* on its device's Pareto front (speedup against {args.quality}); wrote {args.out}/ "
          f"{', '.join(result.files[:3])} and {len(result.files) - 3} more")
    return 0


def tune_on_ray(args: argparse.Namespace, space: Any, run: Any, prompts: Any, seeds: list[int], floors: list[Any],
                budget: float) -> int:
    """`python -m optim tune ... --ray [ADDRESS]`."""
    from optim.distributed import require_ray, tune_ray

    require_ray()
    result = tune_ray(space, prompts, floors, args.out, budget_s=budget, address=args.ray, workers=args.ray_workers,
                      run_spec=run, seeds=seeds, resume=args.resume, progress=progress_printer(args.quiet),
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


def cmd_presets(args: argparse.Namespace) -> int:
    from optim.config import minimal_dict
    from optim.presets import preset_to_dict, shipped_presets

    presets = shipped_presets()
    if args.json:
        print(json.dumps([preset_to_dict(p) for p in presets.values()], indent=2))
        return 0
    width = max(len(name) for name in presets)
    for name, preset in presets.items():
        settings = json.dumps(minimal_dict(preset.optim), sort_keys=True)
        print(f"{name.ljust(width)}  [{preset.hardware}]  {preset.description}")
        print(f"{''.ljust(width)}  {settings}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from optim.plan import format_plan, plan

    result = plan(args.model, args.gpu, width=args.width, height=args.height, steps=args.steps,
                  num_frames=args.frames, max_sequence_length=args.max_sequence_length, dtype=args.dtype,
                  attention=args.attention, storage=args.storage, rules=args.rules)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(format_plan(result, top=args.top))
    return 0 if result.fits else 1


def cmd_capabilities(args: argparse.Namespace) -> int:
    from optim.capabilities import SECTION_TITLES, detect

    caps = detect()
    if args.json:
        print(json.dumps(caps.to_json(), indent=2))
        return 0
    device = caps.device
    memory = f", {device.memory_gb} GB" if device.memory_gb else ""
    print(f"device: {device.device} ({device.name}{memory}); torch {device.torch}, diffusers {device.diffusers}")
    for path, options in caps.options.items():
        print(f"\n{SECTION_TITLES.get(path, path)} ({path}):")
        for option in options:
            mark = "yes" if option.available else "no "
            why = option.reason or option.note
            print(f"  {mark}  {option.value}{f'  ({why})' if why else ''}")
    print()
    print(caps.families_text())
    return 0


def cmd_schema(_args: argparse.Namespace) -> int:
    from optim.presets import preset_json_schema

    print(json.dumps(preset_json_schema(), indent=2))
    return 0


def cmd_report_schema(_args: argparse.Namespace) -> int:
    from optim.report_model import report_json_schema

    print(json.dumps(report_json_schema(), indent=2))
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    from optim.reference import options_markdown, write_readme

    if args.write is None:
        print(options_markdown(), end="")
        return 0
    try:
        changed = write_readme(args.write)
    except ValueError as error:
        raise ConfigError(f"{args.write}: {error}") from None
    print(f"{'updated' if changed else 'already current'}: {args.write}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from optim.logs import quiet_libraries, show_lab_logs
    from optim.machine import steady_threads

    steady_threads()
    quiet_libraries()
    args = build_parser().parse_args(argv)
    show_lab_logs("INFO" if args.verbose else None)
    handlers = {"compare": cmd_compare, "presets": cmd_presets, "capabilities": cmd_capabilities, "schema": cmd_schema,
                "reference": cmd_reference, "report-schema": cmd_report_schema, "sweep": cmd_sweep, "tune": cmd_tune,
                "plan": cmd_plan}
    try:
        return handlers[args.command](args)
    except OptimError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # e.g. the output directory cannot be written
        print(f"error: {ConfigError(str(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
