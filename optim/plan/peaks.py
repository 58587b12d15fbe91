"""Working memory during a generation, term by term, from the components' configs and the run settings.

Every term is named and kept (in plan.json), so a wrong prediction can be traced to it. d is the run dtype's bytes
(activations are computed in it whatever the weights' storage), B the batch of one transformer call (2 where
the two guidance branches are batched in one call: SD3, CogVideoX; else 1).

* tokens: the latent is the output divided by the VAE's factor (8 for all five families), and the transformers
  take 2x2 patches, so an image has H/16 x W/16 tokens (times the latent frames of a video, (F - 1)/4 + 1); the
  text joins the same attention where the family does so (FLUX: max_sequence_length; SD3: 77 + it; Qwen-Image:
  it; CogVideoX: 226; Wan attends to the text in a separate cross-attention).
* transformer, one block at a time: B x S x (7 D + 2 M) x d (the residual stream and its normalized copy, q, k
  and v, the attention output, the MLP's two hidden tensors; D the model width, M the MLP width); the math
  attention path adds the score and probability matrices, B x heads x S^2 x d x 2; flash, efficient and cuDNN
  kernels keep them out of memory.
* the cache's stored tensors, kept across steps (per cache context: two where the branches are separate calls):
  First Block Cache and MagCache a residual or two of B x S x D, TaylorSeer (order + 1) tensors per cached module,
  PAB and FasterCache an attention output per block, cache-dit's DBCache three residuals (and its calibrator's).
* the text encoders: each prompt's S_t x width x 6 x d, and the scores of their attention, heads x S_t^2 x d x 2.
* the VAE decode: the largest stage of the decoder at its resolution h x w: a resnet, max(3 C_in + C_out,
  C_in + 3 C_out) x h x w x d (its input kept for the shortcut, the normalized and activated copies, the
  convolution's output), or an upsampler, (C/4 + 2 C) x (2h x 2w) x d; a video VAE decodes a chunk of frames at
  a time (CogVideoX 2 latent frames, Wan 1); tiling decodes tiles of the VAE's sample size.

What the caching allocator reserves (`max_memory_reserved`, which some published figures report) is more than the
peak of live tensors: a freed block is kept for later requests, and a larger request cannot reuse a smaller block.
The plan's reserved figure is an upper bound of that: each phase's working memory stays reserved after it, and
the decoder's stages, which grow with each resolution, each hold their own (`Terms.held`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The families' text length in the joint attention (beyond max_sequence_length) and their CFG batching.
JOINT_TEXT = {"flux": lambda seq: seq, "sd3": lambda seq: 77 + seq, "qwen-image": lambda seq: seq,
              "cogvideox": lambda seq: 226, "wan": lambda seq: 0}
BATCHED_CFG = {"sd3", "cogvideox"}
VIDEO_CHUNK_LATENT_FRAMES = {"cogvideox": 2, "wan": 1}
FUSED_ATTENTION = ("native", "flash", "flash_varlen", "_flash_3", "_flash_varlen_3", "_flash_3_hub", "sage",
                   "sage_varlen", "_native_flash", "_native_efficient", "_native_cudnn", "xformers", "flex")


@dataclass
class Terms:
    """Named byte counts of one phase."""

    phase: str
    terms: dict[str, int] = field(default_factory=dict)
    held_bytes: int | None = None  # what the allocator keeps reserved after the phase (the total where None)

    @property
    def held(self) -> int:
        return self.total if self.held_bytes is None else self.held_bytes

    @property
    def total(self) -> int:
        return sum(self.terms.values())


def geometry(family: str | None, transformer: dict[str, Any], run: Any) -> dict[str, int]:
    """Tokens and widths of one transformer call."""
    frames = getattr(run, "num_frames", None) or 1
    latent_frames = (frames - 1) // 4 + 1 if frames > 1 else 1
    image_tokens = latent_frames * (run.height // 16) * (run.width // 16)
    seq = run.max_sequence_length or 512
    text = JOINT_TEXT.get(family or "flux", lambda s: s)(seq)
    heads = int(transformer.get("num_attention_heads", 1))
    width = heads * int(transformer.get("attention_head_dim", 64))
    mlp = int(transformer.get("ffn_dim") or 4 * width)
    batch = 2 if family in BATCHED_CFG and run.guidance_scale > 1 else 1
    return {"image_tokens": image_tokens, "text_tokens": text, "tokens": image_tokens + text, "heads": heads,
            "width": width, "mlp": mlp, "batch": batch, "latent_frames": latent_frames}


def denoise_terms(family: str | None, transformer: dict[str, Any], run: Any, *, attention: str, cache: Any,
                  separate_cfg: bool, d: int) -> Terms:
    g = geometry(family, transformer, run)
    stream = g["batch"] * g["tokens"] * g["width"] * d
    terms = {"block activations (7 D + 2 M per token)": g["batch"] * g["tokens"] * (7 * g["width"] + 2 * g["mlp"]) * d,
             "latents and noise prediction": 4 * g["batch"] * g["image_tokens"] * 64 * 4}
    if attention not in FUSED_ATTENTION:
        terms["attention scores (math path)"] = g["batch"] * g["heads"] * g["tokens"] ** 2 * d * 2
    blocks = int(transformer.get("num_layers", 1)) + int(transformer.get("num_single_layers", 0))
    contexts = 2 if separate_cfg else 1
    method = getattr(cache, "method", "none")
    stored = {"first_block_cache": 2 * stream, "mag_cache": 2 * stream,
              "taylorseer": (getattr(cache, "max_order", 1) + 1) * 2 * blocks * stream,
              "pyramid_attention_broadcast": blocks * stream, "faster_cache": 2 * blocks * stream,
              "cache_dit_dbcache": 3 * stream, "cache_dit_steps_mask": 3 * stream}.get(method, 0)
    if method.startswith("cache_dit") and getattr(cache, "calibrator", "none") == "taylorseer":
        stored += (getattr(cache, "taylorseer_order", 1) + 1) * stream
    if stored:
        terms[f"cache state ({method}, {contexts} context(s))"] = stored * contexts
    return Terms("denoise", terms)


def encode_terms(text_encoders: dict[str, dict[str, Any]], run: Any, d: int, cfg: bool) -> dict[str, Terms]:
    """Per text encoder: its activations for the prompts (and the negative prompt under CFG)."""
    out = {}
    prompts = 2 if cfg else 1
    for component, config in text_encoders.items():
        width = int(config.get("hidden_size") or config.get("d_model") or 768)
        heads = int(config.get("num_attention_heads") or config.get("num_heads") or 12)
        tokens = 77 if "clip" in config.get("_kind", "") or config.get("max_position_embeddings") == 77 \
            else (run.max_sequence_length or 512)
        out[component] = Terms("encode", {
            f"{component} activations (6 x width per token)": prompts * tokens * width * 6 * d,
            f"{component} attention scores": prompts * heads * tokens ** 2 * d * 2})
    return out


def decode_terms(family: str | None, vae: dict[str, Any], run: Any, d: int, *, tiling: bool) -> Terms:
    """The VAE decoder's largest stage (see the module docstring)."""
    if "block_out_channels" in vae:
        channels = list(vae["block_out_channels"])
    else:  # Wan's VAE: base_dim x dim_mult
        channels = [int(vae.get("base_dim", 96)) * int(m) for m in vae.get("dim_mult", [1, 2, 4, 4])]
    height, width = run.height, run.width
    tile = int(vae.get("sample_size") or 0)
    if tiling and tile and (height > tile or width > tile):
        height, width = min(height, tile), min(width, tile)
    frames = 1
    if family in VIDEO_CHUNK_LATENT_FRAMES:
        frames = 4 * VIDEO_CHUNK_LATENT_FRAMES[family]
    levels = len(channels)
    order = list(reversed(channels))  # the decoder's up blocks, from the latent's resolution up
    peak, where, stages = 0, "", 0
    for level, c_out in enumerate(order):
        c_in = order[level - 1] if level else order[0]
        scale = 2 ** (levels - 1 - level)
        pixels = math.ceil(height / scale) * math.ceil(width / scale) * frames
        # A resnet: its input (kept for the shortcut), the normalized and activated copies, the convolution's
        # output; or later the output, its normalized and activated copies and the shortcut.
        stage = max(3 * c_in + c_out, c_in + 3 * c_out) * pixels * d
        label = f"a resnet {c_in}->{c_out} channels at {math.ceil(width / scale)}x{math.ceil(height / scale)}"
        if level + 1 < levels:  # the upsampler into the next resolution: its input, output and convolution
            upsample = (c_out // 4 + 2 * c_out) * pixels * 4 * d
            if upsample > stage:
                stage, label = upsample, f"the upsampler of {c_out} channels to {2 * math.ceil(width / scale)}x" \
                                         f"{2 * math.ceil(height / scale)}"
        stages += stage
        if stage > peak:
            peak, where = stage, label
    output = 3 * (getattr(run, "num_frames", None) or 1) * run.height * run.width * 4
    return Terms("decode", {f"VAE decoder's largest stage ({where}, {frames} frame(s) at a time)": peak,
                            "decoded output (float32)": output}, held_bytes=stages + output)
