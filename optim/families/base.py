"""What every pipeline family is described by: how it guides, what its VAE offers, whether each step cache works
on it, its tiny build and its published full-size models (`Family`, `FullSizeModel`), and the technique table
the lab checks every family against. No family's facts live here: each has its own module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Callable

TINY_PROMPT = "a red fox in the snow"
TINY_NEGATIVE = "blurry, low quality"


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


# The second cache provider's methods (optim.techniques.cache_dit): they work on a family where cache-dit has a
# block adapter for its pipeline (`Family.cache_dit_adapter`).
CACHE_DIT_METHODS = ("cache_dit_dbcache", "cache_dit_steps_mask")


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
    """One pipeline family as the installed diffusers (0.42.1) implements it; checked by tests/test_families.py.
    Each family module (`optim/families/<family>.py`) defines one and the registry (`optim.families.registry`)
    collects them."""

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
    # The processor class that bypasses the dispatcher, for the reason technique_support gives.
    direct_attention_processor: str | None = None
    default_fps: int | None = None  # video: the frame rate the family's reference model is exported at
    # Whether each diffusers step cache works on the family, and why (checked by `probe_cache` on the tiny build
    # and by tests/test_families.py), and how many attention modules PAB's default identifiers match per block.
    cache_support: dict[str, CacheSupport] = field(default_factory=dict, compare=False)
    pab_matches_per_block: dict[str, int] = field(default_factory=dict, compare=False)
    # The tiny build: its component configs (they enter its fingerprint) and the function that builds it.
    tiny_config: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    build: Callable[[int], Any] | None = field(default=None, compare=False, repr=False)
    # The prefix of the pipeline's block adapter in cache-dit's registry (`cache_dit.supported_pipelines()`,
    # cache-dit 1.5.3; checked by tests/test_cache_dit.py), or None where cache-dit has no adapter for it.
    cache_dit_adapter: str | None = None
    # Video: how many frames the pipeline really makes for `num_frames` (None: as many as asked).
    frames_for: Callable[[int], int] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FullSizeModel:
    """A real Hub model's published configs (written from memory of its config.json files: `source` says which,
    `uncertain` names the values not checked against a file), built on the meta device to count its parameters
    or in memory with random weights to measure a GPU (`optim.synthetic`)."""

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


# The lab's words for how a run guides (`ModelInfo.guidance`, `optim.generation.guidance_style`): "distilled"
# (one transformer call a step, guidance an embedding input), "true_cfg" (the two guidance branches as two
# separate calls a step) and "cfg" (both branches batched in one call).
GUIDANCE_STYLES: dict[Guidance, str] = {
    Guidance.DISTILLED: "distilled",
    Guidance.SEPARATE_CFG: "true_cfg",
    Guidance.BATCHED_CFG: "cfg",
}


# Every technique the lab applies, per family: supported or not, and why. `optim.compat` refuses the unsupported
# ones before loading, `optim.capabilities` lists the table, and tests/test_family_matrix.py runs each cell on the
# tiny builds (the verified cells) or checks its refusal.
TECHNIQUES: tuple[str, ...] = (
    "attention.backend",
    *(f"cache.{m.value}" for m in CacheMethod),
    *(f"cache.{method}" for method in CACHE_DIT_METHODS),
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
    "cache.cache_dit_dbcache": "cache-dit DBCache",
    "cache.cache_dit_steps_mask": "cache-dit steps mask",
    "quantization.torchao": "torchao int8 (transformer)",
    "offload.group": "group offload",
    "vae.slicing": "VAE slicing",
    "vae.tiling": "VAE tiling",
    "compile.regional": "regional compile",
    "compile.full": "full compile",
}


# Shared reasons (diffusers 0.42.1 hooks/*.py), and the cache methods by their config names.
FBC, PAB, FASTER, MAG, TAYLOR = (m.value for m in CacheMethod)

NO_CACHE_MIXIN = (
    "SD3Transformer2DModel has no CacheMixin (no enable_cache/disable_cache); applied directly with "
    "diffusers.hooks.apply_*, {detail}"
)
PER_MODULE_STATE = (
    "hook state lives on each module (self.state, not a StateManager keyed by cache_context), so with the two "
    "guidance branches as separate calls the iteration counter alternates between them and a skipped call "
    "returns the OTHER branch's cached output; correct only with one call per step"
)
