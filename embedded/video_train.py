"""Train the tiny CogVideoX pipeline on procedural moving-shape clips, reproducibly, on a CPU.

    python -m embedded.video_train --out assets/tiny-cogvideox          # the full run (~1.7 h on 2 threads)
    python -m embedded.video_train --out /tmp/x --quick                 # a few steps, for tests
    python -m embedded.video_train --out assets/tiny-cogvideox --report-only   # redo card/samples/eval

Stages (all seeded; the same command gives bit-identical weights on the same machine/thread count,
and a run resumed from its checkpoint gives the same weights as one that was never interrupted,
because every step draws its batch and noise from generators seeded by (seed, stage, step)):

1. VAE (``AutoencoderKLCogVideoX``): L1 + MSE + a small KL on 9-frame clips, first on random
   32x32 crops (cheap), then on whole 64x64 clips (GroupNorm statistics of full frames), then on whole
   clips with the shape's pixels weighted (corners survive); the adherence judge is then run on
   reconstructions (the ceiling of what the transformer can draw); ``scaling_factor`` = 1 / std of the
   latents (CogVideoXPipeline has no shift).
2. Precompute: VAE latents (posterior mean) of a fixed set of clips, in the pipeline's
   (batch, frames, channels, height, width) layout, and T5 embeddings of every unique caption and of ""
   computed with the pipeline's own ``encode_prompt``.
3. Transformer: what CogVideoX is trained with: ``x_t = scheduler.add_noise(x0, noise, t)``, t uniform
   over the 1000 training timesteps, target ``scheduler.get_velocity(x0, noise, t)`` (v-prediction, the
   scheduler's ``prediction_type``; equivalent to CogVideoX's 1/(1 - alpha_bar)-weighted x0 loss),
   3D RoPE from the pipeline's own ``_prepare_rotary_positional_embeddings``, 10% of captions dropped
   to "" (classifier-free guidance), AdamW with warmup + cosine decay, EMA of the weights (saved).
4. Save the pipeline (safetensors). ``--report-only`` (or the end of a full run) then loads it back with
   ``DiffusionPipeline.from_pretrained`` like a user, picks the guidance scale on held-out prompts, and
   writes ``samples.png``, ``loss_curve.png``, ``loss.csv``, ``lab_defaults.json``, ``train_info.json``
   and ``README.md``.

Checkpoints go to ``--ckpt-dir`` (default under /tmp, never into the repository).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import sys
import time
from pathlib import Path

# Let idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
# make a busy neighbour (and this run) many times slower. Only effective before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from . import video_architecture as architecture  # noqa: E402
from . import video_dataset as vd  # noqa: E402
from .train import LossLog, cosine_lr, log, optimizer_step, record_progress, setup_determinism  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embedded.video_train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write the pipeline to")
    p.add_argument("--ckpt-dir", default=None,
                   help="checkpoints (default /tmp/tiny-cogvideox-ckpt-<seed>, or <out>/.ckpt with --quick)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--vae-steps", type=int, default=1500, help="VAE steps on 32x32 crops")
    p.add_argument("--vae-full-steps", type=int, default=300, help="then VAE steps on whole 64x64 clips")
    p.add_argument("--vae-refine-steps", type=int, default=2400,
                   help="then VAE steps on whole clips with shape pixels weighted (own cosine schedule, lr / 4)")
    p.add_argument("--fg-weight", type=float, default=10.0,
                   help="loss weight of shape pixels (and a 1-pixel ring around them) in the refinement")
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-full-batch", type=int, default=4)
    p.add_argument("--vae-clips", type=int, default=3000)
    p.add_argument("--vae-crop", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--steps", type=int, default=6500, help="transformer optimisation steps")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--clips", type=int, default=8000, help="fixed training clips for the transformer")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tf-fg-weight", type=float, default=4.0,
                   help="transformer loss weight of the latent pixels the shape touches (1 = plain MSE)")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--ema", type=float, default=0.9995)
    p.add_argument("--cfg-drop", type=float, default=0.1, help="share of captions replaced by ''")
    p.add_argument("--max-sequence-length", type=int, default=architecture.MAX_SEQUENCE_LENGTH)
    p.add_argument("--ckpt-every", type=int, default=500, help="transformer steps between checkpoints")
    p.add_argument("--eval-steps", type=int, default=20, help="inference steps for the report")
    p.add_argument("--cfg-scales", default="1,3,5,7")
    p.add_argument("--quick", action="store_true", help="tiny sizes for tests: a few steps of everything")
    p.add_argument("--no-report", action="store_true", help="skip evaluation, samples and model card")
    p.add_argument("--report-only", action="store_true",
                   help="redo only the evaluation, samples and model card of an already trained --out")
    args = p.parse_args(argv)
    if args.quick:
        args.vae_steps, args.vae_full_steps, args.vae_batch, args.vae_full_batch, args.vae_clips = 2, 1, 2, 1, 8
        args.vae_refine_steps = 1
        args.steps, args.batch, args.clips, args.warmup, args.ckpt_every = 3, 4, 16, 1, 2
        args.eval_steps, args.cfg_scales = 2, "3"
    if args.ckpt_dir is None:
        args.ckpt_dir = str(Path(args.out) / ".ckpt") if args.quick else f"/tmp/tiny-cogvideox-ckpt-{args.seed}"
    return args


def to_tensor(clips: np.ndarray) -> torch.Tensor:
    """uint8 (N, F, H, W, 3) -> float (N, 3, F, H, W) in [-1, 1] (what the VAE sees in CogVideoX)."""
    return torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def step_rng(seed: int, stage: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """Generators for one step, a pure function of (seed, stage, step): resuming changes nothing."""
    rng = np.random.default_rng([seed, stage, step])
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, g


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    _CLOCK.save(path.parent)


class _Clock:
    """Wall time of the run summed over resumptions (kept next to the checkpoints)."""

    def __init__(self):
        self.start, self.before = time.time(), 0.0

    def load(self, ckpt: Path) -> None:
        f = ckpt / "elapsed.json"
        self.before = json.loads(f.read_text())["s"] if f.exists() else 0.0

    def elapsed(self) -> float:
        return self.before + time.time() - self.start

    def save(self, ckpt: Path) -> None:
        (ckpt / "elapsed.json").write_text(json.dumps({"s": self.elapsed()}))


_CLOCK = _Clock()


# ---------------------------------------------------------------------------------------------- VAE
def shape_mask(x: torch.Tensor) -> torch.Tensor:
    """1 on the pixels of clips (N, 3, F, H, W) that differ from the frame's corner (the background) and on a
    1-pixel ring around them, 0 elsewhere: (N, 1, F, H, W)."""
    fg = ((x - x[..., :1, :1]).abs().amax(dim=1, keepdim=True) > 0.05).float()  # (N, 1, F, H, W)
    n, _, f, h, w = fg.shape
    ring = F.max_pool2d(fg.transpose(1, 2).reshape(n * f, 1, h, w), 3, stride=1, padding=1)
    return ring.reshape(n, f, 1, h, w).transpose(1, 2)


def shape_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights for clips (N, 3, F, H, W): ``weight`` on the shape and its ring (`shape_mask`),
    1 elsewhere. The shape covers about a tenth of a frame and its outline much less; with uniform weights
    the VAE rounds triangles' and squares' corners off."""
    return 1.0 + (weight - 1.0) * shape_mask(x)


def latent_shape_mask(x: torch.Tensor) -> torch.Tensor:
    """`shape_mask` of clips (N, 3, F, H, W) on the latent grid, (N, F', 1, h, w) uint8: a latent pixel is 1 when
    the shape touches any pixel of any frame it encodes (frame 1 alone, then groups of 4, as the causal VAE)."""
    m = shape_mask(x)[:, 0]  # N, F, H, W
    first, rest = m[:, :1], m[:, 1:]
    n, f, h, w = rest.shape
    groups = [first] + [rest[:, i:i + 4].amax(dim=1, keepdim=True) for i in range(0, f, 4)]
    t = torch.cat(groups, dim=1)  # N, F', H, W
    k = architecture.VAE_SPATIAL_FACTOR
    pooled = F.max_pool2d(t, k, stride=k)
    return pooled.unsqueeze(2).to(torch.uint8)


def train_vae(vae, args, losslog: LossLog, ckpt: Path) -> None:
    """Crops, then whole clips (one cosine schedule), then whole clips with shape pixels weighted (its own
    schedule, so the first two stages do not depend on the third's length)."""
    main_total = args.vae_steps + args.vae_full_steps
    total = main_total + args.vae_refine_steps
    state_path = ckpt / "vae.pt"
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    start = 0
    if state_path.exists() and not args.fresh:
        st = torch.load(state_path, weights_only=False)
        vae.load_state_dict(st["vae"])
        opt.load_state_dict(st["opt"])
        start, losslog.rows = st["step"], st["rows"]
        log(f"vae: resumed at step {start}/{total}")
    if start >= total:
        vae.eval().requires_grad_(False)
        return
    clips, _ = vd.sample_dataset(args.vae_clips, seed=args.seed * 1000 + 1, allow_held_out=False)
    data = to_tensor(clips)  # (N, 3, F, 64, 64)
    del clips
    n, size = len(data), vd.VIDEO_SIZE
    t0, running = time.time(), []
    for step in range(start, total):
        rng, g = step_rng(args.seed, 2, step)
        if step < main_total:
            lr = cosine_lr(step, main_total, args.vae_lr, warmup=min(100, main_total // 10 + 1))
        else:
            refine = args.vae_refine_steps
            lr = cosine_lr(step - main_total, refine, args.vae_lr / 4, warmup=min(50, refine // 10 + 1))
        for group in opt.param_groups:
            group["lr"] = lr
        if step < args.vae_steps:
            b, c = args.vae_batch, args.vae_crop
        else:
            b, c = args.vae_full_batch, size
        idx = rng.integers(n, size=b)
        ys = rng.integers(0, size - c + 1, size=b)
        xs = rng.integers(0, size - c + 1, size=b)
        x = torch.stack([data[i, :, :, y:y + c, xx:xx + c] for i, y, xx in zip(idx, ys, xs)])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = posterior.kl().mean() / x[0].numel()  # per-sample KL sum, in units of the per-pixel means
        if step < main_total:
            loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + args.kl_weight * kl
        else:
            wts = shape_weights(x, args.fg_weight)
            err = rec - x
            loss = ((err.abs() + err.square()) * wts).sum() / (wts.sum() * 3) + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == total:
            losslog.add("vae", step + 1, float(np.mean(running)), lr)
            running = []
        if (step + 1) % 200 == 0 or step + 1 == total:
            log(f"vae step {step + 1}/{total} loss {losslog.rows[-1]['loss']:.4f} ({time.time() - t0:.0f}s)")
            losslog.write()
        if (step + 1) % 200 == 0 or step + 1 == total:
            _atomic_save({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                          "rows": losslog.rows}, state_path)
    vae.eval().requires_grad_(False)


@torch.no_grad()
def vae_reconstruction_check(vae, n: int = 48, seed: int = 123) -> dict:
    """The adherence judge on VAE reconstructions of fresh clips: what the latent space can carry at best."""
    from . import video_evaluate as ve

    clips, captions = vd.sample_dataset(n, seed=seed)
    rec = vae.decode(vae.encode(to_tensor(clips)).latent_dist.mean).sample
    frames = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
    return ve.rates([ve.judge_video(c, f) for c, f in zip(captions, frames)])


@torch.no_grad()
def encode_clips(vae, n: int, seed: int, chunk: int = 250) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Render ``n`` training clips chunk by chunk and encode them: latents (n, F', C, h, w), the shape's
    `latent_shape_mask` (n, F', 1, h, w), captions."""
    rng = np.random.default_rng(seed)
    lat, masks, captions = [], [], []
    for i in range(0, n, chunk):
        k = min(chunk, n - i)
        clips = np.empty((k, vd.NUM_FRAMES, vd.VIDEO_SIZE, vd.VIDEO_SIZE, 3), dtype=np.uint8)
        for j in range(k):
            clip = vd.sample_clip(rng)
            clips[j] = vd.render_clip(clip)
            captions.append(vd.caption_clip(clip))
        for j in range(0, k, 50):
            x = to_tensor(clips[j:j + 50])
            lat.append(vae.encode(x).latent_dist.mean.permute(0, 2, 1, 3, 4).contiguous())  # -> B, F, C, H, W
            masks.append(latent_shape_mask(x))
        if (i // chunk) % 20 == 0:
            log(f"encoded {i + k}/{n} clips")
    return torch.cat(lat), torch.cat(masks), captions


@torch.no_grad()
def encode_captions(pipe, captions: list[str], max_len: int, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(captions), batch):
        e, _ = pipe.encode_prompt(captions[i:i + batch], do_classifier_free_guidance=False,
                                  max_sequence_length=max_len, device=torch.device("cpu"))
        out.append(e)
    return torch.cat(out)


# -------------------------------------------------------------------------------------- transformer
def prepare_latents(pipe, args, ckpt: Path) -> dict:
    path = ckpt / "latents.pt"
    if path.exists() and not args.fresh:
        data = torch.load(path, weights_only=False)
        if data["n"] == args.clips and "shape_mask" in data:
            log("latents: loaded from checkpoint")
            pipe.vae.register_to_config(scaling_factor=data["scaling_factor"])
            return data
    log(f"rendering and encoding {args.clips} training clips")
    lat, masks, captions = encode_clips(pipe.vae, args.clips, seed=args.seed * 1000 + 3)
    mean, std = lat.mean().item(), lat.std().item()
    scale = round(1.0 / std, 6)
    pipe.vae.register_to_config(scaling_factor=scale)
    unique = sorted(set(captions) | {""})
    cap_index = {c: i for i, c in enumerate(unique)}
    log(f"encoding {len(unique)} unique captions (max_sequence_length={args.max_sequence_length})")
    data = {
        "n": args.clips, "latents": lat * scale, "shape_mask": masks, "cap_idx": torch.tensor([cap_index[c] for c in captions]),
        "empty_idx": cap_index[""], "txt_emb": encode_captions(pipe, unique, args.max_sequence_length),
        "scaling_factor": scale, "latent_mean": mean, "latent_std": std, "unique_captions": len(unique) - 1,
    }
    _atomic_save(data, path)
    return data


def train_transformer(pipe, args, losslog: LossLog, ckpt: Path) -> dict:
    data = prepare_latents(pipe, args, ckpt)
    latents, cap_idx, txt_emb, empty_idx = data["latents"], data["cap_idx"], data["txt_emb"], data["empty_idx"]
    shape_masks = data["shape_mask"]
    n, frames, ch, h, w = latents.shape
    scheduler, transformer = pipe.scheduler, pipe.transformer
    size = vd.VIDEO_SIZE
    # The pipeline's own RoPE tables for this size (what it passes at inference).
    rotary = (pipe._prepare_rotary_positional_embeddings(size, size, frames, torch.device("cpu"))
              if transformer.config.use_rotary_positional_embeddings else None)
    alphas_cumprod = scheduler.alphas_cumprod
    transformer.train().requires_grad_(True)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    decay = [p for nme, p in transformer.named_parameters() if p.ndim >= 2 and "embed" not in nme]
    other = [p for nme, p in transformer.named_parameters() if not (p.ndim >= 2 and "embed" not in nme)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99))
    start = 0
    state_path = ckpt / "transformer.pt"
    vae_rows = [r for r in losslog.rows if r["phase"] == "vae"]
    if state_path.exists() and not args.fresh:
        st = torch.load(state_path, weights_only=False)
        transformer.load_state_dict(st["transformer"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        start = st["step"]
        losslog.rows = vae_rows + [r for r in st["rows"] if r["phase"] == "transformer"]
        log(f"transformer: resumed at step {start}/{args.steps}")
    ema_params, params = list(ema.parameters()), list(transformer.parameters())
    t0, running = time.time(), []
    log(f"transformer: {architecture.count_parameters(transformer):,} params, {args.steps} steps x batch "
        f"{args.batch}, {n} clips, latents {tuple(latents.shape[1:])}")
    for step in range(start, args.steps):
        rng, g = step_rng(args.seed, 4, step)
        lr = cosine_lr(step, args.steps, args.lr, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.from_numpy(rng.integers(n, size=args.batch))
        ci = cap_idx[idx].clone()
        ci[torch.from_numpy(rng.random(args.batch) < args.cfg_drop)] = empty_idx
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=g)
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = transformer(hidden_states=xt, encoder_hidden_states=txt_emb[ci], timestep=t,
                           image_rotary_emb=rotary, return_dict=False)[0]
        # MSE with the latent pixels the shape touches weighted x tf_fg_weight (normalised: 1 = plain MSE).
        # The shape is a tenth of a frame: with plain MSE the model learned colour and motion but not shape.
        wts = 1.0 + (args.tf_fg_weight - 1.0) * shape_masks[idx].float()
        loss = ((pred - target).square() * wts).sum() / (wts.sum() * ch)
        optimizer_step(loss, opt, params, ema_params, ema=args.ema, step=step)
        running = record_progress(losslog, running, loss, step=step, total=args.steps, lr=lr, t0=t0,
                                  samples=(step + 1 - start) * args.batch)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            _atomic_save({"transformer": transformer.state_dict(), "ema": ema.state_dict(),
                          "opt": opt.state_dict(), "step": step + 1, "rows": losslog.rows}, state_path)
    del alphas_cumprod
    pipe.transformer = ema.eval()
    pipe.register_modules(transformer=pipe.transformer)
    return {k: data[k] for k in ("scaling_factor", "latent_mean", "latent_std", "unique_captions")}


# ------------------------------------------------------------------------------------------- report
SAMPLE_PROMPTS = [
    "a red circle moving right on a blue background",
    "a yellow triangle moving up on a black background",
    "a small green square growing on a black background",
    "a white circle shrinking on a red background",
    "a blue square moving down on a white background",
    "a large black triangle staying still on a yellow background",
    # held-out combinations (never trained on)
    "a red circle moving left on a white background",
    "a blue triangle moving up on a yellow background",
    "a white square growing on a green background",
    "a red triangle staying still on a blue background",
]


def save_samples(clips, prompts, path: Path) -> None:
    """One row per prompt: the clip's frames side by side."""
    from matplotlib.figure import Figure

    rows = len(clips)
    fig = Figure(figsize=(10, 1.32 * rows), dpi=100)
    for i, (frames, prompt) in enumerate(zip(clips, prompts)):
        ax = fig.add_subplot(rows, 1, i + 1)
        strip = np.concatenate([np.asarray(f) for f in frames], axis=1)
        ax.imshow(strip, interpolation="nearest")
        ax.set_axis_off()
        held = " (held out)" if vd.parse_caption(prompt).held_out else ""
        ax.set_title(prompt + held, fontsize=8, pad=2)
    fig.tight_layout(pad=0.3, h_pad=0.4)
    fig.savefig(path)


def save_loss_curve(losslog: LossLog, path: Path) -> None:
    from .train import save_loss_curve as image_save_loss_curve

    image_save_loss_curve(losslog, path)


def _fmt_settings(s: dict) -> str:
    return ", ".join(f"`{k}={tuple(v) if isinstance(v, list) else v}`" for k, v in s.items())


def write_model_card(out: Path, args, info: dict) -> None:
    cmd = info.get("command", "python -m embedded.video_train --out assets/tiny-cogvideox")
    p = info["params"]
    d = info["defaults"]
    evals = "\n".join(
        f"| {e['cfg']:g} | {100 * e['background']:.0f}% | {100 * e['colour']:.0f}% | {100 * e['shape']:.0f}% | "
        f"{100 * e['motion']:.0f}% | {100 * e['all']:.0f}% |"
        for e in info.get("cfg_evals", [])
    )
    final = info.get("final_eval", {})
    indist = info.get("train_eval", {})
    motions = ", ".join(f"{k[7:]} {100 * v:.0f}%" for k, v in final.items() if k.startswith("motion_"))
    cache_rows = "\n".join(
        f"| {c['label']} | {_fmt_settings(c['settings'])} | {c['work_fraction']:.2f} | {c['call_fraction']:.2f} | "
        f"{c['psnr_db_mean']:.1f} (min {c['psnr_db_min']:.1f}) | {100 * c['all_ok_uncached']:.0f}% -> {100 * c['all_ok_cached']:.0f}% |"
        for c in info.get("cache", [])
    )
    held = "\n".join(f"  * {c} {s} {vd.MOTIONS[m]}" for c, s, m in vd.HELD_OUT)
    from .video_evaluate import ADHERENCE_BARS

    bars = ", ".join(f"{k} {100 * v:.0f}%" for k, v in ADHERENCE_BARS.items())
    lat = vd.VIDEO_SIZE // architecture.VAE_SPATIAL_FACTOR
    tok = lat // architecture.TRANSFORMER_CONFIG["patch_size"]
    shape_by_cfg = ", ".join(f"shape {100 * e['shape']:.0f}% at guidance {e['cfg']:g}" for e in info.get("cfg_evals", []))
    vae_check = info.get("vae_reconstruction") or {}
    vae_line = (f"The same judge on VAE reconstructions of 48 rendered clips (what the latent space can carry at best): "
                f"background {100 * vae_check.get('background', 0):.0f}%, shape colour {100 * vae_check.get('colour', 0):.0f}%, "
                f"shape {100 * vae_check.get('shape', 0):.0f}%, motion {100 * vae_check.get('motion', 0):.0f}%."
                if vae_check else "")
    text = f"""---
library_name: diffusers
pipeline_tag: text-to-video
tags: [cogvideox, tiny, procedural, cpu, video]
---

# tiny-cogvideox: a {sum(p.values()) / 1e6:.1f} M-parameter CogVideoX pipeline trained on moving shapes

A real `diffusers.CogVideoXPipeline` (CogVideoX architecture, every part shrunk) trained from scratch,
on a CPU, on procedurally generated clips of **one coloured shape moving on a plain background**. It
loads offline with `DiffusionPipeline.from_pretrained("assets/tiny-cogvideox", local_files_only=True)` and
makes a {d['num_frames']}-frame {d['width']}x{d['height']} clip in well under a second on a CPU. It exists so that video-only
optimizations (Pyramid Attention Broadcast, FasterCache) can be tried on a model that draws real motion.

```python
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

pipe = DiffusionPipeline.from_pretrained("assets/tiny-cogvideox", local_files_only=True)
frames = pipe("{d['prompt']}", negative_prompt="", guidance_scale={d['guidance_scale']:g},
              num_inference_steps={d['steps']}, height={d['height']}, width={d['width']}, num_frames={d['num_frames']},
              max_sequence_length={d['max_sequence_length']}, generator=torch.Generator("cpu").manual_seed(0)).frames[0]
export_to_video(frames, "clip.mp4", fps={d['fps']})  # needs imageio/opencv; the frames are PIL images
```

Pass `height`/`width`/`num_frames` (the defaults come from the transformer config and happen to be these)
and `max_sequence_length={d['max_sequence_length']}` (the pipeline's default is 226; the model uses RoPE so other lengths run,
but the padding changes the pictures). `num_frames` must be 4k+1 (temporal compression 4); only 9 was trained.
Guidance is CogVideoX's ordinary classifier-free guidance (`guidance_scale` > 1: the negative and the positive
prompt go through the transformer as one batch of two). `lab_defaults.json` holds the settings the app uses.

![samples](samples.png)

Each row is one clip (frames left to right) at the defaults, seed 0. Rows marked *held out* ask for a
colour x shape x motion combination that never occurred in training.

## Training data

Generated in code by `embedded/video_dataset.py` (numpy + PIL, nothing downloaded): {vd.NUM_FRAMES} frames of
{vd.VIDEO_SIZE}x{vd.VIDEO_SIZE} RGB, one anti-aliased shape.

* colours (shape and background, never equal): {", ".join(vd.COLOURS)}
* shapes: {", ".join(vd.SHAPES)}
* motions: {", ".join(vd.MOTIONS.values())}. A move covers {vd.TRAVEL:.0%} ± {vd.JITTER_TRAVEL:.0%} of the side over
  the clip (≈{vd.TRAVEL * vd.VIDEO_SIZE / (vd.NUM_FRAMES - 1):.1f} px per frame), on a path placed at random across it; growing goes from a
  half-extent of {vd.GROW_RANGE[0]:.1%} to {vd.GROW_RANGE[1]:.0%} of the side (area x{(vd.GROW_RANGE[1] / vd.GROW_RANGE[0]) ** 2:.0f}), shrinking the reverse; a still shape sits
  anywhere within ±{vd.JITTER_STILL:.0%} of the centre.
* size words: `small` / `large` (none = medium) for moving and still shapes: half-extents of
  {", ".join(f"{v:.0%}" for v in vd.SIZES.values())} of the side (small, medium, large); growing shapes start small
  and shrinking ones large, so `a small green square growing ...` = `a green square growing ...`.
* captions: `a [size] {{colour}} {{shape}} {{motion}} on a {{colour}} background`, half without a size word
  ({len(vd.all_captions())} distinct captions; {len(vd.all_captions(False))} trainable, the training set used {info['unique_captions']}).
* held out: these {len(vd.HELD_OUT)} colour x shape x motion combinations, with any background
  ({len(vd.all_captions(True))} captions), are never drawn for training (every colour, shape and motion still
  appears in other combinations):
{held}

## Architecture

| part | class | size |
| --- | --- | --- |
| transformer | `CogVideoXTransformer3DModel`: {architecture.TRANSFORMER_CONFIG['num_layers']} blocks, {architecture.TRANSFORMER_CONFIG['num_attention_heads']} heads x {architecture.TRANSFORMER_CONFIG['attention_head_dim']}, patch 2 (no temporal patch, CogVideoX 1.0 layout), 3D RoPE (as CogVideoX-5b), time embedding {architecture.TRANSFORMER_CONFIG['time_embed_dim']}, text width 64 | {p['transformer']:,} params |
| vae | `AutoencoderKLCogVideoX`: {architecture.VAE_CONFIG['block_out_channels']} channels, 1 layer per block, {architecture.LATENT_CHANNELS} latent channels, spatial factor {architecture.VAE_SPATIAL_FACTOR}, temporal compression 4 (causal 3D convs) | {p['vae']:,} params |
| text_encoder | `T5EncoderModel`, 2 layers, width 64, random and frozen (first-layer relative-position bias sharpened) + Unigram `T5Tokenizer`, one piece per word | {p['text_encoder']:,} params |
| scheduler | `CogVideoXDDIMScheduler`: v-prediction, scaled-linear betas, zero terminal SNR, trailing spacing, `snr_shift_scale=1.0` (CogVideoX-5b's settings) | |

A {vd.NUM_FRAMES}x{vd.VIDEO_SIZE}x{vd.VIDEO_SIZE} clip becomes 3x{lat}x{lat} latents with {architecture.LATENT_CHANNELS} channels (frames 1 | 2-5 | 6-9), i.e. 3 x {tok} x {tok} = {3 * tok * tok} video
tokens (each 2x2 latent pixels, {2 * architecture.VAE_SPATIAL_FACTOR}x{2 * architecture.VAE_SPATIAL_FACTOR} image pixels) next to {d['max_sequence_length']} text tokens in every joint attention. Weights on disk: {info['size_mb']:.1f} MB (float32 safetensors).
VAE `scaling_factor={info['scaling_factor']:.4f}` (1 / std of the latents; their mean is {info['latent_mean']:+.3f} and CogVideoX has no shift).

## Training recipe

* VAE: {args.vae_steps} steps of batch {args.vae_batch} random {args.vae_crop}x{args.vae_crop} crops (all 9 frames) + {args.vae_full_steps} steps of batch
  {args.vae_full_batch} whole clips, from {args.vae_clips} clips; L1 + MSE + {args.kl_weight:g} x KL; AdamW {args.vae_lr:g}, cosine. Then
  {args.vae_refine_steps} steps on whole clips with the shape's pixels and a 1-pixel ring around them weighted x{args.fg_weight:g}
  (AdamW {args.vae_lr / 4:g}, its own cosine): with uniform weights the VAE rounded triangles' corners off.
* Transformer: v-prediction exactly as CogVideoX (`scheduler.add_noise`, target `scheduler.get_velocity`, t uniform
  over 0..999), {args.steps} steps x batch {args.batch} over {args.clips} fixed clips (latents and T5 embeddings precomputed
  with the pipeline's own `encode_prompt`, `max_sequence_length={args.max_sequence_length}`), {args.cfg_drop:.0%} of captions dropped to "",
  AdamW lr {args.lr:g} (warmup {args.warmup}, cosine), weight decay 0.01, grad clip 1, EMA {args.ema} (saved weights are the EMA).
  The MSE weights the latent pixels the shape touches x{args.tf_fg_weight:g} (normalised by the weights' sum): the shape
  is about a tenth of a frame, and with plain MSE an earlier run learned colour and motion but drew every shape as a blob.
* Seeded throughout (`--seed {args.seed}`), `torch.use_deterministic_algorithms(True)`, {args.threads} thread(s);
  every step draws from generators seeded by (seed, stage, step), so a resumed run equals an uninterrupted one.
* Final transformer loss (mean of the last 200 steps): {info['final_loss']:.4f}. VAE final loss: {info['vae_loss']:.4f}.
* Wall time: {info['wall_min']:.0f} min ({info['machine']}).

![loss](loss_curve.png)

## Evaluation

`embedded/video_evaluate.py` judges each clip from its pixels: background colour (median of the border ring),
shape colour (median of the pixels far from the background), shape (IoU with an ideal circle / square /
triangle drawn in the mask's bounding box, averaged over the frames: on rendered clips the right shape wins by
≥ 0.08 IoU), motion (lines fitted to the centroid track and log-area: area x2 or more = growing/shrinking, else a
travel over 15% of the side = a move in the larger direction, else still; the data's moves travel ≥ 25%, still and
growing shapes < 7%, sized changes ≥ x6.5). On rendered clips the judge is right 100% of the time
(`python -m embedded.video_evaluate --calibrate`). {vae_line}

Guidance scale, {info['n_cfg_eval']} held-out prompts x 1 seed, {d['steps']} steps (the default is the scale with most clips fully right):

| guidance_scale | background | shape colour | shape | motion | all four |
| --- | --- | --- | --- | --- | --- |
{evals}

At the default (guidance {d['guidance_scale']:g}, {d['steps']} steps):

* **held-out combinations** ({final.get('n', 0)} clips: {final.get('n', 0) // info.get('final_seeds', 2)} plain held-out prompts x {info.get('final_seeds', 2)} seeds):
  background {100 * final.get('background', 0):.0f}%, shape colour {100 * final.get('colour', 0):.0f}%, shape {100 * final.get('shape', 0):.0f}%,
  motion {100 * final.get('motion', 0):.0f}%, all four {100 * final.get('all', 0):.0f}%. Motion by kind: {motions}.
* trained combinations ({indist.get('n', 0)} clips): background {100 * indist.get('background', 0):.0f}%, shape colour
  {100 * indist.get('colour', 0):.0f}%, shape {100 * indist.get('shape', 0):.0f}%, motion {100 * indist.get('motion', 0):.0f}%, all four {100 * indist.get('all', 0):.0f}%.

`tests/test_embedded_video_model.py` generates one plain prompt per held-out combination (14 clips, seed 0, defaults)
and requires at least: {bars}.

## Caches: Pyramid Attention Broadcast and FasterCache

Measured on {info.get('cache_n', 0)} held-out prompts at the defaults, seed 0. *Work* is the multiply-accumulates of the
`nn.Linear` layers inside `transformer.transformer_blocks` with the cache / without (a FasterCache step that
drops the unconditional half of the batch counts half); *calls* counts their forward calls; PSNR of the cached
frames against the uncached ones (same seed); last column: clips judged fully right, uncached -> cached.

| cache | settings | work | calls | PSNR dB | all four right |
| --- | --- | --- | --- | --- | --- |
{cache_rows}

The recommended settings are in `presets/video-pab.json` and `presets/video-faster-cache.json`. In
diffusers {info.get('diffusers_version', '')} on CogVideoX: every block has one *joint* text+video attention (`attn1`, not a
cross-attention), so PAB's `cross_attention_block_skip_range` matches nothing (its cross identifiers need
`is_cross_attention`), and there are no `temporal_transformer_blocks`, so the temporal ranges match nothing
either: only the spatial range acts, on all `transformer_blocks.*.attn1`. FasterCache applies to the same
layers (`^transformer_blocks.*attn`) plus a denoiser hook that drops the unconditional half of the CFG batch
and rebuilds it from frequency-split differences; its attention reuse only happens on steps where that half is
dropped. The output is (batch, frames, channels, height, width): `tensor_format="BFCHW"`.

## Rebuild

From the repository root (CPU):

```
{cmd}
```

## Known limitations

* It knows only its vocabulary; other prompts give a random-looking shape clip.
* Only 64x64 and 9 frames are trained. Other multiples of 16 and 13, 17... frames run, but look worse.
* Edges are soft and outlines lumpy: the shape is right on {100 * final.get('shape', 0):.0f}% of held-out clips (chance among
  three is 33%), and a missed square or triangle is judged a circle. Colours and motion are the reliable parts.
* The shape needs guidance: {shape_by_cfg}. The default guidance
  runs the transformer on a batch of two (negative and positive prompt) at every step.
* Speed at the defaults on this machine: {info.get('sec_per_clip', float('nan')):.2f} s per clip ({args.threads} thread(s) of a shared 2-core CPU).
"""
    (out / "README.md").write_text(text)


def report(out: Path, args, info: dict, losslog: LossLog) -> None:
    import diffusers

    from . import video_evaluate as ve

    pipe, _ = ve.load(str(out)) if (out / "lab_defaults.json").exists() else (None, None)
    if pipe is None:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(str(out), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
    d = {"prompt": SAMPLE_PROMPTS[0], "negative_prompt": "", "steps": args.eval_steps, "width": vd.VIDEO_SIZE,
         "height": vd.VIDEO_SIZE, "guidance_scale": 1.0, "max_sequence_length": args.max_sequence_length,
         "num_frames": vd.NUM_FRAMES, "fps": vd.FPS}
    quick = args.quick
    select = ve.eval_prompts("held_out", n=2 if quick else 35, seed=11)
    cfg_evals = []
    for cfg in [float(x) for x in args.cfg_scales.split(",")]:
        r, _ = ve.evaluate(pipe, d, select, seeds=[7], cfg=cfg)
        r["cfg"] = cfg
        log(f"eval cfg {cfg:g}: " + " ".join(f"{k} {v:.2f}" for k, v in r.items() if k in
                                              ("background", "colour", "shape", "motion", "all")))
        cfg_evals.append(r)
    best = max(cfg_evals, key=lambda e: (round(e["all"], 6), round(e["motion"] + e["shape"], 6), -e["cfg"]))
    d["guidance_scale"] = best["cfg"]
    (out / "lab_defaults.json").write_text(json.dumps(d, indent=2) + "\n")
    held = ve.eval_prompts("held_out", n=2 if quick else None)
    seeds = [0] if quick else [0, 1]
    final, _ = ve.evaluate(pipe, d, held, seeds=seeds)
    train_eval, _ = ve.evaluate(pipe, d, ve.eval_prompts("train", n=2 if quick else None), seeds=[0])
    log(f"held-out: {final}")
    log(f"trained combinations: {train_eval}")
    samples = SAMPLE_PROMPTS[:2] if quick else SAMPLE_PROMPTS
    clips = [ve.generate(pipe, d, p, seed=0, output_type="pil") for p in samples]
    save_samples(clips, samples, out / "samples.png")
    save_loss_curve(losslog, out / "loss_curve.png")
    cache = []
    cache_prompts = held[::7] if not quick else held[:1]
    for label, method, settings in (("PAB", "pab", ve.RECOMMENDED_PAB),
                                    ("FasterCache", "faster_cache", ve.RECOMMENDED_FASTER_CACHE)):
        c = ve.cache_check(pipe, d, method, settings, cache_prompts)
        c["label"] = label
        cache.append(c)
        log(f"cache {label}: work {c['work_fraction']:.2f} calls {c['call_fraction']:.2f} PSNR {c['psnr_db_mean']:.1f}")
    ve.generate(pipe, d, d["prompt"], seed=0)  # warm-up
    t = time.perf_counter()
    runs = 1 if quick else 3
    for s in range(runs):
        ve.generate(pipe, d, d["prompt"], seed=s)
    info.update(defaults=d, cfg_evals=cfg_evals, n_cfg_eval=len(select), final_eval=final, final_seeds=len(seeds),
                train_eval=train_eval, cache=cache, cache_n=len(cache_prompts),
                sec_per_clip=(time.perf_counter() - t) / runs, diffusers_version=diffusers.__version__,
                size_mb=sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 1e6)
    write_model_card(out, args, info)


def main(argv=None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_determinism(args.seed, args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if args.fresh:
        for name in ("vae.pt", "latents.pt", "transformer.pt", "elapsed.json"):
            (ckpt / name).unlink(missing_ok=True)
    _CLOCK.load(ckpt)
    if args.report_only:
        losslog = LossLog(None)
        with open(out / "loss.csv") as f:
            losslog.rows = [{**r, "step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"])}
                            for r in csv.DictReader(f)]
        info = json.loads((out / "train_info.json").read_text())
        report(out, args, info, losslog)
        (out / "train_info.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
        log(f"report redone in {(time.time() - t_start) / 60:.1f} min -> {out}")
        return out
    pipe = architecture.build_pipeline(args.seed)
    pipe.set_progress_bar_config(disable=True)
    losslog = LossLog(ckpt / "loss.csv")
    log(f"VAE: {architecture.count_parameters(pipe.vae):,} params, "
        f"{args.vae_steps}+{args.vae_full_steps}+{args.vae_refine_steps} steps")
    train_vae(pipe.vae, args, losslog, ckpt)
    vae_check = vae_reconstruction_check(pipe.vae, n=4 if args.quick else 48)
    log("VAE reconstructions judged: " + " ".join(f"{k} {vae_check[k]:.2f}" for k in
                                                  ("background", "colour", "shape", "motion")))
    info = train_transformer(pipe, args, losslog, ckpt)
    info["vae_reconstruction"] = vae_check
    pipe.save_pretrained(str(out), safe_serialization=True)
    t_train = _CLOCK.elapsed()
    tf_rows = [r["loss"] for r in losslog.rows if r["phase"] == "transformer"]
    vae_rows = [r["loss"] for r in losslog.rows if r["phase"] == "vae"]
    info.update(
        params={n: architecture.count_parameters(getattr(pipe, n)) for n in ("transformer", "vae", "text_encoder")},
        final_loss=float(np.mean(tf_rows[-10:])) if tf_rows else float("nan"),
        vae_loss=float(np.mean(vae_rows[-10:])) if vae_rows else float("nan"),
        wall_min=t_train / 60,
        machine=f"CPU, {args.threads} thread(s)",
        command="python -m embedded.video_train " + " ".join(argv),
    )
    log(f"trained in {t_train / 60:.1f} min; final transformer loss {info['final_loss']:.4f}")
    losslog.path = out / "loss.csv"
    losslog.write()
    (out / "train_info.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    if not args.no_report:
        report(out, args, info, losslog)
        (out / "train_info.json").write_text(json.dumps(info, indent=2, default=float) + "\n")
    if args.quick:
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)
    log(f"done in {(time.time() - t_start) / 60:.1f} min -> {out}")
    return out


if __name__ == "__main__":
    main()
