"""The pipeline families the lab knows, as data: how each one guides, which caches and VAE options apply, a tiny
random build that runs anywhere in a second, and the published full-size dimensions for GPU measurements.

Five families: FLUX (`flux`), Qwen-Image (`qwen-image`), Stable Diffusion 3 (`sd3`), CogVideoX (`cogvideox`) and
Wan 2.1 (`wan`). For each:

* `FAMILIES[key]`: a `Family` descriptor: the diffusers pipeline / transformer / VAE classes, image or video,
  how guidance runs in the pipeline's `__call__` (`Guidance`), the VAE options and regional compilation.
* `build_tiny_pipeline(key, seed)`: a real diffusers pipeline of that family, every part tiny, random weights,
  tokenizers built in code (no files, no downloads). Same seed, bit-identical weights.
* `save_tiny_pipeline(key, folder)` / `tiny_model_path(key)`: the tiny pipeline as a diffusers folder
  (safetensors + `lab_defaults.json` + README), built once into a cache folder, so that
  `DiffusionPipeline.from_pretrained(tiny_model_path(key), local_files_only=True)` loads it offline.
* `FULL_SIZE_MODELS[name]` / `build_full_size_on_meta(name)`: the published configs of the real Hub models
  (from memory of their config.json files: see each entry's `source` and `uncertain`), instantiated on the meta
  device so parameters can be counted without allocating memory.
* `CACHE_SUPPORT[key][method]`: whether each diffusers step cache works on the family, and why. Every claim was
  checked by running the cache on the tiny build (`probe_cache`); `tests/test_families.py` re-checks them.

Random weights prove the lab's mechanics (load, apply, measure, compare, report), never image quality.

    >>> pipe = build_tiny_pipeline("wan")  # doctest: +SKIP
    >>> frames = pipe(**tiny_call_kwargs("wan"), output_type="np").frames  # doctest: +SKIP
    >>> frames.shape  # doctest: +SKIP
    (1, 9, 32, 32, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable

# ------------------------------------------------------------------------------------------------ published configs

# FLUX.1-dev's published configs (black-forest-labs/FLUX.1-dev: transformer/, vae/, text_encoder/, text_encoder_2/),
# shared with `optim.synthetic` (which imports them from here, so that this module imports nothing of the project).
FLUX_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=True,
)
CLIP_L = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
T5_XXL = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_decoder_layers=0,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
    use_cache=False,
    dropout_rate=0.0,
)

# ------------------------------------------------------------------------------------------------ descriptors


class Guidance(str, Enum):
    """How a pipeline's `__call__` applies guidance, which decides what a step cache sees."""

    BATCHED_CFG = "batched_cfg"  # unconditional + conditional concatenated in ONE transformer call per step
    SEPARATE_CFG = "separate_cfg"  # two transformer calls per step, under cache_context("cond") / ("uncond")
    DISTILLED = "distilled"  # one call; guidance is an embedding input (FLUX.1-dev's guidance_embeds)


class CacheMethod(str, Enum):
    FIRST_BLOCK_CACHE = "first_block_cache"
    PYRAMID_ATTENTION_BROADCAST = "pyramid_attention_broadcast"
    FASTER_CACHE = "faster_cache"
    MAG_CACHE = "mag_cache"
    TAYLORSEER = "taylorseer"


@dataclass(frozen=True)
class RunSettings:
    """Run settings a model is meant to be used with; `guidance_scale` is what the lab passes as the family's
    guidance argument (`Family.guidance_argument`)."""

    prompt: str
    negative_prompt: str | None
    steps: int
    width: int
    height: int
    guidance_scale: float
    max_sequence_length: int | None
    num_frames: int | None = None  # video only
    fps: int | None = None  # video only

    def to_json_dict(self) -> dict[str, Any]:
        """The `lab_defaults.json` form: video keys only for video."""
        data = asdict(self)
        if self.num_frames is None:
            data.pop("num_frames")
            data.pop("fps")
        return data


@dataclass(frozen=True)
class VaeOptions:
    """What `pipe.vae` offers. `tiling_arguments`: the keyword arguments of its `enable_tiling` (none: fixed
    tiles). Temporal chunking of the video VAEs is built in (always on), not an option."""

    vae_class: str
    slicing: bool  # splits the batch dimension only: no effect on a single image or video
    tiling: bool
    tiling_arguments: tuple[str, ...]
    temporal: str


@dataclass(frozen=True)
class CacheSupport:
    """Whether a diffusers step cache works on a family through `transformer.enable_cache`, and why.
    `needs`: config fields it needs on this family (JSON values)."""

    supported: bool
    reason: str
    needs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One pipeline family as the installed diffusers (0.42.1) implements it; checked by tests/test_families.py."""

    key: str
    pipeline_class: str
    transformer_class: str
    video: bool
    output: str  # "images" (N, H, W, 3) or "frames" (N, F, H, W, 3) with output_type="np"
    guidance: Guidance
    guidance_argument: str  # the __call__ argument the lab's guidance_scale goes to
    cache_contexts: tuple[str, ...]  # names a run passes to transformer.cache_context (none: never called)
    has_cache_mixin: bool  # transformer.enable_cache exists
    repeated_blocks: tuple[str, ...]  # the transformer class's _repeated_blocks (compile_repeated_blocks)
    vae: VaeOptions
    faster_cache_tensor_format: str  # layout of the transformer's output, for FasterCacheConfig.tensor_format
    tiny: RunSettings  # recommended settings for the tiny build (written to lab_defaults.json)
    full_size: tuple[str, ...]  # FULL_SIZE_MODELS names, the first the family's reference model
    # The transformer's attention processors call diffusers' dispatcher (`dispatch_attention_fn`), so
    # `set_attention_backend` changes the kernel; False: they call torch's scaled_dot_product_attention directly
    # and a backend set on them silently does nothing (checked by tests/test_family_matrix.py).
    attention_dispatcher: bool = True
    default_fps: int | None = None  # video: the frame rate the family's reference model is exported at

    @property
    def cache_support(self) -> dict[str, CacheSupport]:
        return CACHE_SUPPORT[self.key]


_TINY_PROMPT = "a red fox in the snow"
_TINY_NEGATIVE = "blurry, low quality"

# Guidance, read in each pipeline's __call__ (diffusers 0.42.1, site-packages/diffusers/pipelines/...):
# * flux/pipeline_flux.py 847-851: `guidance` is an embedding input when transformer.config.guidance_embeds
#   (FLUX.1-dev); 900 / 917: true CFG (true_cfg_scale > 1 and a negative prompt, 771) is a second call, in
#   cache_context("uncond").
# * qwenimage/pipeline_qwenimage.py 644 / 657: cond and uncond are separate calls (true_cfg_scale, 564);
#   guidance_scale only feeds guidance embeddings, which Qwen-Image does not have (618-629).
# * stable_diffusion_3/pipeline_stable_diffusion_3.py 1067: torch.cat([latents] * 2), one call; 1085 chunk(2).
#   The loop never calls transformer.cache_context (and SD3Transformer2DModel has no CacheMixin).
# * cogvideo/pipeline_cogvideox.py 723: torch.cat([latents] * 2); 730 one call in cache_context("cond_uncond");
#   747 chunk(2).
# * wan/pipeline_wan.py 620 / 630: cond and uncond are separate calls (do_classifier_free_guidance: guidance_scale > 1).
FAMILIES: dict[str, Family] = {
    "flux": Family(
        key="flux",
        pipeline_class="FluxPipeline",
        transformer_class="FluxTransformer2DModel",
        video=False,
        output="images",
        guidance=Guidance.DISTILLED,
        guidance_argument="guidance_scale",
        cache_contexts=("cond",),  # and "uncond" with true CFG (true_cfg_scale > 1 + a negative prompt)
        has_cache_mixin=True,
        repeated_blocks=("FluxTransformerBlock", "FluxSingleTransformerBlock"),
        vae=VaeOptions("AutoencoderKL", slicing=True, tiling=True, tiling_arguments=(), temporal="none (images)"),
        faster_cache_tensor_format="BCHW",  # output is packed (B, tokens, C): 3-D; diffusers has no "BSC" yet
        tiny=RunSettings(_TINY_PROMPT, None, 4, 64, 64, 3.5, 32),
        full_size=("flux-dev",),
    ),
    "qwen-image": Family(
        key="qwen-image",
        pipeline_class="QwenImagePipeline",
        transformer_class="QwenImageTransformer2DModel",
        video=False,
        output="images",
        guidance=Guidance.SEPARATE_CFG,
        guidance_argument="true_cfg_scale",
        cache_contexts=("cond", "uncond"),
        has_cache_mixin=True,
        repeated_blocks=("QwenImageTransformerBlock",),
        vae=VaeOptions(
            "AutoencoderKLQwenImage",
            slicing=True,
            tiling=True,
            tiling_arguments=(
                "tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
                "tile_sample_stride_width",
            ),
            temporal="causal 3-D VAE run frame by frame (one frame for images)",
        ),
        faster_cache_tensor_format="BCHW",  # packed (B, tokens, C)
        tiny=RunSettings(_TINY_PROMPT, _TINY_NEGATIVE, 4, 64, 64, 4.0, 32),
        full_size=("qwen-image",),
    ),
    "sd3": Family(
        key="sd3",
        pipeline_class="StableDiffusion3Pipeline",
        transformer_class="SD3Transformer2DModel",
        video=False,
        output="images",
        guidance=Guidance.BATCHED_CFG,
        guidance_argument="guidance_scale",
        cache_contexts=(),
        has_cache_mixin=False,
        repeated_blocks=(),
        vae=VaeOptions("AutoencoderKL", slicing=True, tiling=True, tiling_arguments=(), temporal="none (images)"),
        faster_cache_tensor_format="BCHW",
        tiny=RunSettings(_TINY_PROMPT, _TINY_NEGATIVE, 4, 64, 64, 4.5, 32),
        full_size=("sd3.5-medium",),
        attention_dispatcher=False,  # JointAttnProcessor2_0 calls F.scaled_dot_product_attention directly
    ),
    "cogvideox": Family(
        key="cogvideox",
        pipeline_class="CogVideoXPipeline",
        transformer_class="CogVideoXTransformer3DModel",
        video=True,
        output="frames",
        guidance=Guidance.BATCHED_CFG,
        guidance_argument="guidance_scale",
        cache_contexts=("cond_uncond",),
        has_cache_mixin=True,
        repeated_blocks=(),
        vae=VaeOptions(
            "AutoencoderKLCogVideoX",
            slicing=True,
            tiling=True,
            tiling_arguments=(
                "tile_sample_min_height", "tile_sample_min_width", "tile_overlap_factor_height",
                "tile_overlap_factor_width",
            ),
            # autoencoder_kl_cogvideox.py 1072-1073 and _decode: always 2 latent frames (8 sample frames) at a time.
            temporal="built-in: decodes 2 latent frames at a time with a conv cache; tiling is spatial only",
        ),
        faster_cache_tensor_format="BFCHW",
        tiny=RunSettings(_TINY_PROMPT, _TINY_NEGATIVE, 4, 32, 32, 6.0, 16, num_frames=9, fps=8),
        full_size=("cogvideox-5b",),
        attention_dispatcher=False,  # CogVideoXAttnProcessor2_0 calls F.scaled_dot_product_attention
        default_fps=8,
    ),
    "wan": Family(
        key="wan",
        pipeline_class="WanPipeline",
        transformer_class="WanTransformer3DModel",
        video=True,
        output="frames",
        guidance=Guidance.SEPARATE_CFG,
        guidance_argument="guidance_scale",
        cache_contexts=("cond", "uncond"),
        has_cache_mixin=True,
        repeated_blocks=("WanTransformerBlock",),
        vae=VaeOptions(
            "AutoencoderKLWan",
            slicing=True,
            tiling=True,
            tiling_arguments=(
                "tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
                "tile_sample_stride_width",
            ),
            temporal="built-in: causal 3-D VAE decodes one latent frame at a time (feature cache); "
            "tiling is spatial only",
        ),
        faster_cache_tensor_format="BCFHW",
        tiny=RunSettings(_TINY_PROMPT, _TINY_NEGATIVE, 4, 32, 32, 5.0, 16, num_frames=9, fps=16),
        full_size=("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"),
        default_fps=16,
    ),
}


def family(key: str) -> Family:
    """The family `key`, or a ValueError naming the known ones."""
    if key not in FAMILIES:
        raise ValueError(f"unknown pipeline family {key!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def family_of_pipeline(pipeline_class: str) -> Family | None:
    """The family whose pipeline class is `pipeline_class` (a name, e.g. model_index.json's `_class_name`)."""
    return next((fam for fam in FAMILIES.values() if fam.pipeline_class == pipeline_class), None)


def tiny_call_kwargs(key: str, *, steps: int | None = None) -> dict[str, Any]:
    """Keyword arguments for a tiny pipeline's `__call__` from its `RunSettings` (no generator, no output_type)."""
    fam = family(key)
    run = fam.tiny
    kwargs: dict[str, Any] = {
        "prompt": run.prompt,
        "num_inference_steps": steps or run.steps,
        "width": run.width,
        "height": run.height,
        fam.guidance_argument: run.guidance_scale,
        "max_sequence_length": run.max_sequence_length,
    }
    if run.negative_prompt is not None:
        kwargs["negative_prompt"] = run.negative_prompt
    if fam.video:
        kwargs["num_frames"] = run.num_frames
    return kwargs


# ------------------------------------------------------------------------------------------------ cache support

_FBC, _PAB, _FASTER, _MAG, _TAYLOR = (m.value for m in CacheMethod)

# Shared reasons (diffusers 0.42.1 hooks/*.py).
_NO_CACHE_MIXIN = (
    "SD3Transformer2DModel has no CacheMixin (no enable_cache/disable_cache); applied directly with "
    "diffusers.hooks.apply_*, {detail}"
)
_PER_MODULE_STATE = (
    "hook state lives on each module (self.state, not a StateManager keyed by cache_context), so with the two "
    "guidance branches as separate calls the iteration counter alternates between them and a skipped call "
    "returns the OTHER branch's cached output; correct only with one call per step"
)

# Checked by `probe_cache` on the tiny builds (2-step runs, cached output differs from uncached, equal again after
# disable_cache) and by tests/test_families.py. PAB counts: attention modules matched per category, per block.
CACHE_SUPPORT: dict[str, dict[str, CacheSupport]] = {
    "flux": {
        _FBC: CacheSupport(True, "transformer_blocks + single_transformer_blocks are ModuleLists named in "
                           "_ALL_TRANSFORMER_BLOCK_IDENTIFIERS; FluxTransformerBlock/FluxSingleTransformerBlock are "
                           "registered in hooks/_helpers.py; state per cache_context"),
        _PAB: CacheSupport(True, "spatial: every block's `attn` (transformer_blocks, single_transformer_blocks); no "
                           "cross or temporal attention (joint attention). Per-module state: correct for FLUX.1-dev "
                           "(distilled, one call per step), not with true CFG (see Qwen-Image)"),
        _FASTER: CacheSupport(True, "attention skipping on `^transformer_blocks.*attn` and "
                              "`^single_transformer_blocks.*attn`; no batched unconditional branch, so "
                              "is_guidance_distilled=True (the denoiser hook's chunk(2) needs a doubled batch; "
                              "distilled, it ignores tensor_format)", {"is_guidance_distilled": True}),
        _MAG: CacheSupport(True, "same block discovery as FirstBlockCache; FLUX_MAG_RATIOS (FLUX.1-dev) ship with "
                           "diffusers, interpolated to the step count"),
        _TAYLOR: CacheSupport(True, "default patterns (re.fullmatch '^transformer_blocks.*attn', "
                              "'^single_transformer_blocks.*attn') match every block's `attn`"),
    },
    "qwen-image": {
        _FBC: CacheSupport(True, "transformer_blocks ModuleList; QwenImageTransformerBlock registered "
                           "(returns encoder_hidden_states, hidden_states); state per cache_context"),
        _PAB: CacheSupport(False, "matches every block's joint `attn` as spatial, but " + _PER_MODULE_STATE
                           + " (true CFG: cond then uncond). Prompt and negative prompt of different token counts "
                           "(the usual case) then fail: 'The size of tensor a (9) must match the size of tensor b "
                           "(11)'; equal counts run, mixing the branches"),
        _FASTER: CacheSupport(False, "is_guidance_distilled=False fails (IndexError: the denoiser hook's chunk(2) of "
                              "a batch of 1); True fails or mixes like PAB: " + _PER_MODULE_STATE,
                              {"is_guidance_distilled": True}),
        _MAG: CacheSupport(True, "same block discovery as FirstBlockCache; no published ratios: calibrate first "
                           "(each cache_context gets its own state)"),
        _TAYLOR: CacheSupport(True, "default pattern '^transformer_blocks.*attn' matches every block's `attn`; "
                              "state per cache_context"),
    },
    "sd3": {
        _FBC: CacheSupport(False, _NO_CACHE_MIXIN.format(
            detail="it fails: 'No cache context is set' (the pipeline never calls cache_context)")),
        _PAB: CacheSupport(False, _NO_CACHE_MIXIN.format(
            detail="it runs (no cache context needed; batched CFG) given a timestep callback other than "
                   "pipe.current_timestep, which StableDiffusion3Pipeline lacks; spatial = every block's `attn` plus "
                   "`attn2` of the dual-attention (SD3.5) blocks")),
        _FASTER: CacheSupport(False, _NO_CACHE_MIXIN.format(
            detail="it runs (batched CFG, tensor_format BCHW) given a timestep callback (no pipe.current_timestep)")),
        _MAG: CacheSupport(False, _NO_CACHE_MIXIN.format(
            detail="it runs (MagCache sets a default 'inference' context when none is set)")),
        _TAYLOR: CacheSupport(False, _NO_CACHE_MIXIN.format(
            detail="it fails: 'No cache context is set'")),
    },
    "cogvideox": {
        _FBC: CacheSupport(True, "transformer_blocks ModuleList; CogVideoXBlock registered; one cond_uncond context "
                           "(batched CFG)"),
        _PAB: CacheSupport(True, "spatial: every CogVideoXBlock's attn1 (joint text+video self-attention); no "
                           "cross or temporal modules. One call per step, so per-module state is correct "
                           "(PAB's paper setting)"),
        _FASTER: CacheSupport(True, "designed for it: batched CFG (uncond approximated from cond), output "
                              "(B, F, C, H, W) so tensor_format BFCHW; matches attn1 of every block",
                              {"tensor_format": "BFCHW"}),
        _MAG: CacheSupport(True, "same block discovery as FirstBlockCache; no published ratios: calibrate first"),
        _TAYLOR: CacheSupport(True, "default patterns need a name ENDING in 'attn' (re.fullmatch), CogVideoX's is "
                              "'attn1': the default config hooks nothing (a silent no-op); use_lite_mode "
                              "(proj_out + whole blocks) works", {"use_lite_mode": True}),
    },
    "wan": {
        _FBC: CacheSupport(True, "blocks ModuleList; WanTransformerBlock registered (returns hidden_states only); "
                           "state per cache_context"),
        _PAB: CacheSupport(False, "matches attn1 (spatial) and attn2 (cross, is_cross_attention=True) of every "
                           "block, but " + _PER_MODULE_STATE + " (Wan's cond/uncond calls). Wan pads the text to "
                           "max_sequence_length, so shapes agree and it runs, silently mixing the branches; correct "
                           "only with guidance_scale <= 1"),
        _FASTER: CacheSupport(False, "is_guidance_distilled=False fails (IndexError: the denoiser hook's chunk(2) of "
                              "a batch of 1); True runs but mixes the branches: " + _PER_MODULE_STATE,
                              {"is_guidance_distilled": True}),
        _MAG: CacheSupport(True, "same block discovery as FirstBlockCache; no published ratios: calibrate first"),
        _TAYLOR: CacheSupport(True, "default patterns need a name ENDING in 'attn' (re.fullmatch), Wan's are "
                              "'attn1'/'attn2': the default config hooks nothing (a silent no-op); use_lite_mode "
                              "(proj_out + whole blocks) works", {"use_lite_mode": True}),
    },
}

# Attention modules PAB's default identifiers match, per transformer block, measured on the tiny builds
# (`count_pab_matches`). FLUX's two kinds of block both have one `attn`; SD3.5 has `attn2` in dual-attention blocks.
PAB_MATCHES_PER_BLOCK: dict[str, dict[str, int]] = {
    "flux": {"spatial": 1, "temporal": 0, "cross": 0},
    "qwen-image": {"spatial": 1, "temporal": 0, "cross": 0},
    "sd3": {"spatial": 1, "temporal": 0, "cross": 0},  # + 1 spatial (attn2) in each dual_attention_layers block
    "cogvideox": {"spatial": 1, "temporal": 0, "cross": 0},
    "wan": {"spatial": 1, "temporal": 0, "cross": 1},
}


# ------------------------------------------------------------------------------------------------ guidance styles

# The lab's words for how a run guides (`ModelInfo.guidance`, `optim.generation.guidance_style`): "distilled"
# (one transformer call a step, guidance an embedding input), "true_cfg" (the two guidance branches as two
# separate calls a step) and "cfg" (both branches batched in one call).
GUIDANCE_STYLES: dict[Guidance, str] = {
    Guidance.DISTILLED: "distilled",
    Guidance.SEPARATE_CFG: "true_cfg",
    Guidance.BATCHED_CFG: "cfg",
}


def guidance_style(key: str, guidance_embeds: bool) -> str:
    """The lab's guidance style of family `key`: "distilled" with guidance embeddings; FLUX-architecture models
    without them (FLUX.1-schnell, the embedded model) do real CFG through `true_cfg_scale` as a second call, so
    "true_cfg"; otherwise the family's own (Wan and Qwen-Image "true_cfg", SD3 and CogVideoX "cfg")."""
    fam = family(key)
    if guidance_embeds:
        return "distilled"
    if fam.guidance is Guidance.DISTILLED:
        return "true_cfg"
    return GUIDANCE_STYLES[fam.guidance]


def one_call_per_step(style: str, guidance_scale: float) -> bool:
    """Whether a run makes one transformer call per step with no unconditional branch at all, from its guidance
    style (`guidance_style`) and scale: every pipeline here runs classifier-free guidance only when its guidance
    argument is above 1 (`do_classifier_free_guidance`, `do_true_cfg`); guidance-distilled ones never do."""
    return style == "distilled" or guidance_scale <= 1.0


def frames_made(key: str, num_frames: int) -> int:
    """How many frames the family's pipeline really returns for `num_frames` (measured on the tiny builds,
    tests/test_video.py): Wan rounds to 4k+1 (pipeline_wan.py: `num_frames // 4 * 4 + 1`, with a warning);
    CogVideoX (1.0) encodes 4 frames per latent frame and its VAE decodes latent frames in pairs, so an even
    number of latent frames comes out as 4 per latent (5 -> 8, 13 -> 16): only 8k+1 frames (9, 17, 49) come out
    as asked. Other families make images (1)."""
    fam = family(key)
    if not fam.video:
        return 1
    if key == "wan":
        return num_frames if num_frames % 4 == 1 else num_frames // 4 * 4 + 1
    if key == "cogvideox":
        latents = (num_frames - 1) // 4 + 1
        return 4 * (latents - 1) + 1 if latents % 2 == 1 or latents == 1 else 4 * latents
    return num_frames


# ------------------------------------------------------------------------------------------------ techniques

# Every technique the lab applies, per family: supported or not, and why. `optim.compat` refuses the unsupported
# ones before loading, `optim.capabilities` lists the table, and tests/test_family_matrix.py runs each cell on the
# tiny builds (the verified cells) or checks its refusal.
TECHNIQUES: tuple[str, ...] = (
    "attention.backend",
    *(f"cache.{m.value}" for m in CacheMethod),
    "quantization.torchao",
    "offload.group",
    "vae.slicing",
    "vae.tiling",
    "compile.regional",
    "compile.full",
)
TECHNIQUE_LABELS: dict[str, str] = {
    "attention.backend": "attention backend (not native)",
    "cache.first_block_cache": "First Block Cache",
    "cache.pyramid_attention_broadcast": "Pyramid Attention Broadcast",
    "cache.faster_cache": "FasterCache",
    "cache.mag_cache": "MagCache",
    "cache.taylorseer": "TaylorSeer",
    "quantization.torchao": "torchao int8 (transformer)",
    "offload.group": "group offload",
    "vae.slicing": "VAE slicing",
    "vae.tiling": "VAE tiling",
    "compile.regional": "regional compile",
    "compile.full": "full compile",
}
_PROCESSOR = {"sd3": "JointAttnProcessor2_0", "cogvideox": "CogVideoXAttnProcessor2_0"}


def technique_support(key: str) -> dict[str, CacheSupport]:
    """`TECHNIQUES` -> whether it works on family `key`, and why (the cache entries are `CACHE_SUPPORT`'s)."""
    fam = family(key)
    out: dict[str, CacheSupport] = {}
    if fam.attention_dispatcher:
        out["attention.backend"] = CacheSupport(True, "the attention processors call diffusers' dispatcher "
                                                "(dispatch_attention_fn), so set_attention_backend picks the kernel")
    else:
        out["attention.backend"] = CacheSupport(False, f"{_PROCESSOR[key]} calls torch's "
                                                "scaled_dot_product_attention directly, not diffusers' dispatcher: "
                                                "set_attention_backend is accepted and silently changes nothing")
    for method, support in CACHE_SUPPORT[key].items():
        out[f"cache.{method}"] = support
    out["quantization.torchao"] = CacheSupport(True, "quantizes the transformer's nn.Linear weights at load "
                                               "(PipelineQuantizationConfig quant_mapping)")
    out["offload.group"] = CacheSupport(True, "enable_group_offload groups the transformer's ModuleList blocks "
                                        "(block_level) or its leaf modules (leaf_level)")
    out["vae.slicing"] = CacheSupport(fam.vae.slicing, f"{fam.vae.vae_class}.enable_slicing: splits the batch, so "
                                      "one " + ("video" if fam.video else "image") + " per prompt changes nothing")
    out["vae.tiling"] = CacheSupport(fam.vae.tiling, f"{fam.vae.vae_class}.enable_tiling: spatial tiles; temporal: "
                                     f"{fam.vae.temporal}")
    if fam.repeated_blocks:
        out["compile.regional"] = CacheSupport(True, "compile_repeated_blocks compiles "
                                               + " and ".join(fam.repeated_blocks) + " once and reuses it per block")
    else:
        out["compile.regional"] = CacheSupport(False, f"{fam.transformer_class} declares no _repeated_blocks, so "
                                               "compile_repeated_blocks raises; use compile mode 'full'")
    out["compile.full"] = CacheSupport(True, "torch.compile of the whole transformer")
    return out


# ------------------------------------------------------------------------------------------------ tokenizers

# Words every tiny tokenizer knows as single tokens: the tiny prompts plus the words of QwenImagePipeline's prompt
# template (so that the template tokenizes like the real Qwen2 tokenizer: see `QWEN_TEMPLATE_PREFIX_TOKENS`).
# Anything else still tokenizes, character by character (byte-level BPE, or T5's single-character pieces).
VOCABULARY = (
    "a", "an", "and", "assistant", "background", "blue", "blurry", "by", "cat", "color", "describe", "detailing",
    "dog", "forest", "fox", "green", "image", "in", "low", "objects", "of", "on", "photo", "quality", "quantity",
    "red", "relationships", "running", "shape", "size", "snow", "spatial", "system", "text", "texture", "the",
    "user", "video", "with",
)
CLIP_MAX_LENGTH = 16  # the pipelines pad CLIP input to tokenizer.model_max_length: keep it short
# QwenImagePipeline drops the first prompt_template_encode_start_idx (34) hidden states: the template's prefix is 34
# tokens with the real Qwen2 tokenizer (<|im_start|> system \n Describe ... background : <|im_end|> \n
# <|im_start|> user \n); the tiny tokenizer must give the same count or it would drop prompt tokens.
QWEN_TEMPLATE_PREFIX_TOKENS = 34


def _byte_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2's byte -> printable character table

    return list(bytes_to_unicode().values())


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: merge the lowest-ranked adjacent pair until none is left (what `tokenizers` does)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def _whole_word_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """BPE merges that turn each word (a list of initial symbols) into one token.

    Left-to-right chains, longest words first; a chain that another word's merge interrupts gets one more merge
    joining the pieces it ends with (appended, so it never disturbs the others), until every word is whole.
    """
    merges: list[tuple[str, str]] = []
    for word in sorted(words, key=lambda w: (-len(w), w)):
        left = word[0]
        for nxt in word[1:]:
            if (left, nxt) not in merges:
                merges.append((left, nxt))
            left += nxt
    for _ in range(10):
        ranks = {pair: i for i, pair in enumerate(merges)}
        broken = [pieces for pieces in (_apply_bpe(w, ranks) for w in words) if len(pieces) > 1]
        if not broken:
            return merges
        for pieces in broken:
            left = pieces[0]
            for nxt in pieces[1:]:
                if (left, nxt) not in merges:
                    merges.append((left, nxt))
                left += nxt
    raise RuntimeError("could not build whole-word BPE merges for the tiny vocabulary")


def _merged_vocab(alphabet: list[str], merges: list[tuple[str, str]], specials: list[str]) -> dict[str, int]:
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in specials:
        vocab[special] = len(vocab)
    return vocab


def build_clip_tokenizer() -> Any:
    """CLIP's byte-level BPE (lower-case words, end-of-word marker `</w>`), every vocabulary word one token."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    alphabet = alphabet + [ch + "</w>" for ch in alphabet]
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in VOCABULARY]
    merges = _whole_word_merges(words)
    vocab = _merged_vocab(alphabet, merges, ["<|startoftext|>", "<|endoftext|>"])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    tokenizer.model_max_length = CLIP_MAX_LENGTH
    return tokenizer


def build_t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer: one piece per vocabulary word, single characters as the fallback. Also serves
    UMT5 (Wan), whose real tokenizer is the same SentencePiece kind with a larger vocabulary."""
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -1.0) for word in VOCABULARY]
    pieces.append(("\u2581", -5.0))
    pieces += [(ch, -8.0) for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;'!?-"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.model_max_length = 512
    return tokenizer


def build_qwen2_tokenizer() -> Any:
    """Qwen2's byte-level BPE (GPT-2 alphabet, `Ġ` marks a leading space) with whole-word merges for the
    vocabulary, in both the plain and the space-prefixed form, and the chat-template special tokens."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    space = "\u0120"  # 'Ġ': GPT-2's printable form of the space byte
    words: list[list[str]] = []
    for word in VOCABULARY:
        for form in (word, word.capitalize()):
            words.append(list(form))
            words.append([space, *form])
    merges = _whole_word_merges(words)
    vocab = _merged_vocab(_byte_alphabet(), merges, ["<|endoftext|>"])
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    chat_tokens = [AddedToken(t, special=True) for t in ("<|im_start|>", "<|im_end|>")]
    tokenizer.add_tokens(chat_tokens, special_tokens=True)
    return tokenizer


# ------------------------------------------------------------------------------------------------ tiny configs

# Every part tiny: 2 transformer blocks (so block caches have a tail to skip), inner width 32, 4-channel latents
# (16 for Wan's VAE), VAEs with the real spatial factor 8 (and temporal 4 for video) but 8 channels. Text encoders
# are 2 layers, 32 wide; their token ids come from the tokenizers at build time.
TINY_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "flux": {
        # FLUX.1-dev's layout (optim/synthetic.py) shrunk: in_channels = 4 latent channels x 2x2 packing;
        # joint_attention_dim = T5 d_model; pooled_projection_dim = CLIP hidden size; sum(axes) = head dim.
        "transformer": dict(
            patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=1.0, shift_factor=0.0,
            use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False, force_upcast=False,
        ),
        "text_encoder": dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu"),
        "text_encoder_2": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=0, num_heads=4,
                               relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                               use_cache=False),
        "scheduler": dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
    },
    "qwen-image": {
        # tests/pipelines/qwenimage/test_qwenimage.py's dummy components, with the real VAE's 3 downsamples
        # (scale 8) and a text encoder sized to the tiny tokenizer's vocabulary.
        "transformer": dict(
            patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
        ),
        "vae": dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4),
        # Qwen2.5-VL: mrope_section sums to head_dim / 2 (32 / 2 heads = 16 -> 8), like [16, 24, 24] for 128.
        "text_encoder": dict(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, max_position_embeddings=256, rms_norm_eps=1e-6,
                             rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
                             rope_theta=1000000.0),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=32,
                               fullatt_block_indexes=[0]),
            hidden_size=32,
        ),
        # Qwen/Qwen-Image scheduler/scheduler_config.json (from memory; see FULL_SIZE_MODELS["qwen-image"]).
        "scheduler": dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192, time_shift_type="exponential",
                          invert_sigmas=False, shift_terminal=0.02, stochastic_sampling=False),
    },
    "sd3": {
        # SD3.5-medium's layout shrunk: patch 2, qk rms_norm, dual attention in the first block;
        # joint_attention_dim = T5 d_model >= the two CLIP widths together (SD3 pads CLIP to T5's width);
        # pooled_projection_dim = the two CLIP projections together.
        "transformer": dict(
            sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
            pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=1.5305, shift_factor=0.0609,
            use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False, force_upcast=False,
        ),
        "text_encoder": dict(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu"),
        "text_encoder_2": dict(hidden_size=16, intermediate_size=32, projection_dim=16, num_hidden_layers=2,
                               num_attention_heads=2, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="gelu"),
        "text_encoder_3": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=0, num_heads=4,
                               relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                               use_cache=False),
        "scheduler": dict(num_train_timesteps=1000, shift=3.0),
    },
    "cogvideox": {
        # CogVideoX-5b's layout shrunk (rotary positions, no learned ones); tests/pipelines/cogvideo/test_cogvideox.py.
        # sample_* are latent sizes: 32x32x9 frames -> 4x4x3 latents.
        "transformer": dict(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=16,
            text_embed_dim=32, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=16, use_rotary_positional_embeddings=True,
            use_learned_positional_embeddings=False,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4, scaling_factor=0.7,
        ),
        "text_encoder": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=0, num_heads=4,
                             relative_attention_num_buckets=8, relative_attention_max_distance=16,
                             feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                             use_cache=False),
        # THUDM/CogVideoX-5b scheduler/scheduler_config.json (from memory).
        "scheduler": dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                          timestep_spacing="trailing", rescale_betas_zero_snr=True, snr_shift_scale=1.0),
    },
    "wan": {
        # tests/pipelines/wan/test_wan.py's dummy components, 16-channel VAE latents as in the real VAE.
        "transformer": dict(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
        "vae": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                    temperal_downsample=[False, True, True]),
        "text_encoder": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=0,
                             num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                             feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
                             use_cache=False),
        # Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (from memory): UniPC on flow sigmas.
        "scheduler": dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                          flow_shift=3.0, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
                          final_sigmas_type="zero", timestep_spacing="linspace"),
    },
}


# ------------------------------------------------------------------------------------------------ tiny builds


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    """`make()` under `torch.manual_seed(seed)` without touching the caller's random state; in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = make()
    return module.eval()


def _clip(config: dict[str, Any], tokenizer: Any, *, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **config,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(text_config)


def _t5(config: dict[str, Any], tokenizer: Any, *, umt5: bool = False) -> Any:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               decoder_start_token_id=tokenizer.pad_token_id)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**ids, **config))
    return T5EncoderModel(T5Config(**ids, **config))


def _build_flux(seed: int) -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    cfg = TINY_CONFIGS["flux"]
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        text_encoder=_seeded(seed, lambda: _clip(cfg["text_encoder"], tokenizer, projection=False)),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(seed + 1, lambda: _t5(cfg["text_encoder_2"], tokenizer_2)),
        tokenizer_2=tokenizer_2,
        vae=_seeded(seed + 2, lambda: AutoencoderKL(**cfg["vae"])),
        transformer=_seeded(seed + 3, lambda: FluxTransformer2DModel(**cfg["transformer"])),
    )


def _build_qwen_image(seed: int) -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = TINY_CONFIGS["qwen-image"]
    tokenizer = build_qwen2_tokenizer()
    text = {**cfg["text_encoder"]["text_config"], "vocab_size": len(tokenizer),
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = Qwen2_5_VLConfig(**{**cfg["text_encoder"], "text_config": text})
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        text_encoder=_seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config)),
        tokenizer=tokenizer,
        vae=_seeded(seed + 1, lambda: AutoencoderKLQwenImage(**cfg["vae"])),
        transformer=_seeded(seed + 2, lambda: QwenImageTransformer2DModel(**cfg["transformer"])),
    )
    _check_qwen_template(pipe)
    return pipe


def _check_qwen_template(pipe: Any) -> None:
    """Fail loudly if the tiny tokenizer would make QwenImagePipeline drop prompt tokens or keep template ones."""
    prefix = pipe.prompt_template_encode.split("{}")[0]
    count = len(pipe.tokenizer(prefix).input_ids)
    if count != pipe.prompt_template_encode_start_idx or count != QWEN_TEMPLATE_PREFIX_TOKENS:
        raise RuntimeError(
            f"the tiny Qwen2 tokenizer gives {count} tokens for QwenImagePipeline's template prefix; the pipeline "
            f"drops {pipe.prompt_template_encode_start_idx}: fix VOCABULARY so the template words are whole tokens"
        )


def _build_sd3(seed: int) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    cfg = TINY_CONFIGS["sd3"]
    tokenizer, tokenizer_2, tokenizer_3 = build_clip_tokenizer(), build_clip_tokenizer(), build_t5_tokenizer()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        text_encoder=_seeded(seed, lambda: _clip(cfg["text_encoder"], tokenizer, projection=True)),
        tokenizer=tokenizer,
        text_encoder_2=_seeded(seed + 1, lambda: _clip(cfg["text_encoder_2"], tokenizer_2, projection=True)),
        tokenizer_2=tokenizer_2,
        text_encoder_3=_seeded(seed + 2, lambda: _t5(cfg["text_encoder_3"], tokenizer_3)),
        tokenizer_3=tokenizer_3,
        vae=_seeded(seed + 3, lambda: AutoencoderKL(**cfg["vae"])),
        transformer=_seeded(seed + 4, lambda: SD3Transformer2DModel(**cfg["transformer"])),
    )


def _build_cogvideox(seed: int) -> Any:
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    cfg = TINY_CONFIGS["cogvideox"]
    tokenizer = build_t5_tokenizer()
    return CogVideoXPipeline(
        scheduler=CogVideoXDDIMScheduler(**cfg["scheduler"]),
        text_encoder=_seeded(seed, lambda: _t5(cfg["text_encoder"], tokenizer)),
        tokenizer=tokenizer,
        vae=_seeded(seed + 1, lambda: AutoencoderKLCogVideoX(**cfg["vae"])),
        transformer=_seeded(seed + 2, lambda: CogVideoXTransformer3DModel(**cfg["transformer"])),
    )


def _build_wan(seed: int) -> Any:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    cfg = TINY_CONFIGS["wan"]
    tokenizer = build_t5_tokenizer()
    return WanPipeline(
        scheduler=UniPCMultistepScheduler(**cfg["scheduler"]),
        text_encoder=_seeded(seed, lambda: _t5(cfg["text_encoder"], tokenizer, umt5=True)),
        tokenizer=tokenizer,
        vae=_seeded(seed + 1, lambda: AutoencoderKLWan(**cfg["vae"])),
        transformer=_seeded(seed + 2, lambda: WanTransformer3DModel(**cfg["transformer"])),
    )


_BUILDERS: dict[str, Callable[[int], Any]] = {
    "flux": _build_flux,
    "qwen-image": _build_qwen_image,
    "sd3": _build_sd3,
    "cogvideox": _build_cogvideox,
    "wan": _build_wan,
}


def build_tiny_pipeline(key: str, seed: int = 0) -> Any:
    """A real diffusers pipeline of family `key`, every part tiny, random weights (bit-identical per seed).

        >>> build_tiny_pipeline("sd3").transformer.config.num_layers  # doctest: +SKIP
        2
    """
    family(key)
    pipe = _BUILDERS[key](seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------------ cache probes

# Timestep window for the probe configs: excludes the first step (t = 999-1000 in every family's scheduler) so the
# caches fill before they skip, and includes the second of two steps (t <= ~750 in all five). Ranges are strict.
_PROBE_TIMESTEPS = (-1, 990)
# The hook names each method registers (diffusers hooks/*.py), for removing hooks applied without CacheMixin.
_HOOK_NAMES = {
    _FBC: ("fbc_leader_block_hook", "fbc_block_hook"),
    _PAB: ("pyramid_attention_broadcast",),
    _FASTER: ("faster_cache_denoiser", "faster_cache_block"),
    _MAG: ("mag_cache_leader_block_hook", "mag_cache_block_hook"),
    _TAYLOR: ("taylorseer_cache",),
}


def probe_cache_config(
    method: str, key: str, *, timestep: Callable[[], Any], steps: int = 2, **overrides: Any
) -> Any:
    """A diffusers cache config that acts within `steps` steps on the tiny build (thresholds wide open, skip
    ranges of 2), with this family's `CacheSupport.needs` applied; `overrides` replace any field.
    `timestep`: the current-timestep callback (PAB, FasterCache), e.g. `lambda: pipe.current_timestep`."""
    import torch
    from diffusers import hooks

    needs = CACHE_SUPPORT[key][method].needs
    if method == _FBC:
        fields = dict(threshold=1e9)  # any change counts as small: every step after the first is skipped
        return hooks.FirstBlockCacheConfig(**{**fields, **overrides})
    if method == _PAB:
        fields = dict(spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=2,
                      cross_attention_block_skip_range=2, spatial_attention_timestep_skip_range=_PROBE_TIMESTEPS,
                      temporal_attention_timestep_skip_range=_PROBE_TIMESTEPS,
                      cross_attention_timestep_skip_range=_PROBE_TIMESTEPS, current_timestep_callback=timestep)
        return hooks.PyramidAttentionBroadcastConfig(**{**fields, **overrides})
    if method == _FASTER:
        fields = dict(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=_PROBE_TIMESTEPS,
                      unconditional_batch_skip_range=2, unconditional_batch_timestep_skip_range=_PROBE_TIMESTEPS,
                      attention_weight_callback=lambda _module: 0.5, current_timestep_callback=timestep,
                      tensor_format=FAMILIES[key].faster_cache_tensor_format,
                      is_guidance_distilled=FAMILIES[key].guidance is not Guidance.BATCHED_CFG)
        return hooks.FasterCacheConfig(**{**fields, **needs, **overrides})
    if method == _MAG:
        # Ratios of 1: no accumulated error, so every step after the first may be skipped.
        fields = dict(threshold=1.0, max_skip_steps=steps, retention_ratio=0.0, num_inference_steps=steps,
                      mag_ratios=torch.ones(steps))
        return hooks.MagCacheConfig(**{**fields, **overrides})
    if method == _TAYLOR:
        # Step 0 computes (warm-up), step 1 predicts: (1 - 1 - 1) % 2 != 0 (taylorseer_cache.py,
        # _measure_should_compute).
        fields = dict(cache_interval=2, disable_cache_before_step=1, max_order=1, taylor_factors_dtype=torch.float32)
        return hooks.TaylorSeerCacheConfig(**{**fields, **needs, **overrides})
    raise ValueError(f"unknown cache method {method!r}; known: {', '.join(m.value for m in CacheMethod)}")


def _has_hook(module: Any, method: str) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and any(registry.get_hook(name) is not None for name in _HOOK_NAMES[method])


def count_hooks(transformer: Any, method: str) -> int:
    """How many modules under `transformer` carry one of `method`'s hooks."""
    return sum(_has_hook(module, method) for module in transformer.modules())


def count_pab_matches(transformer: Any) -> dict[str, int]:
    """Attention modules PAB's default identifiers match, by category: applied with a different skip range per
    category (spatial 2, temporal 3, cross 4), then the hooks are read back and removed."""
    from diffusers.hooks import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
    from diffusers.hooks.hooks import HookRegistry

    config = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, temporal_attention_block_skip_range=3,
        cross_attention_block_skip_range=4, current_timestep_callback=lambda: 0,
    )
    apply_pyramid_attention_broadcast(transformer, config)
    counts = {"spatial": 0, "temporal": 0, "cross": 0}
    by_range = {2: "spatial", 3: "temporal", 4: "cross"}
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(_HOOK_NAMES[_PAB][0]) if registry is not None else None
        if hook is not None:
            counts[by_range[hook.block_skip_range]] += 1
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(_HOOK_NAMES[_PAB][0], recurse=True)
    return counts


def _enable(transformer: Any, method: str, config: Any, *, direct: bool) -> None:
    if not direct:
        transformer.enable_cache(config)
        return
    from diffusers import hooks

    apply = {_FBC: hooks.apply_first_block_cache, _PAB: hooks.apply_pyramid_attention_broadcast,
             _FASTER: hooks.apply_faster_cache, _MAG: hooks.apply_mag_cache, _TAYLOR: hooks.apply_taylorseer_cache}
    apply[method](transformer, config)


def _disable(transformer: Any, method: str, *, direct: bool) -> None:
    if not direct:
        transformer.disable_cache()
        return
    from diffusers.hooks.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in _HOOK_NAMES[method]:
        registry.remove_hook(name, recurse=True)
    registry.invalidate_child_registries_cache()


@dataclass(frozen=True)
class CacheProbe:
    """What happened when a cache ran on a tiny build: `hooks` modules hooked, the cached run's output `changed`
    from the uncached one (it skipped something), and after disabling the output was `restored` exactly."""

    method: str
    enabled: bool
    ran: bool
    hooks: int = 0
    changed: bool = False
    restored: bool = False
    error: str | None = None


def run_tiny(pipe: Any, key: str, *, steps: int = 2, size: int = 32) -> Any:
    """A seeded run of a tiny pipeline at `size` x `size`, as a numpy array (images or frames)."""
    import torch

    kwargs = tiny_call_kwargs(key, steps=steps)
    kwargs.update(width=size, height=size)
    output = pipe(**kwargs, output_type="np", generator=torch.Generator("cpu").manual_seed(0))
    return getattr(output, FAMILIES[key].output)


def probe_cache(
    pipe: Any, key: str, method: str, *, direct: bool = False, steps: int = 2, **overrides: Any
) -> CacheProbe:
    """Enable `method` on the tiny pipeline (through `enable_cache`, or with `direct` through diffusers'
    `apply_*` functions), run `steps` steps, disable, run again; compare with an uncached run."""
    import numpy as np

    transformer = pipe.transformer
    baseline = run_tiny(pipe, key, steps=steps)
    timestep, recorder = _timestep_source(pipe)
    try:
        config = probe_cache_config(method, key, timestep=timestep, steps=steps, **overrides)
        try:
            _enable(transformer, method, config, direct=direct)
        except Exception as error:  # noqa: BLE001 - the probe reports any failure as data
            return CacheProbe(method, enabled=False, ran=False, error=f"{type(error).__name__}: {error}")
        hooks = count_hooks(transformer, method)
        try:
            cached = run_tiny(pipe, key, steps=steps)
        except Exception as error:  # noqa: BLE001
            return CacheProbe(method, enabled=True, ran=False, hooks=hooks, error=f"{type(error).__name__}: {error}")
        finally:
            _disable(transformer, method, direct=direct)
    finally:
        if recorder is not None:
            recorder.remove()
    after = run_tiny(pipe, key, steps=steps)
    return CacheProbe(method, enabled=True, ran=True, hooks=hooks, changed=not np.array_equal(cached, baseline),
                      restored=np.array_equal(after, baseline))


def _timestep_source(pipe: Any) -> tuple[Callable[[], Any], Any]:
    """The current-timestep callback for PAB / FasterCache: the pipeline's `current_timestep` property where it
    has one; StableDiffusion3Pipeline has none, so there a forward pre-hook on the transformer records the
    `timestep` argument (returned as the hook handle, to remove)."""
    if hasattr(type(pipe), "current_timestep"):
        return (lambda: pipe.current_timestep), None
    seen: list[float] = [1000.0]

    def record(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen[0] = float(kwargs["timestep"].flatten()[0])

    handle = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    return (lambda: seen[0]), handle


def pab_shares_branches(pipe: Any, key: str, **call_overrides: Any) -> bool | None:
    """Show PAB's per-module state across guidance branches: two steps with PAB skipping every other call, a
    forward hook on the first PAB-hooked attention module. True: the first step's second transformer call
    (uncond) got the first call's (cond) attention output; None: a step makes one call (batched CFG, distilled)."""
    import torch

    transformer = pipe.transformer
    timestep, recorder = _timestep_source(pipe)
    config = probe_cache_config(_PAB, key, timestep=timestep, spatial_attention_timestep_skip_range=(-1, 1001),
                                cross_attention_timestep_skip_range=(-1, 1001))
    transformer.enable_cache(config)
    hooked = next(m for m in transformer.modules() if _has_hook(m, _PAB))
    outputs: list[Any] = []
    handle = hooked.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        # Two steps: the first step's two calls are compared (one step gives Qwen-Image's scheduler NaN timesteps).
        kwargs = {**tiny_call_kwargs(key, steps=2), "width": 32, "height": 32, **call_overrides}
        pipe(**kwargs, output_type="latent", generator=torch.Generator("cpu").manual_seed(0))
    finally:
        handle.remove()
        transformer.disable_cache()
        if recorder is not None:
            recorder.remove()
    calls_per_step = len(outputs) // 2
    if calls_per_step < 2:
        return None
    return outputs[1] is outputs[0]


# ------------------------------------------------------------------------------------------------ saving

# Bump when the build code changes in a way the configs do not show (seeds, init order, tokenizer rules).
_TINY_FORMAT = 1
_README = """# Tiny {pipeline} ({key}), random weights

Built in code by `optim/families.py` (`build_tiny_pipeline("{key}", seed={seed})`): every part is tiny
and has random weights, and the tokenizers know only a few words. It proves the lab's mechanics (load, apply,
measure, compare, report) on the {pipeline} code path, not image quality: its {kind} are noise.
Recommended run settings are in `lab_defaults.json`.
"""


def tiny_fingerprint(key: str) -> str:
    """A short hash of everything a tiny build depends on: its configs, vocabulary, settings and library versions."""
    import diffusers
    import tokenizers
    import torch
    import transformers

    data = {
        "format": _TINY_FORMAT,
        "configs": TINY_CONFIGS[key],
        "vocabulary": VOCABULARY,
        "settings": asdict(family(key).tiny),
        "versions": [torch.__version__, diffusers.__version__, transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_tiny_pipeline(key: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny pipeline `key` as a diffusers folder: safetensors weights, `lab_defaults.json` and a README."""
    fam = family(key)
    folder = Path(folder)
    pipe = build_tiny_pipeline(key, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    defaults = json.dumps(fam.tiny.to_json_dict(), indent=2, sort_keys=True) + "\n"
    (folder / "lab_defaults.json").write_text(defaults)
    kind = "videos" if fam.video else "images"
    (folder / "README.md").write_text(_README.format(pipeline=fam.pipeline_class, key=key, seed=seed, kind=kind))
    return folder


def tiny_cache_root() -> Path:
    return Path(os.environ.get("OPTIM_TINY_CACHE") or Path.home() / ".cache" / "optim-lab" / "tiny")


def tiny_model_path(key: str) -> Path:
    """The tiny pipeline `key` as a folder, built once into the cache (`$OPTIM_TINY_CACHE` or
    ~/.cache/optim-lab/tiny) under `<key>-<fingerprint>`; built in a temporary folder and renamed, so a reader
    never sees half a model and two builders do not clash.

        >>> DiffusionPipeline.from_pretrained(tiny_model_path("wan"), local_files_only=True)  # doctest: +SKIP
    """
    root = tiny_cache_root()
    final = root / f"{key}-{tiny_fingerprint(key)}"
    if (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-building-", dir=root))
    os.chmod(scratch, 0o755)  # mkdtemp makes it private (0700); a model cache is readable like any model folder
    try:
        save_tiny_pipeline(key, scratch)
        os.rename(scratch, final)
    except OSError:
        if not (final / "model_index.json").is_file():  # not another process winning the race: a real failure
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------ full size

# Published configs of the real Hub models, written from memory of their config.json files (and of diffusers'
# conversion scripts, scripts/convert_*_to_diffusers.py, and docs): nothing here was downloaded. `uncertain` names
# the values not checked against a file. The transformer sizes on the meta device (tests/test_families.py) match
# the published ones within 1.2%, which checks the transformer dimensions; the "Hub safetensors metadata" figures
# in `published_as` are also from memory.


@dataclass(frozen=True)
class FullSizeModel:
    name: str
    family: str
    hub_id: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoders: dict[str, tuple[str, dict[str, Any]]]  # component -> (transformers class, config kwargs)
    scheduler: tuple[str, dict[str, Any]]
    settings: RunSettings  # the model card's recommended run
    published_params_b: float  # the transformer checkpoint's size in billions, as published (`published_as`)
    published_as: str
    source: str
    uncertain: tuple[str, ...] = ()


CLIP_G = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, projection_dim=1280, num_hidden_layers=32,
              num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu")
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=0, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
                is_encoder_decoder=False, use_cache=False, dropout_rate=0.0, tie_word_embeddings=False)
# Qwen/Qwen-Image text_encoder/config.json = Qwen2.5-VL-7B-Instruct's.
QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
                     rope_scaling={"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
                     rope_theta=1000000.0, hidden_act="silu", use_sliding_window=False, max_window_layers=28),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3,
                       out_hidden_size=3584, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                       window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
    hidden_size=3584,
    tie_word_embeddings=False,
)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)  # + AutoencoderKLWan's default latents_mean/std
WAN_SCHEDULER = ("UniPCMultistepScheduler", dict(
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero",
    timestep_spacing="linspace"))
# The model card's negative prompt for Wan 2.1 (Chinese: garish colours, overexposed, static, blurry details,
# subtitles, ... deformed limbs, fused fingers, cluttered background, three legs, crowded background, walking
# backwards), from memory.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，"
    "最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，"
    "畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
_WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                        freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                        added_kv_proj_dim=None, rope_max_seq_len=1024)

FULL_SIZE_MODELS: dict[str, FullSizeModel] = {
    "flux-dev": FullSizeModel(
        name="flux-dev",
        family="flux",
        hub_id="black-forest-labs/FLUX.1-dev",
        transformer=FLUX_TRANSFORMER,  # one place: above (optim/synthetic.py imports it)
        vae=FLUX_VAE,
        text_encoders={"text_encoder": ("CLIPTextModel", CLIP_L),
                       "text_encoder_2": ("T5EncoderModel", T5_XXL)},
        scheduler=("FlowMatchEulerDiscreteScheduler", TINY_CONFIGS["flux"]["scheduler"]),
        settings=RunSettings("a photo of a cat", None, 28, 1024, 1024, 3.5, 512),
        published_params_b=11.9,
        published_as="12B (model card); 11.9B in the Hub's safetensors metadata",
        source="black-forest-labs/FLUX.1-dev transformer/config.json; model card (28 steps, guidance 3.5)",
    ),
    "qwen-image": FullSizeModel(
        name="qwen-image",
        family="qwen-image",
        hub_id="Qwen/Qwen-Image",
        transformer=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                         axes_dims_rope=(16, 56, 56)),
        vae=dict(WAN_VAE),  # the Qwen-Image VAE keeps Wan 2.1's architecture and latent statistics
        text_encoders={"text_encoder": ("Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B)},
        scheduler=("FlowMatchEulerDiscreteScheduler", TINY_CONFIGS["qwen-image"]["scheduler"]),
        # Model card: 50 steps, true_cfg_scale 4.0, negative_prompt " ", 1328x1328 for 1:1.
        settings=RunSettings("a photo of a cat", " ", 50, 1328, 1328, 4.0, 512),
        published_params_b=20.4,
        published_as="20B MMDiT (model card); 20.4B in the Hub's safetensors metadata",
        source="Qwen/Qwen-Image transformer/, vae/, text_encoder/, scheduler/ config.json; model card",
        uncertain=("vae latents_mean/std (assumed equal to Wan 2.1's)", "scheduler shift_terminal / max_shift",
                   "text_encoder vision_config tokens_per_second"),
    ),
    "sd3.5-medium": FullSizeModel(
        name="sd3.5-medium",
        family="sd3",
        hub_id="stabilityai/stable-diffusion-3.5-medium",
        transformer=dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                         num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                         pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                         dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
        vae=dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                 layers_per_block=2, latent_channels=16, norm_num_groups=32, sample_size=1024,
                 scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
        text_encoders={"text_encoder": ("CLIPTextModelWithProjection", CLIP_L),
                       "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_G),
                       "text_encoder_3": ("T5EncoderModel", T5_XXL)},
        scheduler=("FlowMatchEulerDiscreteScheduler", dict(num_train_timesteps=1000, shift=3.0)),
        settings=RunSettings("a photo of a cat", None, 40, 1024, 1024, 4.5, 256),
        # 2.243B parameters + the 384x384x1536 position table (226M values, a persistent buffer in diffusers,
        # stored in the checkpoint) = 2.47B. The same count gives SD3-medium 2.03B + 57M ("2B") and SD3.5-large
        # 8.06B ("8.1B"), which checks the layout.
        published_params_b=2.5,
        published_as="2.5B (Stability AI's SD3.5 announcement, MMDiT-X), counting the stored position table",
        source="stabilityai/stable-diffusion-3.5-medium transformer/config.json; model card (40 steps, cfg 4.5)",
        uncertain=("pos_embed_max_size 384", "dual_attention_layers 0-12"),
    ),
    "cogvideox-5b": FullSizeModel(
        name="cogvideox-5b",
        family="cogvideox",
        hub_id="THUDM/CogVideoX-5b",
        transformer=dict(num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                         flip_sin_to_cos=True, freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=42,
                         dropout=0.0, attention_bias=True, sample_width=90, sample_height=60, sample_frames=49,
                         patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
                         activation_fn="gelu-approximate", timestep_activation_fn="silu",
                         norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
                         temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=True,
                         use_learned_positional_embeddings=False),
        vae=dict(block_out_channels=(128, 256, 256, 512), latent_channels=16, layers_per_block=3, norm_num_groups=32,
                 temporal_compression_ratio=4, sample_height=480, sample_width=720, scaling_factor=0.7),
        text_encoders={"text_encoder": ("T5EncoderModel", T5_XXL)},
        scheduler=("CogVideoXDDIMScheduler", TINY_CONFIGS["cogvideox"]["scheduler"]),
        # Model card: 50 steps, guidance 6, 720x480, 49 frames at 8 fps, 226 text tokens.
        settings=RunSettings("a panda playing a guitar in a bamboo forest", None, 50, 720, 480, 6.0, 226,
                             num_frames=49, fps=8),
        published_params_b=5.57,
        published_as="5B (name); 5.57B in the Hub's safetensors metadata",
        source="THUDM/CogVideoX-5b transformer/, vae/, scheduler/ config.json; model card",
        uncertain=("vae scaling_factor 0.7", "scheduler snr_shift_scale 1.0"),
    ),
    "wan2.1-t2v-1.3b": FullSizeModel(
        name="wan2.1-t2v-1.3b",
        family="wan",
        hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        transformer=dict(_WAN_TRANSFORMER, num_attention_heads=12, ffn_dim=8960, num_layers=30),
        vae=WAN_VAE,
        text_encoders={"text_encoder": ("UMT5EncoderModel", UMT5_XXL)},
        scheduler=WAN_SCHEDULER,
        # Model card: 480x832, 81 frames at 16 fps, guidance 5.0, 50 steps, flow_shift 3.0 for 480p.
        settings=RunSettings("a cat walks on the grass, realistic", WAN_NEGATIVE_PROMPT, 50, 832, 480, 5.0, 512,
                             num_frames=81, fps=16),
        published_params_b=1.42,
        published_as="1.3B (name); 1.42B in the Hub's safetensors metadata",
        source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json; scripts/convert_wan_to_diffusers.py",
    ),
    "wan2.1-t2v-14b": FullSizeModel(
        name="wan2.1-t2v-14b",
        family="wan",
        hub_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        transformer=dict(_WAN_TRANSFORMER, num_attention_heads=40, ffn_dim=13824, num_layers=40),
        vae=WAN_VAE,
        text_encoders={"text_encoder": ("UMT5EncoderModel", UMT5_XXL)},
        scheduler=(WAN_SCHEDULER[0], {**WAN_SCHEDULER[1], "flow_shift": 5.0}),  # 5.0 for 720p
        settings=RunSettings("a cat walks on the grass, realistic", WAN_NEGATIVE_PROMPT, 50, 1280, 720, 5.0, 512,
                             num_frames=81, fps=16),
        published_params_b=14.3,
        published_as="14B (name); 14.3B in the Hub's safetensors metadata",
        source="Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json; scripts/convert_wan_to_diffusers.py",
    ),
}


def full_size_model(name: str) -> FullSizeModel:
    """A `FULL_SIZE_MODELS` entry by name, or by family key (the family's reference model)."""
    if name in FAMILIES:
        name = FAMILIES[name].full_size[0]
    if name not in FULL_SIZE_MODELS:
        raise ValueError(f"unknown full-size model {name!r}; known: {', '.join(FULL_SIZE_MODELS)} "
                         f"(or a family: {', '.join(FAMILIES)})")
    return FULL_SIZE_MODELS[name]


def build_full_size_on_meta(name: str, component: str = "transformer") -> Any:
    """The full-size `component` (transformer, vae, or a text encoder) of model `name` on the meta device: real
    shapes, no memory.

        >>> sum(p.numel() for p in build_full_size_on_meta("wan2.1-t2v-14b").parameters())  # doctest: +SKIP
        14288491584
    """
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    model = full_size_model(name)
    fam = FAMILIES[model.family]
    with init_empty_weights(include_buffers=True):
        if component == "transformer":
            return getattr(diffusers, fam.transformer_class)(**model.transformer)
        if component == "vae":
            return getattr(diffusers, fam.vae.vae_class)(**model.vae)
        if component in model.text_encoders:
            class_name, config = model.text_encoders[component]
            model_class = getattr(transformers, class_name)
            return model_class(model_class.config_class(**config))
    raise ValueError(f"{name} has no component {component!r}; it has transformer, vae, "
                     + ", ".join(model.text_encoders))


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def count_checkpoint_values(module: Any) -> int:
    """Parameters plus persistent buffers: what `save_pretrained` stores (SD3's position table is a buffer)."""
    return sum(t.numel() for t in module.state_dict().values())
