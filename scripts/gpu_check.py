"""The prepared GPU check: the seed's numbers on the lent GPU machine, against a hard deadline.

    bash scripts/gpu-check                 # on the GPU machine, with .whl carried (scripts/gpu-wheels made it)
    bash scripts/gpu-check --dry-run       # on a CPU: synthetic:flux-tiny, a 60 s deadline, the same code path

It prints `python -m optim capabilities`, then measures each case below against one baseline that is loaded once
and kept warm (FLUX.1-dev's real dimensions with random bf16 weights, built straight into GPU memory: no disk),
writing each case's report.json, report.md, images and charts into $OUT/<case>/ as soon as that case finishes.
At the end, or at the deadline, it writes $OUT/gpu-record.md and $OUT/gpu-record.json: the device, driver,
torch, and every case's figures with their intervals, beside the seed's RTX 4090 table and the published H100
figures. A case that no longer fits in the time left is skipped with a line saying so; a case that fails is
recorded with its one-line reason and the check goes on. While the baseline builds, a short GPU subset of
tests/test_gpu.py runs (its output in $OUT/gpu-tests.txt); the timed cases start after it.

The time each case is given (docs/GPU.md, "The prepared check") comes from the published figures: FLUX.1-dev
1024x1024, 28 steps, about 6.6 s per image eager on an H100 (xDiT's table), plus loads, probes, warm-ups and
cold compiles; `--quick` timing (2 runs per side in turns, one warm baseline for all cases) keeps the whole
within 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_DEADLINE_S = 480.0  # 8 minutes, never more (the machine's whole lease is 15)
DRY_DEADLINE_S = 60.0
SECONDS_PER_IMAGE = 6.6  # FLUX.1-dev 1024^2, 28 steps, eager, one H100 (xDiT's published table)
GPU_TESTS = ("_native_flash or _native_cudnn or nf4 or float8 or regional")
GPU_TESTS_TIMEOUT_S = 120.0

# The seed's table (RTX 4090, FLUX.1-dev, transformer and text_encoder_2 quantized) and published H100 figures.
SEED_TABLE = {
    "bnb-nf4": "32.602 s, 14.9453 GB (quantization)",
    "bnb-nf4-compile-offload": "32.312 s, 12.2369 GB (quantization, torch.compile, model CPU offload)",
}
PUBLISHED_H100 = "FLUX.1-dev 1024x1024, 28 steps, one H100: about 6.6 s eager, 4.3 s compiled (xDiT)"


@dataclass(frozen=True)
class Case:
    """One comparison against the warm baseline: its settings, and the seconds it is given on the GPU, in units
    of one eager image (`images`) plus fixed seconds (`fixed_s`: builds, quantization, cold compiles)."""

    name: str
    title: str
    settings: Callable[[Any], dict[str, Any]]
    images: float
    fixed_s: float
    dry_s: float  # what the same case takes on the tiny model on a 2-core CPU (measured dry runs)

    def budget_s(self, seconds_per_image: float | None) -> float:
        """Seconds to allow: on the GPU from the published per-image time; in a dry run (None) the CPU's."""
        return self.dry_s if seconds_per_image is None else self.fixed_s + self.images * seconds_per_image


def _torchao_fp8_or_int8(device: Any) -> dict[str, Any]:
    """fp8 weights where the GPU has fp8 (sm89+), else int8."""
    fp8 = device.cuda and device.sm >= 8.9
    kind = "float8_weight_only" if fp8 else "int8_weight_only"
    return {"quantization": {"backend": "torchao", "quant_type": kind, "components": ["transformer"]},
            "compile": {"mode": "regional"}}


NF4 = {"backend": "bitsandbytes_4bit", "quant_type": "nf4", "components": ["transformer", "text_encoder_2"]}

# In this order. `images`: the optimized side's probe and warm-ups, the kept baseline's untimed run, 2 pairs.
# Fixed seconds: the build in GPU memory (~5 s: 17 B random values from a CUDA generator), quantizing, the cold
# regional compile (FLUX's two block types), moving weights for model offload (~34 GB per call at PCIe speed).
CASES = [
    Case("attention-cudnn", "_native_cudnn attention", lambda d: {"attention": {"backend": "_native_cudnn"}},
         6, 5, 2),
    Case("attention-flash", "_native_flash attention", lambda d: {"attention": {"backend": "_native_flash"}},
         6, 5, 4),
    Case("first-block-cache", "First Block Cache (threshold 0.1)",
         lambda d: {"cache": {"method": "first_block_cache", "threshold": 0.1}}, 5, 5, 4),
    Case("torchao-regional-compile", "torchao (fp8, else int8) on the transformer + regional compile",
         _torchao_fp8_or_int8, 7, 35, 30),
    Case("model-cpu-offload", "model CPU offload (GPU and host peaks)", lambda d: {"offload": {"mode": "model_cpu"}},
         7, 20, 2),
    Case("bnb-nf4", "bitsandbytes NF4 on transformer and text_encoder_2 (the seed's row 1)",
         lambda d: {"quantization": NF4}, 7, 15, 5),
    Case("bnb-nf4-compile-offload", "NF4 + regional compile + model CPU offload, fullgraph off (the seed's row 3)",
         lambda d: {"quantization": NF4, "offload": {"mode": "model_cpu"},
                    "compile": {"mode": "regional", "fullgraph": False}}, 8, 55, 30),
]
# The baseline: a spawned worker's imports, the build, its probe and warm-up.
BASELINE_IMAGES, BASELINE_FIXED_S = 2, 40


@dataclass
class Outcome:
    case: str
    title: str
    status: str  # ok, skipped, failed, stopped
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def run_command(command: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        return done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{' '.join(command)}: {error}"


def driver_version() -> str:
    if not shutil.which("nvidia-smi"):
        return "no nvidia-smi"
    text = run_command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 20)
    return text.strip().splitlines()[0] if text.strip() else "unknown"


def figures(report: dict[str, Any]) -> dict[str, Any]:
    b, o, t = report["baseline"], report["optimized"], report["timing"]
    return {
        "speedup": report["speedup"], "interval": report["speedup_interval"], "verdict": report["verdict"],
        "estimator": t["estimator"]["name"], "runs_per_side": t["runs_per_side"],
        "baseline_s": b["time_s"]["median"], "optimized_s": o["time_s"]["median"],
        "baseline_peak_mb": b["peak_memory_mb"], "optimized_peak_mb": o["peak_memory_mb"],
        "optimized_reserved_mb": o["reserved_memory_mb"], "optimized_host_peak_mb": o["host_peak_memory_mb"],
        "memory": t["memory_saving_mb"]["text"], "load_s": o["load_s"], "compile_s": o["compile_s"],
        "work_fraction": o["work_fraction"], "psnr_db": report["quality"]["psnr_db"],
        "ssim": report["quality"]["ssim"], "applied": o["applied"], "warnings": o["warnings"],
        # The memory planner's prediction beside the measured peak (optim.plan.check): each GPU run checks it.
        "planned": {side: report[side].get("planned") for side in ("baseline", "optimized")},
    }


def planned_cell(planned: dict[str, Any] | None) -> str:
    """'14210 (+2.1%)': the optimized side's planned peak, and its error against the measured one."""
    side = (planned or {}).get("optimized")
    if not side or side.get("error") is None:
        return "-"
    return f"{side['predicted_peak_mb']:.0f} ({side['error']:+.1%})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on a CPU: the tiny synthetic FLUX, 60 s")
    parser.add_argument("--deadline", type=float, help=f"seconds from start (at most {MAX_DEADLINE_S:.0f})")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "out" / "gpu-check"))
    parser.add_argument("--started", type=float, help="when the check began (epoch s; scripts/gpu-check passes it)")
    args = parser.parse_args(argv)
    started = args.started or time.time()
    limit = DRY_DEADLINE_S if args.dry_run else MAX_DEADLINE_S
    deadline = started + min(args.deadline or limit, limit)
    args.out.mkdir(parents=True, exist_ok=True)

    from optim.logs import quiet_libraries

    quiet_libraries()
    from optim.capabilities import device_info

    device = device_info()
    model = "synthetic:flux-tiny" if args.dry_run else "synthetic:flux-dev"
    run_settings = ({"model": model, "timed_runs": 2, "warmup_runs": 1} if args.dry_run else
                    {"model": model, "steps": 28, "width": 1024, "height": 1024, "dtype": "bfloat16",
                     "device": "cuda", "timed_runs": 2, "warmup_runs": 1})
    seconds_per_image = None if args.dry_run else SECONDS_PER_IMAGE
    capabilities = run_command([sys.executable, "-m", "optim", "capabilities"], 120)
    (args.out / "capabilities.txt").write_text(capabilities)
    print(capabilities, flush=True)

    tests = None
    if device.cuda:  # a short GPU subset while the baseline builds (on a CPU every GPU test would skip)
        log = open(args.out / "gpu-tests.txt", "w")
        tests = subprocess.Popen([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-k", GPU_TESTS,
                                  "-q", "-p", "no:cacheprovider", "-o", "addopts="], cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT)
    outcomes: list[Outcome] = []
    record: dict[str, Any] = {
        "date": str(date.today()), "command": "bash scripts/gpu-check" + (" --dry-run" if args.dry_run else ""),
        "device": {"name": device.name, "memory_gb": device.memory_gb, "cuda": device.cuda_version,
                   "compute_capability": device.compute_capability, "driver": driver_version(),
                   "torch": device.torch, "diffusers": device.diffusers, "python": platform.python_version(),
                   "cpu_count": os.cpu_count()},
        "run": run_settings, "deadline_s": deadline - started, "outcomes": []}
    cache = None
    try:
        cache, setup_s = warm_baseline(run_settings, deadline)
        outcomes.append(Outcome("baseline", "bf16 eager baseline (built in memory, kept warm)", "ok",
                                f"prepared in {setup_s:.1f} s", seconds=setup_s))
    except Exception as error:  # noqa: BLE001 - the record says why, whatever it is
        outcomes.append(Outcome("baseline", "bf16 eager baseline", "failed", _line(error)))
    if tests is not None:
        try:
            tests.wait(timeout=max(1.0, min(GPU_TESTS_TIMEOUT_S, deadline - time.time() - 60)))
        except subprocess.TimeoutExpired:
            tests.kill()
            tests.wait()
        record["gpu_tests"] = (args.out / "gpu-tests.txt").read_text()[-3000:]
    for case in CASES if cache is not None else []:
        left = deadline - time.time()
        need = case.budget_s(seconds_per_image)
        if left < need:
            outcomes.append(Outcome(case.name, case.title, "skipped",
                                    f"needs about {need:.0f} s, {max(left, 0):.0f} s left before the deadline"))
            print(f"{case.name}: skipped (needs about {need:.0f} s, {max(left, 0):.0f} s left)", flush=True)
            continue
        outcomes.append(run_case(case, device, run_settings, cache, deadline, args.out))
        print(f"{case.name}: {outcomes[-1].status} {outcomes[-1].detail}", flush=True)
    if cache is not None:
        cache.clear()
    record["outcomes"] = [vars(o) for o in outcomes]
    record["elapsed_s"] = time.time() - started
    (args.out / "gpu-record.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    (args.out / "gpu-record.md").write_text(markdown(record))
    print(markdown(record), flush=True)
    return 0 if all(o.status in ("ok", "skipped") or (args.dry_run and o.status == "refused")
                    for o in outcomes) else 1


def warm_baseline(run_settings: dict[str, Any], deadline: float) -> tuple[Any, float]:
    """Load the baseline once and keep it warm for every case (`BaselineCache`)."""
    from optim.config import OptimConfig, parse_run
    from optim.engine import BaselineCache, prepare
    from optim.measure import SideJob
    from optim.worker import RemoteSide

    began = time.time()
    ref, run = prepare(parse_run(run_settings), OptimConfig())
    side = RemoteSide(SideJob("baseline", ref, run, OptimConfig()), should_stop=lambda: time.time() > deadline)
    try:
        setup = side.prepare()
    except BaseException:
        side.close()
        raise
    cache = BaselineCache()
    cache.put(BaselineCache.key(ref, run), side, setup)
    return cache, time.time() - began


def run_case(case: Case, device: Any, run_settings: dict[str, Any], cache: Any, deadline: float,
             out: Path) -> Outcome:
    from optim.config import parse_optim, parse_run
    from optim.engine import compare
    from optim.errors import Cancelled, IncompatibleError, OptimError, UnavailableError
    from optim.presets import make_preset
    from optim.report import write_report

    began = time.time()
    settings = case.settings(device)
    try:
        preset = make_preset(case.name, parse_optim(settings), description=case.title)
        comparison = compare(parse_run(run_settings), preset, baseline_cache=cache,
                             should_stop=lambda: time.time() > deadline)
        report = write_report(comparison, out / case.name)
        data = report.to_json()
        return Outcome(case.name, case.title, "ok", data["timing"]["speedup"]["text"], figures(data),
                       time.time() - began)
    except Cancelled:
        return Outcome(case.name, case.title, "stopped", "the deadline came first", seconds=time.time() - began)
    except (UnavailableError, IncompatibleError) as error:
        return Outcome(case.name, case.title, "refused", _line(error), seconds=time.time() - began)
    except OptimError as error:
        return Outcome(case.name, case.title, "failed", _line(error), seconds=time.time() - began)


def _line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:400] if text else ''}"


def markdown(record: dict[str, Any]) -> str:
    d = record["device"]
    lines = [f"# GPU check {record['date']}: {d['name']}", "", f"Command: `{record['command']}` (deadline "
             f"{record['deadline_s']:.0f} s, took {record.get('elapsed_s', 0):.0f} s)", "",
             f"{d['name']}, {d['memory_gb']} GB, compute capability {d['compute_capability']}, driver {d['driver']}; "
             f"CUDA {d['cuda']}, torch {d['torch']}, diffusers {d['diffusers']}, Python {d['python']}, "
             f"{d['cpu_count']} CPU cores.", "", f"Run: {json.dumps(record['run'])}; both sides in their own "
             "processes, runs in turns, one baseline kept warm for every case.", "",
             "| case | status | speedup (95% CI) | baseline -> optimized (s) | peak GPU MB (opt.) | "
             "planned MB (error) | host peak MB | load s | compile s | work | PSNR dB | seed's 4090 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in record["outcomes"]:
        f = o["figures"]
        if not f:
            seed = SEED_TABLE.get(o["case"], "")
            lines.append(f"| {o['case']} | {o['status']}: {o['detail']} | | | | | | | | | | {seed} |")
            continue
        low, high = f["interval"]
        span = f" ({low:.2f}-{high:.2f})" if low is not None else ""
        psnr = "identical" if f["psnr_db"] is None else f"{f['psnr_db']:.1f}"
        compile_s = "-" if f["compile_s"] is None else f"{f['compile_s']:.1f}"
        lines.append(f"| {o['case']} | {f['verdict']} | {f['speedup']:.2f}x{span} | {f['baseline_s']:.3f} -> "
                     f"{f['optimized_s']:.3f} | {f['optimized_peak_mb']:.0f} | {planned_cell(f.get('planned'))} | "
                     f"{f['optimized_host_peak_mb']:.0f} | "
                     f"{f['load_s']:.1f} | {compile_s} | {f['work_fraction']:.0%} | {psnr} | "
                     f"{SEED_TABLE.get(o['case'], '')} |")
    lines += ["", f"Published for comparison: {PUBLISHED_H100}.", ""]
    if record.get("gpu_tests"):
        lines += ["GPU tests (tests/test_gpu.py subset), last lines:", "", "```",
                  *record["gpu_tests"].strip().splitlines()[-15:], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
