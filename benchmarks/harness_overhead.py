"""How much does the engine's harness add to what it measures?

Times the same pipeline, settings and seed two ways, each in a fresh process, interleaved to cancel drift:
  * bare:   a plain loop around `pipe(...)` with time.perf_counter, nothing else;
  * engine: `optim.engine.compare(...)` with the baseline preset (both sides are plain runs; we take both).
Prints the medians and the ratio engine / bare. The target is under 3% (ratio < 1.03).

    python benchmarks/harness_overhead.py [--model embedded] [--steps 20] [--runs 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bare(model: str, steps: int, runs: int) -> list[float]:
    """A plain timing loop, written out by hand (no engine code): what a user would time themselves."""
    import torch
    from diffusers import DiffusionPipeline

    from optim.models import model_defaults, resolve_model

    ref = resolve_model(model)
    defaults = model_defaults(ref)
    pipe = DiffusionPipeline.from_pretrained(ref.location, torch_dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(
        prompt=defaults.prompt,
        negative_prompt=defaults.negative_prompt if defaults.negative_prompt is not None else "",
        true_cfg_scale=defaults.guidance_scale,
        num_inference_steps=steps,
        width=defaults.width,
        height=defaults.height,
        max_sequence_length=defaults.max_sequence_length,
        output_type="np",
    )
    pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0))  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0))
        times.append(time.perf_counter() - start)
    return times


def engine(model: str, steps: int, runs: int) -> list[float]:
    from optim.config import RunSpec
    from optim.engine import compare
    from optim.presets import load_preset

    comparison = compare(RunSpec(model=model, steps=steps, timed_runs=runs), load_preset("baseline"))
    return comparison.baseline.latency_s + comparison.optimized.latency_s


def in_fresh_process(kind: str, args: argparse.Namespace) -> list[float]:
    command = [sys.executable, __file__, "--child", kind, "--model", args.model, "--steps", str(args.steps), "--runs", str(args.runs)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["bare", "engine"])
    args = parser.parse_args()
    if args.child:
        from optim.logs import quiet_libraries

        quiet_libraries()
        times = (bare if args.child == "bare" else engine)(args.model, args.steps, args.runs)
        print(json.dumps(times))
        return
    results: dict[str, list[float]] = {"bare": [], "engine": []}
    for round_index in range(args.rounds):
        for kind in ("bare", "engine"):
            results[kind] += in_fresh_process(kind, args)
        print(f"round {round_index + 1}/{args.rounds}: bare {statistics.median(results['bare']):.4f} s, "
              f"engine {statistics.median(results['engine']):.4f} s", file=sys.stderr)
    bare_median = statistics.median(results["bare"])
    engine_median = statistics.median(results["engine"])
    ratio = engine_median / bare_median
    print(f"model {args.model}, {args.steps} steps, {len(results['bare'])} bare and {len(results['engine'])} engine runs")
    print(f"bare loop median   {bare_median:.4f} s (min {min(results['bare']):.4f})")
    print(f"engine median      {engine_median:.4f} s (min {min(results['engine']):.4f})")
    print(f"engine / bare      {ratio:.4f}  ({(ratio - 1) * 100:+.2f}%; target < +3%)")


if __name__ == "__main__":
    main()
