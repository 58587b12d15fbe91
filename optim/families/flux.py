"""FLUX (`flux`): diffusers' FluxPipeline, FLUX.1-dev and FLUX.1-schnell; the embedded model is one too.

Its descriptor, which step caches work on it and why, its tiny random build and its published full-size models.
"""

from __future__ import annotations

from typing import Any

from optim.families.base import (
    FASTER,
    FBC,
    MAG,
    PAB,
    TAYLOR,
    TINY_PROMPT,
    CacheSupport,
    Family,
    FullSizeModel,
    Guidance,
    RunSettings,
    VaeOptions,
)
from optim.families.published import (
    CLIP_L,
    T5_XXL,
)
from optim.families.tiny import clip_encoder, seeded, t5_encoder
from optim.families.tokenizers import (
    CLIP_MAX_LENGTH,
    build_clip_tokenizer,
    build_t5_tokenizer,
)

# FLUX.1-dev's published configs (black-forest-labs/FLUX.1-dev: transformer/, vae/), shared with
# `optim.synthetic`.
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


# Every part tiny (see `optim.families.tiny`).
TINY_CONFIG: dict[str, dict[str, Any]] = {
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
}


# Checked by `probe_cache` on the tiny build (2-step runs, cached output differs from uncached, equal again after
# disable_cache) and by tests/test_families.py.
CACHE_SUPPORT: dict[str, CacheSupport] = {
    FBC: CacheSupport(True, "transformer_blocks + single_transformer_blocks are ModuleLists named in "
                       "_ALL_TRANSFORMER_BLOCK_IDENTIFIERS; FluxTransformerBlock/FluxSingleTransformerBlock are "
                       "registered in hooks/_helpers.py; state per cache_context"),
    PAB: CacheSupport(True, "spatial: every block's `attn` (transformer_blocks, single_transformer_blocks); no "
                       "cross or temporal attention (joint attention). Per-module state: correct for FLUX.1-dev "
                       "(distilled, one call per step), not with true CFG (see Qwen-Image)"),
    FASTER: CacheSupport(True, "attention skipping on `^transformer_blocks.*attn` and "
                          "`^single_transformer_blocks.*attn`; no batched unconditional branch, so "
                          "is_guidance_distilled=True (the denoiser hook's chunk(2) needs a doubled batch; "
                          "distilled, it ignores tensor_format)", {"is_guidance_distilled": True}),
    MAG: CacheSupport(True, "same block discovery as FirstBlockCache; FLUX_MAG_RATIOS (FLUX.1-dev) ship with "
                       "diffusers, interpolated to the step count"),
    TAYLOR: CacheSupport(True, "default patterns (re.fullmatch '^transformer_blocks.*attn', "
                          "'^single_transformer_blocks.*attn') match every block's `attn`"),
}


def build_tiny(seed: int) -> Any:
    """The tiny flux pipeline: every part tiny, random weights (bit-identical per seed)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    cfg = TINY_CONFIG
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        text_encoder=seeded(seed, lambda: clip_encoder(cfg["text_encoder"], tokenizer, projection=False)),
        tokenizer=tokenizer,
        text_encoder_2=seeded(seed + 1, lambda: t5_encoder(cfg["text_encoder_2"], tokenizer_2)),
        tokenizer_2=tokenizer_2,
        vae=seeded(seed + 2, lambda: AutoencoderKL(**cfg["vae"])),
        transformer=seeded(seed + 3, lambda: FluxTransformer2DModel(**cfg["transformer"])),
    )


# Guidance (diffusers 0.42.1 pipelines/flux/pipeline_flux.py 847-851): `guidance` is an embedding input when
# transformer.config.guidance_embeds (FLUX.1-dev); 900 / 917: true CFG (true_cfg_scale > 1 and a negative prompt,
# 771) is a second call, in cache_context("uncond").
FAMILY = Family(
    key="flux",
    pipeline_class="FluxPipeline",
    cache_dit_adapter="Flux",
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
    tiny=RunSettings(TINY_PROMPT, None, 4, 64, 64, 3.5, 32),
    full_size=("flux-dev",),
    cache_support=CACHE_SUPPORT,
    pab_matches_per_block={"spatial": 1, "temporal": 0, "cross": 0},
    tiny_config=TINY_CONFIG,
    build=build_tiny,
)


FULL_SIZE: dict[str, FullSizeModel] = {
    "flux-dev": FullSizeModel(
        name="flux-dev",
        family="flux",
        hub_id="black-forest-labs/FLUX.1-dev",
        transformer=FLUX_TRANSFORMER,  # one place: above (optim/synthetic.py imports it)
        vae=FLUX_VAE,
        text_encoders={"text_encoder": ("CLIPTextModel", CLIP_L),
                       "text_encoder_2": ("T5EncoderModel", T5_XXL)},
        scheduler=("FlowMatchEulerDiscreteScheduler", TINY_CONFIG["scheduler"]),
        settings=RunSettings("a photo of a cat", None, 28, 1024, 1024, 3.5, 512),
        published_params_b=11.9,
        published_as="12B (model card); 11.9B in the Hub's safetensors metadata",
        source="black-forest-labs/FLUX.1-dev transformer/config.json; model card (28 steps, guidance 3.5)",
    ),
}
