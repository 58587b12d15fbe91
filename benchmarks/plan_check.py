"""The memory planner against published figures and against the lab's own measurements.

    python benchmarks/plan_check.py --out benchmarks/records/DATE-plan-check [--skip-cpu]

1. Published GPU rows (FLUX.1-dev, bf16 compute): the diffusers quantization benchmark on an H100 (1024x1024,
   50 steps, max_sequence_length 512, transformer and T5 quantized; memory after loading, and the peak read as
   `torch.cuda.max_memory_reserved`) and the seed's RTX 4090 table (NF4 on transformer and T5, memory in GB as
   `max_memory_allocated`, the offload row read since loading). Each row: the prediction, the error, and the
   terms that dominate it. Goal: within 10% on every row. The rows were measured with transformers 4.x, so they
   are predicted by its loaders' rules (`--rules transformers-4`); the installed rules' figure is printed beside.
2. On this CPU: the embedded model and each tiny family at two resolutions, the planner's peak (weights at float32
   plus the working memory) beside the peak the lab measures for the baseline side (the process's RSS growth
   from before loading, `optim.memory`), one comparison each.

Published figures are in GiB (the benchmarks divide by 1024**3 and write "GB").
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from optim.logs import quiet_libraries

quiet_libraries()

from optim.plan import plan  # noqa: E402
from optim.plan.cards import GIB  # noqa: E402

FLUX = "black-forest-labs/FLUX.1-dev"
NF4 = {"backend": "bitsandbytes_4bit", "quant_type": "nf4", "components": ["transformer", "text_encoder_2"]}
H100_RUN = {"width": 1024, "height": 1024, "steps": 50, "max_sequence_length": 512}
GOAL = 0.10

# (source, row, card, run, settings, figure, published GiB); figure: which of the option's predictions it reads.
PUBLISHED = [
    ("diffusers quantization benchmark, H100", "bf16, after loading", "h100", H100_RUN,
     {"offload": {"mode": "none"}}, "after_load_bytes", 31.447),
    ("diffusers quantization benchmark, H100", "bf16, peak (reserved)", "h100", H100_RUN,
     {"offload": {"mode": "none"}}, "reserved_peak_bytes", 36.166),
    ("diffusers quantization benchmark, H100", "NF4 transformer + T5, after loading", "h100", H100_RUN,
     {"offload": {"mode": "none"}, "quantization": NF4}, "after_load_bytes", 12.584),
    ("diffusers quantization benchmark, H100", "NF4 transformer + T5, peak (reserved)", "h100", H100_RUN,
     {"offload": {"mode": "none"}, "quantization": NF4}, "reserved_peak_bytes", 17.281),
    ("seed table (speed-memory-optims), RTX 4090", "NF4 transformer + T5", "rtx-4090", {},
     {"offload": {"mode": "none"}, "quantization": NF4}, "need_bytes", 14.9453),
    ("seed table (speed-memory-optims), RTX 4090", "NF4 + compile + model CPU offload", "rtx-4090", {},
     {"offload": {"mode": "model_cpu"}, "quantization": NF4}, "need_bytes", 12.2369),
]


def _dominant(option: Any, figure: str) -> str:
    """The phase and the largest terms behind the figure."""
    if figure == "after_load_bytes":
        return "weights only (every component on the GPU)"
    if figure == "need_bytes" and option.load_peak_bytes > option.peak_bytes:
        return "loading: the bitsandbytes components all on the GPU before the offload moves them"
    phase = option.terms[option.peak_phase]
    top = sorted(phase.items(), key=lambda kv: -kv[1])[:2]
    return f"{option.peak_phase}: " + ", ".join(f"{name} {value / GIB:.2f}" for name, value in top)


def published_rows() -> list[dict[str, Any]]:
    out = []
    plans: dict[tuple[str, str, str], Any] = {}
    for source, row, card, run, settings, figure, published in PUBLISHED:
        figures = {}
        for rules in ("transformers-4", "installed"):
            key = (card, json.dumps(run), rules)
            if key not in plans:
                plans[key] = plan(FLUX, card, storage="bnb_nf4", rules=rules, **run)
            option = next(o for o in plans[key].options if o.settings == settings)
            figures[rules] = (option, getattr(option, figure) / GIB)
        option, predicted = figures["transformers-4"]
        error = predicted / published - 1
        out.append({"source": source, "row": row, "figure": figure, "published_gib": published,
                    "predicted_gib": round(predicted, 3), "error": round(error, 4),
                    "installed_rules_gib": round(figures["installed"][1], 3), "within_goal": abs(error) <= GOAL,
                    "dominant": _dominant(option, figure), "option": option.label})
    return out


CPU_MODELS = ["embedded", *(f"tiny:{key}" for key in ("flux", "qwen-image", "sd3", "cogvideox", "wan"))]


def cpu_rows() -> list[dict[str, Any]]:
    from optim.config import parse_run
    from optim.engine import compare
    from optim.presets import load_preset

    out = []
    for model in CPU_MODELS:
        base = plan(model, "24", dtype="float32")
        for scale in (1, 2):
            width, height = base.run["width"] * scale, base.run["height"] * scale
            predicted = plan(model, "24", dtype="float32", width=width, height=height, steps=2)
            option = next(o for o in predicted.options if o.settings == {"offload": {"mode": "none"}})
            run = {"model": model, "steps": 2, "width": width, "height": height, "dtype": "float32",
                   "timed_runs": 2, "warmup_runs": 1}
            report = compare(parse_run(run), load_preset("baseline")).to_report()
            measured = report["baseline"]["peak_memory_mb"] * 2**20
            print(f"  {model} {width}x{height}: predicted {option.peak_bytes / 2**20:8.1f} MB, "
                  f"measured {measured / 2**20:8.1f} MB", flush=True)
            out.append({"model": model, "width": width, "height": height,
                        "predicted_mb": round(option.peak_bytes / 2**20, 1),
                        "weights_mb": round(option.after_load_bytes / 2**20, 1),
                        "measured_mb": round(measured / 2**20, 1),
                        "error": round(option.peak_bytes / measured - 1, 4) if measured > 0 else None,
                        "peak_phase": option.peak_phase})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--skip-cpu", action="store_true", help="only the published rows")
    args = parser.parse_args(argv)
    rows = published_rows()
    print("published rows (GiB): predicted (transformers 4.x rules; installed rules) vs published")
    for row in rows:
        print(f"  {row['source']}: {row['row']}: {row['predicted_gib']:.3f} ({row['installed_rules_gib']:.3f}) vs "
              f"{row['published_gib']:.3f}, {row['error']:+.1%} {'ok' if row['within_goal'] else 'MISS'}; "
              f"{row['dominant']}")
    cpu = [] if args.skip_cpu else cpu_rows()
    met = all(row["within_goal"] for row in rows)
    print(f"goal (every published row within {GOAL:.0%}): {'met' if met else 'NOT met'}")
    if args.out:
        record = {"date": date.today().isoformat(), "command": " ".join(["python", "benchmarks/plan_check.py",
                                                                         *(argv or sys.argv[1:])]),
                  "goal": GOAL, "met": met, "published": rows, "cpu": cpu}
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
