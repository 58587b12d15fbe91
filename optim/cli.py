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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2, no usage dump
        self.exit(2, f"error: {message} (see python -m optim {self.prog.split()[-1]} --help)\n")


def _runs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'auto'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m optim", description="Compare a diffusers pipeline with and without optimizations.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    compare = commands.add_parser("compare", help="run baseline and optimized side by side and write a report")
    compare.add_argument("--preset", required=True, help="a shipped preset name or a path to a preset .json file")
    compare.add_argument("--model", help="'embedded' (default), a Hub model id, a local diffusers folder, or synthetic:NAME")
    compare.add_argument("--prompt")
    compare.add_argument("--negative-prompt")
    compare.add_argument("--seed", type=int)
    compare.add_argument("--steps", type=int)
    compare.add_argument("--width", type=int)
    compare.add_argument("--height", type=int)
    compare.add_argument("--guidance", type=float, dest="guidance_scale")
    compare.add_argument("--max-sequence-length", type=int)
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

    presets = commands.add_parser("presets", help="list the shipped presets")
    presets.add_argument("--json", action="store_true")

    capabilities = commands.add_parser("capabilities", help="what this machine can run, and why not")
    capabilities.add_argument("--json", action="store_true")

    commands.add_parser("schema", help="print the JSON Schema of a preset file")
    commands.add_parser("report-schema", help="print the JSON Schema of report.json")

    reference = commands.add_parser("reference", help="print README's option tables (written from the settings)")
    reference.add_argument("--write", type=Path, metavar="README", help="rewrite the options part of this file")
    return parser


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Only the run settings given on the command line; the rest stay at their defaults."""
    names = [
        "model", "prompt", "negative_prompt", "seed", "steps", "width", "height", "guidance_scale",
        "max_sequence_length", "dtype", "device", "warmup_runs", "timed_runs", "target_precision", "time_budget_s",
        "timing",
    ]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _progress(quiet: bool) -> Any:
    last = {"phase": None}

    def report(phase: str, done: int, total: int) -> None:
        if quiet:
            return
        if phase != last["phase"]:
            last["phase"] = phase
            print(f"  {phase}", file=sys.stderr, flush=True)

    return report


def cmd_compare(args: argparse.Namespace) -> int:
    from optim.config import parse_run
    from optim.engine import compare
    from optim.presets import load_preset
    from optim.report import runs_text, summary_table, write_report

    run = parse_run(run_settings(args))
    preset = load_preset(args.preset)
    comparison = compare(run, preset, isolation=args.isolation, progress=_progress(args.quiet))
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
    from optim.logs import quiet_libraries
    from optim.machine import steady_threads

    steady_threads()
    quiet_libraries()
    args = build_parser().parse_args(argv)
    handlers = {"compare": cmd_compare, "presets": cmd_presets, "capabilities": cmd_capabilities, "schema": cmd_schema,
                "reference": cmd_reference, "report-schema": cmd_report_schema}
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
