"""Check a trained tiny-cogvideox folder: does it draw the prompt, and does the shape move as asked?

    python -m embedded.video_evaluate --model assets/tiny-cogvideox [--seeds 2] [--cfg 1,4,6] [--cache]

Every generated clip is judged from its pixels alone (:func:`judge_video`):

* background colour: the median colour of a 3-pixel ring along the frame border (shapes keep
  ``BORDER`` = 4% of the side away from it), mapped to the nearest vocabulary colour;
* shape colour: the median colour of the pixels far (> 60 RGB units) from that background, nearest
  vocabulary colour;
* per frame, the shape mask (pixels nearer the measured shape colour than the measured background);
* shape: the mask is compared (IoU) with an ideal circle, square and triangle drawn in the mask's own
  bounding box, averaged over the frames; the best match is the shape;
* motion: straight lines fitted to the centroid track and to log(area) over the frames: the area
  changing by more than 2x over the clip is growing/shrinking (the data's growing clips change it
  ~8-9x, moving and still ones not at all); otherwise a centroid travelling more than 15% of the side
  is a move (the data's moves cover 32-40%), in the direction of the larger component; else still.

The thresholds sit halfway (geometrically) between what the data can show; ``python -m
embedded.video_evaluate --calibrate`` measures the margins on rendered clips, blurred and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see embedded/train.py

import numpy as np  # noqa: E402

from . import video_dataset as vd  # noqa: E402

FG_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel counts as shape
AREA_RATIO = 2.0  # |area change| over the clip above this: growing / shrinking
TRAVEL_MIN = 0.15  # centroid travel over the clip (fraction of the side) above this: moving
MIN_PIXELS = 6  # a frame needs this many shape pixels to be measured

# Bars the shipped model must clear in tests/test_embedded_video_model.py (which states the same numbers): the
# shares of its 14 adherence prompts (one per held-out combination) judged right at the lab defaults, seed 0.
# The shipped model draws the asked-for shape on 59% of held-out clips (chance among three shapes: 33%); the
# shape bar sits under its 8 of 14 on these prompts.
ADHERENCE_BARS = {"background": 0.9, "colour": 0.85, "shape": 0.4, "motion": 0.8}

# Cache settings found for this model (see the model card): each skips a visible share of the
# transformer's work at a small, visible quality cost. Keys are diffusers config arguments.
RECOMMENDED_PAB = dict(
    spatial_attention_block_skip_range=2,
    spatial_attention_timestep_skip_range=(100, 800),
)
RECOMMENDED_FASTER_CACHE = dict(
    spatial_attention_block_skip_range=2,
    spatial_attention_timestep_skip_range=(-1, 681),
    unconditional_batch_skip_range=5,
    unconditional_batch_timestep_skip_range=(-1, 641),
    attention_weight=0.5,
    tensor_format="BFCHW",
)


# ------------------------------------------------------------------------------------------ judging
def _ideal_masks(h: int, w: int) -> dict[str, np.ndarray]:
    """Circle, square and triangle filling an h x w box (boolean, h x w)."""
    yy, xx = np.mgrid[0:h, 0:w]
    u = (xx + 0.5) / w  # 0..1 across the box
    v = (yy + 0.5) / h
    circle = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    square = np.ones((h, w), dtype=bool)
    triangle = np.abs(u - 0.5) <= 0.5 * v  # apex at the top centre, base at the bottom
    return {"circle": circle, "square": square, "triangle": triangle}


def shape_scores(mask: np.ndarray) -> dict[str, float] | None:
    """IoU of a boolean mask with each ideal shape drawn in the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    if len(ys) < MIN_PIXELS:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[y0:y1, x0:x1]
    out = {}
    for name, ideal in _ideal_masks(y1 - y0, x1 - x0).items():
        out[name] = float((box & ideal).sum() / max(1, (box | ideal).sum()))
    return out


def classify_motion(cx: np.ndarray, cy: np.ndarray, area: np.ndarray, t: np.ndarray) -> tuple[str, dict]:
    """Motion key from per-frame centroid (fractions of the side) and area (pixels) at frame times t."""
    span = float(t.max() - t.min()) if len(t) > 1 else 1.0
    if len(t) < 3:
        return "none", {"frames": int(len(t))}
    sx = np.polyfit(t, cx, 1)[0] * span  # fitted travel over the clip
    sy = np.polyfit(t, cy, 1)[0] * span
    la = np.polyfit(t, np.log(np.maximum(area, 1.0)), 1)[0] * span
    info = {"dx": float(sx), "dy": float(sy), "area_ratio": float(np.exp(la)), "frames": int(len(t))}
    if la > np.log(AREA_RATIO):
        return "growing", info
    if la < -np.log(AREA_RATIO):
        return "shrinking", info
    if max(abs(sx), abs(sy)) > TRAVEL_MIN:
        if abs(sx) >= abs(sy):
            return ("right" if sx > 0 else "left"), info
        return ("down" if sy > 0 else "up"), info
    return "still", info


def _clean(mask: np.ndarray) -> np.ndarray:
    """3x3 majority filter (drops speckles, keeps shapes), then the largest connected component."""
    from scipy import ndimage

    m = ndimage.uniform_filter(mask.astype(np.float32), size=3, mode="constant") > 0.5
    labels, k = ndimage.label(m)
    if k > 1:
        sizes = ndimage.sum(m, labels, index=range(1, k + 1))
        m = labels == (1 + int(np.argmax(sizes)))
    return m


def analyse_video(frames) -> dict:
    """Measure a clip: colours, per-frame masks, shape and motion. ``frames``: (F, H, W, 3), uint8 or
    float in [0, 1] (what ``CogVideoXPipeline(..., output_type="np")`` returns), or a list of PIL images."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64) * 255.0), 0, 255)
    arr = arr.astype(np.float32)
    n, h, w, _ = arr.shape
    ring = np.zeros((h, w), dtype=bool)
    k = 3
    ring[:k], ring[-k:], ring[:, :k], ring[:, -k:] = True, True, True, True
    bg = np.median(arr[:, ring], axis=(0, 1))
    d_bg = np.linalg.norm(arr - bg, axis=-1)
    far = d_bg > FG_DISTANCE
    fg = np.median(arr[far], axis=0) if far.sum() >= MIN_PIXELS else bg + FG_DISTANCE
    masks = np.zeros((n, h, w), dtype=bool)
    for _ in range(2):  # second pass: shape colour re-measured inside the cleaned masks
        d_fg = np.linalg.norm(arr - fg, axis=-1)
        masks = np.stack([_clean(m) for m in (d_fg < d_bg) & ~ring[None]])
        if masks.sum() >= MIN_PIXELS:
            fg = np.median(arr[masks], axis=0)
    cx, cy, area, t, scores = [], [], [], [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for f in range(n):
        m = masks[f]
        a = int(m.sum())
        if a < MIN_PIXELS:
            continue
        cx.append(float(xx[m].mean() + 0.5) / w)
        cy.append(float(yy[m].mean() + 0.5) / h)
        area.append(float(a))
        t.append(f)
        scores.append(shape_scores(m))
    mean_scores = {s: float(np.mean([sc[s] for sc in scores])) for s in vd.SHAPES} if scores else {}
    shape = max(mean_scores, key=mean_scores.get) if mean_scores else "none"
    motion, minfo = classify_motion(np.array(cx), np.array(cy), np.array(area), np.array(t, dtype=float))
    return {
        "background_colour": vd.nearest_colour(bg),
        "shape_colour": vd.nearest_colour(fg) if masks.sum() >= MIN_PIXELS else "none",
        "background_rgb": bg.tolist(),
        "shape_rgb": np.asarray(fg).tolist(),
        "shape": shape,
        "shape_scores": mean_scores,
        "motion": motion,
        "motion_info": minfo,
        "track": {"cx": cx, "cy": cy, "area": area, "frames": t},
    }


def judge_video(prompt: str, frames) -> dict:
    """Compare a generated clip with its prompt. All ``*_ok`` entries are booleans."""
    clip = vd.parse_caption(prompt)
    a = analyse_video(frames)
    out = {
        "prompt": prompt,
        "held_out": clip.held_out,
        "background_ok": a["background_colour"] == clip.background,
        "colour_ok": a["shape_colour"] == clip.colour,
        "shape_ok": a["shape"] == clip.shape,
        "motion_ok": a["motion"] == clip.motion,
        "seen": f"{a['shape_colour']} {a['shape']} {vd.MOTIONS.get(a['motion'], a['motion'])} on {a['background_colour']}",
        "analysis": a,
    }
    out["all_ok"] = out["background_ok"] and out["colour_ok"] and out["shape_ok"] and out["motion_ok"]
    return out


def rates(rows: list[dict]) -> dict:
    keys = ("background_ok", "colour_ok", "shape_ok", "motion_ok", "all_ok")
    out = {k.replace("_ok", ""): float(np.mean([r[k] for r in rows])) for k in keys}
    out["n"] = len(rows)
    for kind in ("left", "right", "up", "down", "growing", "shrinking", "still"):
        sub = [r for r in rows if vd.parse_caption(r["prompt"]).motion == kind]
        if sub:
            out[f"motion_{kind}"] = float(np.mean([r["motion_ok"] for r in sub]))
    return out


# --------------------------------------------------------------------------------------- generating
def load(model: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with open(os.path.join(model, "lab_defaults.json")) as f:
        defaults = json.load(f)
    return pipe, defaults


def generate(pipe, d: dict, prompt, seed: int, cfg: float | None = None, steps: int | None = None,
             output_type: str = "np", **kwargs):
    """One clip (or a list for a list of prompts) as (F, H, W, 3) float arrays, seeded."""
    import torch

    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    out = pipe(prompts, negative_prompt=[d["negative_prompt"]] * len(prompts),
               guidance_scale=d["guidance_scale"] if cfg is None else cfg,
               num_inference_steps=d["steps"] if steps is None else steps,
               height=d["height"], width=d["width"], num_frames=d["num_frames"],
               max_sequence_length=d["max_sequence_length"], output_type=output_type,
               generator=torch.Generator("cpu").manual_seed(seed), **kwargs).frames
    return out[0] if single else list(out)


def evaluate(pipe, d: dict, prompts: list[str], seeds, cfg: float | None = None, steps: int | None = None,
             batch: int = 8) -> tuple[dict, list[dict]]:
    """Adherence rates over prompts x seeds (prompts of one seed are generated as one batch)."""
    rows = []
    for s in seeds:
        for i in range(0, len(prompts), batch):
            chunk = prompts[i:i + batch]
            clips = generate(pipe, d, chunk, seed=1000 * s + i, cfg=cfg, steps=steps)
            rows += [judge_video(p, c) for p, c in zip(chunk, clips)]
    return rates(rows), rows


def eval_prompts(kind: str = "held_out", n: int | None = None, seed: int = 0) -> list[str]:
    """``held_out``: every held-out (colour, shape, motion) combination with every possible background
    (14 x 5 = 70 prompts); ``train``: as many plain prompts of trainable combinations, seeded."""
    if kind == "held_out":
        pool = [p for p in vd.all_captions(held_out=True) if p.split()[1] in vd.COLOURS]  # plain phrasing
    else:
        pool = [p for p in vd.all_captions(held_out=False) if p.split()[1] in vd.COLOURS]
        rng = np.random.default_rng(seed)
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size=70, replace=False))]
    if n is not None and n < len(pool):
        rng = np.random.default_rng(seed + 1)
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
    return pool


# -------------------------------------------------------------------------------------------- caches
class WorkCounter:
    """Counts the work of the nn.Linear layers inside ``transformer.transformer_blocks``: calls and
    multiply-accumulates (rows x in x out), so a halved batch (FasterCache's skipped unconditional
    branch) counts as half the work even though the layer is still called."""

    def __init__(self, transformer):
        import torch

        self.calls = 0
        self.macs = 0
        self.handles = []
        for module in transformer.transformer_blocks.modules():
            if isinstance(module, torch.nn.Linear):
                self.handles.append(module.register_forward_pre_hook(self._hook))

    def _hook(self, module, args):
        x = args[0]
        self.calls += 1
        self.macs += (x.numel() // x.shape[-1]) * module.in_features * module.out_features

    def reset(self):
        self.calls = self.macs = 0

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def make_cache_config(pipe, method: str, settings: dict, guidance_scale: float = 6.0):
    """A diffusers cache config for ``method`` ("pab" or "faster_cache") with ``settings``.

    FasterCache with ``is_guidance_distilled=False`` assumes a batch of [unconditional, conditional]
    and fails (IndexError in its block hook) when the pipeline runs without CFG (guidance_scale <= 1,
    batch of one): then it is set up as for a guidance-distilled model (attention reuse only)."""
    from diffusers import FasterCacheConfig, PyramidAttentionBroadcastConfig

    cb = lambda: pipe.current_timestep  # noqa: E731
    s = dict(settings)
    if method == "pab":
        return PyramidAttentionBroadcastConfig(current_timestep_callback=cb, **s)
    if method == "faster_cache":
        w = s.pop("attention_weight", 0.5)
        if guidance_scale <= 1.0:
            s["is_guidance_distilled"] = True
        return FasterCacheConfig(current_timestep_callback=cb, attention_weight_callback=lambda _: w, **s)
    raise ValueError(method)


def cache_check(pipe, d: dict, method: str, settings: dict, prompts: list[str], seed: int = 0,
                steps: int | None = None) -> dict:
    """Work fraction (Linear MACs and calls in the transformer blocks, cached / uncached) and PSNR of
    the cached frames against the uncached ones (same seed), plus the judge on both."""
    counter = WorkCounter(pipe.transformer)
    try:
        base = generate(pipe, d, prompts, seed=seed, steps=steps)
        base_calls, base_macs = counter.calls, counter.macs
        pipe.transformer.enable_cache(make_cache_config(pipe, method, settings, d["guidance_scale"]))
        try:
            counter.reset()
            cached = generate(pipe, d, prompts, seed=seed, steps=steps)
        finally:
            pipe.transformer.disable_cache()
        vals = [psnr(a, b) for a, b in zip(base, cached)]
        jb = [judge_video(p, c)["all_ok"] for p, c in zip(prompts, base)]
        jc = [judge_video(p, c)["all_ok"] for p, c in zip(prompts, cached)]
        return {
            "method": method, "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
            "work_fraction": counter.macs / base_macs, "call_fraction": counter.calls / base_calls,
            "psnr_db_mean": float(np.mean(vals)), "psnr_db_min": float(np.min(vals)),
            "all_ok_uncached": float(np.mean(jb)), "all_ok_cached": float(np.mean(jc)), "n": len(prompts),
        }
    finally:
        counter.remove()


PAB_SWEEP = [
    dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800)),
    dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1000)),
    dict(spatial_attention_block_skip_range=3, spatial_attention_timestep_skip_range=(100, 800)),
    dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 950)),
    dict(spatial_attention_block_skip_range=4, spatial_attention_timestep_skip_range=(100, 950)),
]
FASTER_CACHE_SWEEP = [
    dict(RECOMMENDED_FASTER_CACHE),
    dict(RECOMMENDED_FASTER_CACHE, unconditional_batch_skip_range=2),
    dict(RECOMMENDED_FASTER_CACHE, spatial_attention_timestep_skip_range=(-1, 900),
         unconditional_batch_timestep_skip_range=(-1, 900)),
    dict(RECOMMENDED_FASTER_CACHE, attention_weight=0.3),
]


# ------------------------------------------------------------------------------------------ calibrate
def calibrate(n: int = 300, seed: int = 5) -> dict:
    """Run the judge on rendered clips (clean, blurred, noisy): how often it is right, and the margins."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    out = {}
    for kind in ("clean", "blur", "noise"):
        rows, margins, travel, ratios = [], [], {"move": [], "still": []}, {"size": [], "fixed": []}
        for _ in range(n):
            clip = vd.sample_clip(rng, allow_held_out=True)
            frames = vd.render_clip(clip)
            if kind == "blur":
                frames = np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(1.5))) for f in frames])
            elif kind == "noise":
                frames = np.clip(frames + rng.normal(0, 25, frames.shape), 0, 255).astype(np.uint8)
            j = judge_video(vd.caption_clip(clip), frames)
            rows.append(j)
            sc = sorted(j["analysis"]["shape_scores"].values())
            margins.append(j["analysis"]["shape_scores"][clip.shape] - max(
                v for k, v in j["analysis"]["shape_scores"].items() if k != clip.shape))
            mi = j["analysis"]["motion_info"]
            tr = max(abs(mi["dx"]), abs(mi["dy"]))
            (travel["move"] if clip.motion in vd.DIRECTIONS else travel["still"]).append(tr)
            (ratios["size"] if clip.motion in ("growing", "shrinking") else ratios["fixed"]).append(
                abs(np.log(mi["area_ratio"])))
            del sc
        out[kind] = {
            **rates(rows),
            "shape_margin_min": float(np.min(margins)), "shape_margin_p5": float(np.percentile(margins, 5)),
            "travel_moving_min": float(np.min(travel["move"])), "travel_other_max": float(np.max(travel["still"])),
            "area_ratio_sized_min": float(np.exp(np.min(ratios["size"]))),
            "area_ratio_fixed_max": float(np.exp(np.max(ratios["fixed"]))),
        }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m embedded.video_evaluate")
    ap.add_argument("--model", default="assets/tiny-cogvideox")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--prompts", default="held_out", choices=["held_out", "train"])
    ap.add_argument("--cfg", default=None, help="comma-separated guidance scales (default: lab default)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cache", action="store_true", help="sweep PAB and FasterCache settings")
    ap.add_argument("--calibrate", action="store_true", help="only measure the judge on rendered clips")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.calibrate:
        print(json.dumps(calibrate(), indent=2))
        return
    import torch

    torch.set_num_threads(args.threads)
    pipe, d = load(args.model)
    print("defaults", d)
    prompts = eval_prompts(args.prompts)
    scales = [None] if args.cfg is None else [float(x) for x in args.cfg.split(",")]
    for cfg in scales:
        t = time.perf_counter()
        r, rows = evaluate(pipe, d, prompts, range(args.seeds), cfg=cfg, steps=args.steps)
        print(f"cfg {cfg if cfg is not None else d['guidance_scale']}: {json.dumps(r)} "
              f"({time.perf_counter() - t:.1f} s)")
        for row in [r_ for r_ in rows if not r_["all_ok"]][:12]:
            print("   ", row["prompt"], "->", row["seen"])
    if args.cache:
        sub = prompts[::5]
        for method, sweep in (("pab", PAB_SWEEP), ("faster_cache", FASTER_CACHE_SWEEP)):
            for settings in sweep:
                print("cache", json.dumps(cache_check(pipe, d, method, settings, sub, steps=args.steps)))


if __name__ == "__main__":
    main()
