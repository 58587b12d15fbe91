"""How much does the engine's harness add to what it measures?

Two figures, both engine / bare, for the same pipeline, settings and seed (target: under 1%), both with the
workers' thread settings (optim.machine.WORKER_ENVIRONMENT):

1. In one process, alternating call by call on the same loaded pipeline: a bare `pipe(...)` timed with
   time.perf_counter, against the engine's timed call (`optim.generation.generate`: the step callback, the
   encoder hooks, the seeded generator). This isolates what measuring costs, free of process-to-process noise.
2. End to end, each in fresh processes, interleaved: a plain script's timing loop against
   `optim.engine.compare(...)` with the baseline preset (both sides are plain runs). On a shared 2-core machine
   separate processes differ by several percent from one another, so this figure carries that noise.

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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _bare_pipeline(model: str, steps: int) -> tuple:
    """The pipeline and the call a user would write by hand (no engine code)."""
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
    return pipe, kwargs


def bare(model: str, steps: int, runs: int) -> list[float]:
    """A plain timing loop around `pipe(...)`."""
    import torch

    pipe, kwargs = _bare_pipeline(model, steps)
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


def same_process(model: str, steps: int, runs: int) -> dict[str, list[float]]:
    """Bare calls and the engine's timed calls, alternating on one pipeline."""
    import torch

    from optim.generation import generate

    pipe, kwargs = _bare_pipeline(model, steps)
    times: dict[str, list[float]] = {"bare": [], "engine": []}
    for _ in range(2):  # warm-up both paths
        pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0))
        generate(pipe, kwargs, seed=0, device="cpu")
    for index in range(runs):
        for kind in (("bare", "engine") if index % 2 == 0 else ("engine", "bare")):
            start = time.perf_counter()
            if kind == "bare":
                pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0))
                times["bare"].append(time.perf_counter() - start)
            else:
                times["engine"].append(generate(pipe, kwargs, seed=0, device="cpu").latency_s)
    return times


def in_fresh_process(kind: str, args: argparse.Namespace) -> Any:
    command = [sys.executable, __file__, "--child", kind, "--model", args.model,
               "--steps", str(args.steps), "--runs", str(args.runs)]
    # Every child computes with the workers' thread settings (optim.machine), so the figure is the harness's own
    # cost, not a difference of OpenMP settings (benchmarks/records/2026-11-30-thread-settings.md has those).
    from optim.machine import WORKER_ENVIRONMENT

    env = {**WORKER_ENVIRONMENT, **os.environ}
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["bare", "engine", "same"])
    args = parser.parse_args()
    if args.child:
        from optim.logs import quiet_libraries

        quiet_libraries()
        work = {"bare": bare, "engine": engine, "same": same_process}[args.child]
        print(json.dumps(work(args.model, args.steps, args.runs)))
        return
    same = in_fresh_process("same", argparse.Namespace(**{**vars(args), "runs": args.runs * args.rounds * 2}))
    same_ratio = statistics.median(same["engine"]) / statistics.median(same["bare"])
    print(f"1. same process, alternating calls ({len(same['bare'])} each): bare median "
          f"{statistics.median(same['bare']):.4f} s, engine median {statistics.median(same['engine']):.4f} s, "
          f"engine / bare {same_ratio:.4f} ({(same_ratio - 1) * 100:+.2f}%)")
    results: dict[str, list[float]] = {"bare": [], "engine": []}
    for round_index in range(args.rounds):
        for kind in ("bare", "engine"):
            results[kind] += in_fresh_process(kind, args)
        print(f"round {round_index + 1}/{args.rounds}: bare {statistics.median(results['bare']):.4f} s, "
              f"engine {statistics.median(results['engine']):.4f} s", file=sys.stderr)
    bare_median = statistics.median(results["bare"])
    engine_median = statistics.median(results["engine"])
    ratio = engine_median / bare_median
    min_ratio = min(results["engine"]) / min(results["bare"])
    print(f"2. fresh processes, {args.rounds} interleaved rounds ({len(results['bare'])} bare, "
          f"{len(results['engine'])} engine runs): bare median {bare_median:.4f} s (min {min(results['bare']):.4f}), "
          f"engine median {engine_median:.4f} s (min {min(results['engine']):.4f}), engine / bare "
          f"{ratio:.4f} ({(ratio - 1) * 100:+.2f}%) by medians, "
          f"{min_ratio:.4f} ({(min_ratio - 1) * 100:+.2f}%) by minima")
    print(f"model {args.model}, {args.steps} steps; target: engine / bare < 1.01")


if __name__ == "__main__":
    main()
