"""Check a trained tiny-flux folder: colour accuracy over many prompts/seeds, speed, First Block Cache, and how well
the drawn shapes separate (IoU with the caption's shape against the other two shapes).

    python -m embedded.evaluate --model assets/tiny-flux [--prompts 120] [--seeds 2] [--cache] [--shapes]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see embedded/train.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import dataset


def load(model: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    with open(os.path.join(model, "lab_defaults.json")) as f:
        defaults = json.load(f)
    return pipe, defaults


def run(pipe, d: dict, prompt: str, seed: int, cfg: float | None = None, output_type: str = "pil"):
    return pipe(prompt, negative_prompt=d["negative_prompt"],
                true_cfg_scale=d["guidance_scale"] if cfg is None else cfg,
                height=d["height"], width=d["width"], num_inference_steps=d["steps"],
                max_sequence_length=d["max_sequence_length"], output_type=output_type,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def pick_prompts(n: int, seed: int = 123) -> list[str]:
    rng = np.random.default_rng(seed)
    pool = dataset.all_captions()
    return [pool[i] for i in rng.choice(len(pool), size=min(n, len(pool)), replace=False)]


def accuracy(pipe, d, prompts, seeds, cfg=None) -> dict:
    rows = [dataset.judge_image(p, run(pipe, d, p, s, cfg)) for p in prompts for s in seeds]
    return {
        "n": len(rows),
        "background_ok": float(np.mean([r["background_ok"] for r in rows])),
        "shape_ok": float(np.mean([r["shape_ok"] for r in rows])),
        "both_ok": float(np.mean([r["background_ok"] and r["shape_ok"] for r in rows])),
        "failures": [r["prompt"] + f" -> {r['shape_colour']} on {r['background_colour']}"
                     for r in rows if not (r["background_ok"] and r["shape_ok"])],
    }


def shape_separation(pipe, d, prompts, seeds, cfg=None) -> dict:
    """For images whose colours are right (`dataset.judge_image`): the IoU of what was drawn with the caption's
    shape, the best IoU with another shape at the same size and position (`dataset.shape_ious`), their margin, and
    the images another shape matches better."""
    rows = []
    for p in prompts:
        shape = dataset.parse_caption(p).shape
        for s in seeds:
            image = run(pipe, d, p, s, cfg)
            judged = dataset.judge_image(p, image)
            if not (judged["shape_ok"] and judged["background_ok"]):
                continue
            ious = dataset.shape_ious(p, image)
            other = max(v for k, v in ious.items() if k != shape)
            rows.append({"prompt": p, "seed": s, "ious": ious, "right": ious[shape], "other": other,
                         "margin": ious[shape] - other})
    nan = float("nan")
    return {
        "n": len(rows),
        "right_iou_min": min((r["right"] for r in rows), default=nan),
        "other_iou_max": max((r["other"] for r in rows), default=nan),
        "margin_min": min((r["margin"] for r in rows), default=nan),
        "margin_p5": float(np.percentile([r["margin"] for r in rows], 5)) if rows else nan,
        "misdrawn": [f"{r['prompt']} (seed {r['seed']}): {r['ious']}" for r in rows if r["margin"] <= 0],
        "rows": rows,
    }


def timing(pipe, d, repeats: int = 10) -> float:
    run(pipe, d, d["prompt"], 0)  # warm-up
    t = time.perf_counter()
    for i in range(repeats):
        run(pipe, d, d["prompt"], i)
    return (time.perf_counter() - t) / repeats


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def cache_check(pipe, d, thresholds=(0.05, 0.1, 0.2), prompts=None, seed: int = 0) -> list[dict]:
    """First Block Cache vs no cache, same seed: transformer passes that skipped the tail, PSNR."""
    from diffusers import FirstBlockCacheConfig

    prompts = prompts or [d["prompt"]]
    tail = pipe.transformer.single_transformer_blocks[-1].proj_out  # runs only when the tail is computed
    calls = {"n": 0}
    handle = tail.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    out = []
    try:
        base = {p: run(pipe, d, p, seed, output_type="np") for p in prompts}
        passes = calls["n"] // len(prompts)
        for th in thresholds:
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=th))
            calls["n"] = 0
            vals = [psnr(base[p], run(pipe, d, p, seed, output_type="np")) for p in prompts]
            pipe.transformer.disable_cache()
            out.append({"threshold": th, "passes": passes,
                        "skipped_per_image": (passes * len(prompts) - calls["n"]) / len(prompts),
                        "psnr_db_mean": float(np.mean(vals)), "psnr_db_min": float(np.min(vals))})
    finally:
        handle.remove()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m embedded.evaluate")
    ap.add_argument("--model", default="assets/tiny-flux")
    ap.add_argument("--prompts", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--cfg", default=None, help="comma-separated true-CFG scales (default: lab default)")
    ap.add_argument("--cache", action="store_true")
    ap.add_argument("--shapes", action="store_true", help="IoU with the caption's shape against the other shapes")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe, d = load(args.model)
    print("defaults", d)
    if not args.no_timing:
        print(f"time per image at defaults: {timing(pipe, d):.3f} s")
    prompts = pick_prompts(args.prompts)
    scales = [None] if args.cfg is None else [float(x) for x in args.cfg.split(",")]
    for cfg in scales:
        r = accuracy(pipe, d, prompts, range(args.seeds), cfg)
        print(f"cfg {cfg if cfg is not None else d['guidance_scale']}: n={r['n']} background {r['background_ok']:.3f} "
              f"shape {r['shape_ok']:.3f} both {r['both_ok']:.3f}")
        for f in r["failures"][:15]:
            print("   ", f)
    if args.shapes:
        r = shape_separation(pipe, d, prompts, range(args.seeds))
        print(f"shapes (n={r['n']} images with the right colours): IoU with the caption's shape min "
              f"{r['right_iou_min']:.3f}; best IoU with another shape max {r['other_iou_max']:.3f}; margin min "
              f"{r['margin_min']:.3f} (5th percentile {r['margin_p5']:.3f})")
        for f in r["misdrawn"][:15]:
            print("    another shape matches better:", f)
    if args.cache:
        plain = [p for p in prompts if " at the " not in p][:4]
        for row in cache_check(pipe, d, prompts=plain):
            print("cache", row)


if __name__ == "__main__":
    main()
