"""Measure several presets, each against its own baseline, and write a dated benchmark record.

Each preset is compared under the engine's protocol: both sides loaded at once in their own processes, timed
runs in turns ("auto": until the speedup's 95% interval is within 5% or the budget is spent), the speedup with
its interval and verdict. The record holds the machine, the versions, the exact command and every figure, as
Markdown (for people) and JSON (for tools), under benchmarks/records/. Needs the package installed
(`pip install -e .`).

    # the embedded model on this machine's CPU
    python benchmarks/run_presets.py --presets first-block-cache,mag-cache,quantize-torchao-int8
    # the seed's Flux table on a GPU, with FLUX.1-dev's real dimensions and random weights
    python benchmarks/run_presets.py --model synthetic:flux-dev --steps 28 --runs 3 \
        --presets flux-table-quantization,flux-table-quantization-compile,flux-table-quantization-compile-offload
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--presets", required=True, help="comma-separated shipped preset names or .json paths")
    parser.add_argument("--prompt")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--runs", default="auto", help="timed runs per side, or auto (default)")
    parser.add_argument("--budget", type=float, default=60.0, help="auto: seconds of timed runs at most")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="compare each preset this many times (fresh processes each) and report the median speedup: on a "
             "shared machine one process can run several percent slower than the next",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="the GPU check's protocol: 2 timed runs per side (no auto minimum) unless --runs is given, and one "
             "baseline loaded once and kept warm for every preset (re-timed in turns with each)",
    )
    parser.add_argument("--record", type=Path, default=ROOT / "benchmarks" / "records", help="directory for the record")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from optim.logs import quiet_libraries

    quiet_libraries()
    from optim.capabilities import device_info
    from optim.config import parse_run
    from optim.engine import BaselineCache, compare
    from optim.errors import OptimError
    from optim.presets import load_preset

    if args.quick and args.runs == "auto":
        args.runs = "2"
    runs = args.runs if args.runs == "auto" else int(args.runs)
    settings = {"model": args.model, "timed_runs": runs, "warmup_runs": args.warmup, "time_budget_s": args.budget}
    for name in ("prompt", "steps", "width", "height"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    run = parse_run(settings)
    rows, reports = [], []
    warm = BaselineCache() if args.quick else None  # one baseline for every preset, re-timed with each
    for name in args.presets.split(","):
        preset = load_preset(name.strip())
        print(f"{preset.name} ...", file=sys.stderr, flush=True)
        try:
            repeats = [compare(run, preset, baseline_cache=warm).to_report() for _ in range(args.repeats)]
        except OptimError as error:
            rows.append({"preset": preset.name, "error": str(error)})
            print(f"  failed: {error}", file=sys.stderr)
            continue
        speedups = sorted(r["speedup"] for r in repeats)
        report = next(r for r in repeats if r["speedup"] == speedups[len(speedups) // 2])  # the median one
        reports.append(report)
        b, o, q = report["baseline"], report["optimized"], report["quality"]
        rows.append({
            "preset": preset.name,
            "speedups": speedups,
            "interval": report["speedup_interval"],
            "verdict": report["verdict"],
            "runs_per_side": report["timing"]["runs_per_side"],
            "busy_share": report["timing"]["contention"]["busy_share"],
            "baseline_latency_s": b["latency_s"]["median"],
            "latency_s": o["latency_s"]["median"],
            "latency_min_s": o["latency_s"]["min"],
            "latency_max_s": o["latency_s"]["max"],
            "speedup": report["speedup"],
            "baseline_peak_memory_mb": b["peak_memory_mb"],
            "peak_memory_mb": o["peak_memory_mb"],
            "host_peak_memory_mb": o["host_peak_memory_mb"],
            "load_s": o["load_s"],
            "compile_s": o["compile_s"],
            "work_fraction": o["work_fraction"],
            "psnr_db": q["psnr_db"],
            "ssim": q["ssim"],
            "warnings": o["warnings"],
        })

    if warm is not None:
        warm.clear()
    info = dataclasses.asdict(device_info())
    resolved = reports[0]["run"] if reports else settings
    table = markdown_table(rows)
    print(table)
    if args.no_record:
        return 0
    today = datetime.date.today().isoformat()
    device = re.sub(r"[^A-Za-z0-9]+", "-", (info["name"] or info["device"]))[:40].strip("-").lower()
    stem = f"{today}-{device}-{re.sub(r'[^A-Za-z0-9]+', '-', args.model).strip('-').lower()}"
    args.record.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(part) for part in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    record = {"date": today, "command": command, "device": info, "run": resolved, "results": rows}
    (args.record / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    memory = f", {info['memory_gb']} GB" if info["memory_gb"] else ""
    text = [
        f"# Benchmark record {today}: {args.model} on {info['name']}{memory}",
        "",
        f"Command: `{command}`",
        "",
        f"torch {info['torch']}, diffusers {info['diffusers']}, transformers {info['transformers']}, "
        f"Python {info['python']}, CUDA {info['cuda_version']}; {info['cpu_count']} CPU cores.",
        "",
        f"Run settings: {json.dumps(resolved)}",
        "",
        "Both sides loaded at once, each in its own process, timed runs in turns; the speedup is the geometric",
        "mean of the paired ratios with its 95% interval and verdict; latency is the optimized side's median;",
        f"each preset was compared {args.repeats} time(s) and the row shows the comparison with the median",
        "speedup; compile time is a cold compile; peak memory is CUDA max allocated on a GPU and the process RSS",
        "growth on a CPU; 'busy' is the share of timed runs during which other processes used the CPU.",
        "",
        table,
        "",
    ]
    (args.record / f"{stem}.md").write_text("\n".join(text))
    print(f"wrote {args.record / stem}.md and .json", file=sys.stderr)
    return 0


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| preset | speedup (95% CI) | verdict | runs per side | busy | latency (s) | peak memory (MB) | base memory "
        "(MB) | work computed | PSNR (dB) | SSIM | compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['preset']} | failed: {row['error'][:120]} | | | | | | | | | | |")
            continue
        psnr = "identical" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        low, high = row["interval"]
        interval = f"{row['speedup']:.2f}x ({low:.2f}-{high:.2f})" if low is not None else f"{row['speedup']:.2f}x"
        lines.append(
            f"| {row['preset']} | {interval} | {row['verdict']} | {row['runs_per_side']} | {row['busy_share']:.0%} "
            f"| {row['latency_s']:.3f} | {row['peak_memory_mb']:.0f} | {row['baseline_peak_memory_mb']:.0f} "
            f"| {row['work_fraction']:.0%} | {psnr} | {row['ssim']:.4f} | {compile_s} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
