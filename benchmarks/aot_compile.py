"""Ahead-of-time compile (compile mode 'aot') against just-in-time regional compile and no compile, in one run.

Three figures, on the embedded model by default:

1. Cold build: a fresh process, an empty AoT cache and an empty inductor cache (OPTIM_COLD_COMPILE=1); the
   build time the side reports (`details["aot"]["build_s"]`: AOTInductor compile and packaging, every package),
   beside its export time.
2. Load in a fresh process: the same packages loaded from the disk cache by `--loads` new processes, each
   reporting its load time (package load plus binding each block's weights) and its export time (made every
   time: the exported graph is part of the cache key). Goal: load (export included) at least 5x faster than the
   cold build.
3. Steady state: one process holding three sides (no compile, regional JIT compile, aot), each prepared by the
   lab's own protocol (`optim.measure.Side`), then `--rounds` rounds of one timed call each, in a random order
   per round (interleaved, so drift hits all three alike). Per-call medians, and paired ratio intervals
   (`optim.stats.paired_ratio_interval`, 95%) of each pair.

    python benchmarks/aot_compile.py [--model embedded] [--steps 8] [--size 128] [--loads 3] [--rounds 12]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _job(args: argparse.Namespace, settings: dict[str, Any], side: str = "optimized") -> Any:
    from optim.config import parse_optim, parse_run
    from optim.engine import prepare
    from optim.measure import SideJob

    optim = parse_optim(settings)
    ref, run = prepare(parse_run({"model": args.model, "steps": args.steps, "width": args.size,
                                  "height": args.size, "warmup_runs": 1, "timed_runs": 1}), optim)
    return SideJob(side, ref, run, optim)


def child_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """One aot side prepared in this (fresh) process: what it reports about its packages."""
    from optim.measure import Side

    started = time.perf_counter()
    side = Side(_job(args, {"compile": {"mode": "aot"}}))
    try:
        setup = side.prepare()
    finally:
        side.close()
    aot = setup.details["aot"]
    return {"status": aot["status"], "build_s": aot["build_s"], "load_s": aot["load_s"],
            "export_s": aot["export_s"], "packages": len(aot["packages"]),
            "first_compiled_call_s": setup.warmup_s[1], "process_prepare_s": time.perf_counter() - started}


def child_steady(args: argparse.Namespace) -> dict[str, Any]:
    """Three sides in this process, timed call by call in a random order per round."""
    from optim.measure import Side
    from optim.stats import paired_ratio_interval

    variants = {"off": {}, "regional": {"compile": {"mode": "regional"}}, "aot": {"compile": {"mode": "aot"}}}
    sides = {name: Side(_job(args, settings, "baseline" if name == "off" else "optimized"))
             for name, settings in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    digests: dict[str, set[str]] = {name: set() for name in variants}
    rng = random.Random(0)
    try:
        for side in sides.values():
            side.prepare()
        for side in sides.values():  # one untimed call each after preparing: every side equally warm
            side.timed("settle")
        for _ in range(args.rounds):
            order = list(variants)
            rng.shuffle(order)
            for name in order:
                timing = sides[name].timed()
                times[name].append(timing.latency_s)
                digests[name].add(timing.image_digest)
    finally:
        for side in sides.values():
            side.close()

    def interval(a: str, b: str) -> dict[str, Any]:
        found = paired_ratio_interval(times[a], times[b])
        return {"estimate": found.estimate, "low": found.low, "high": found.high, "verdict": found.verdict}

    return {"median_s": {name: statistics.median(values) for name, values in times.items()},
            "runs_s": times, "deterministic": {name: len(d) == 1 for name, d in digests.items()},
            "ratios": {"off/aot": interval("off", "aot"), "off/regional": interval("off", "regional"),
                       "regional/aot": interval("regional", "aot")}}


def _run_child(mode: str, args: argparse.Namespace, cache: Path, **env: str) -> dict[str, Any]:
    from optim.machine import WORKER_ENVIRONMENT

    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--steps", str(args.steps),
               "--size", str(args.size), "--rounds", str(args.rounds)]
    environ = {**os.environ, **WORKER_ENVIRONMENT, "OPTIM_AOT_CACHE": str(cache), **env}
    done = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{mode} child failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _interval_text(found: dict[str, Any]) -> str:
    if found["low"] is None:
        return f"{found['estimate']:.2f}x"
    return f"{found['estimate']:.2f}x (95% CI {found['low']:.2f}-{found['high']:.2f}, {found['verdict']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", choices=("prepare", "steady"))
    args = parser.parse_args()
    if args.child:
        from optim.logs import quiet_libraries

        quiet_libraries()
        result = child_prepare(args) if args.child == "prepare" else child_steady(args)
        print("RESULT " + json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="optim-aot-bench-") as folder:
        cache = Path(folder) / "aot"
        cold = _run_child("prepare", args, cache, OPTIM_COLD_COMPILE="1")
        assert cold["status"] == "built", cold
        loads = [_run_child("prepare", args, cache) for _ in range(args.loads)]
        assert all(load["status"] == "loaded" for load in loads), loads
        steady = _run_child("steady", args, cache, OPTIM_COLD_COMPILE="0")

    load_s = [load["load_s"] for load in loads]
    load_total = [load["load_s"] + load["export_s"] for load in loads]
    result = {"model": args.model, "steps": args.steps, "size": args.size, "cold": cold, "loads": loads,
              "steady": steady,
              "build_over_load": cold["build_s"] / statistics.median(load_s),
              "build_over_export_and_load": (cold["build_s"] + cold["export_s"]) / statistics.median(load_total)}
    print(f"model {args.model}, {args.steps} steps, {args.size}x{args.size}")
    print(f"cold build (fresh process, empty caches): build {cold['build_s']:.2f} s + export "
          f"{cold['export_s']:.2f} s ({cold['packages']} packages); first compiled call "
          f"{cold['first_compiled_call_s']:.2f} s")
    print(f"load in a fresh process (x{len(loads)}): load {', '.join(f'{s * 1000:.1f}' for s in load_s)} ms; "
          f"export + load {', '.join(f'{s:.2f}' for s in load_total)} s")
    print(f"  build / load: {result['build_over_load']:.0f}x; (build + export) / (export + load): "
          f"{result['build_over_export_and_load']:.1f}x (goal >= 5x)")
    medians = steady["median_s"]
    print(f"steady state, {args.rounds} interleaved rounds: per call off {medians['off'] * 1000:.1f} ms, regional "
          f"{medians['regional'] * 1000:.1f} ms, aot {medians['aot'] * 1000:.1f} ms")
    for pair, found in steady["ratios"].items():
        print(f"  {pair}: {_interval_text(found)}")
    print(f"  same image every run: {steady['deterministic']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
