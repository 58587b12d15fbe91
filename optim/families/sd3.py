"""Stable Diffusion 3 (`sd3`): diffusers' StableDiffusion3Pipeline, SD3 and SD3.5 (MMDiT-X).

Its descriptor, which step caches work on it and why, its tiny random build and its published full-size models.
"""

from __future__ import annotations

from typing import Any

from optim.families.base import (
    FASTER,
    FBC,
    MAG,
    NO_CACHE_MIXIN,
    PAB,
    TAYLOR,
    TINY_NEGATIVE,
    TINY_PROMPT,
    CacheSupport,
    Family,
    FullSizeModel,
    Guidance,
    RunSettings,
    VaeOptions,
)
from optim.families.published import (
    CLIP_G,
    CLIP_L,
    T5_XXL,
)
from optim.families.tiny import clip_encoder, seeded, t5_encoder
from optim.families.tokenizers import (
    CLIP_MAX_LENGTH,
    build_clip_tokenizer,
    build_t5_tokenizer,
)

# Every part tiny (see `optim.families.tiny`).
TINY_CONFIG: dict[str, dict[str, Any]] = {
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
}


# Checked by `probe_cache` on the tiny build (2-step runs, cached output differs from uncached, equal again after
# disable_cache) and by tests/test_families.py.
CACHE_SUPPORT: dict[str, CacheSupport] = {
    FBC: CacheSupport(False, NO_CACHE_MIXIN.format(
        detail="it fails: 'No cache context is set' (the pipeline never calls cache_context)")),
    PAB: CacheSupport(False, NO_CACHE_MIXIN.format(
        detail="it runs (no cache context needed; batched CFG) given a timestep callback other than "
               "pipe.current_timestep, which StableDiffusion3Pipeline lacks; spatial = every block's `attn` plus "
               "`attn2` of the dual-attention (SD3.5) blocks")),
    FASTER: CacheSupport(False, NO_CACHE_MIXIN.format(
        detail="it runs (batched CFG, tensor_format BCHW) given a timestep callback (no pipe.current_timestep)")),
    MAG: CacheSupport(False, NO_CACHE_MIXIN.format(
        detail="it runs (MagCache sets a default 'inference' context when none is set)")),
    TAYLOR: CacheSupport(False, NO_CACHE_MIXIN.format(
        detail="it fails: 'No cache context is set'")),
}


def build_tiny(seed: int) -> Any:
    """The tiny sd3 pipeline: every part tiny, random weights (bit-identical per seed)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    cfg = TINY_CONFIG
    tokenizer, tokenizer_2, tokenizer_3 = build_clip_tokenizer(), build_clip_tokenizer(), build_t5_tokenizer()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        text_encoder=seeded(seed, lambda: clip_encoder(cfg["text_encoder"], tokenizer, projection=True)),
        tokenizer=tokenizer,
        text_encoder_2=seeded(seed + 1, lambda: clip_encoder(cfg["text_encoder_2"], tokenizer_2, projection=True)),
        tokenizer_2=tokenizer_2,
        text_encoder_3=seeded(seed + 2, lambda: t5_encoder(cfg["text_encoder_3"], tokenizer_3)),
        tokenizer_3=tokenizer_3,
        vae=seeded(seed + 3, lambda: AutoencoderKL(**cfg["vae"])),
        transformer=seeded(seed + 4, lambda: SD3Transformer2DModel(**cfg["transformer"])),
    )


# Guidance (diffusers 0.42.1 pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py 1067):
# torch.cat([latents] * 2), one call; 1085 chunk(2). The loop never calls transformer.cache_context (and
# SD3Transformer2DModel has no CacheMixin).
FAMILY = Family(
    key="sd3",
    pipeline_class="StableDiffusion3Pipeline",
    cache_dit_adapter="StableDiffusion3",
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
    tiny=RunSettings(TINY_PROMPT, TINY_NEGATIVE, 4, 64, 64, 4.5, 32),
    full_size=("sd3.5-medium",),
    attention_dispatcher=False,  # JointAttnProcessor2_0 calls F.scaled_dot_product_attention directly
    cache_support=CACHE_SUPPORT,
    # + 1 spatial (attn2) in each dual_attention_layers block
    pab_matches_per_block={"spatial": 1, "temporal": 0, "cross": 0},
    tiny_config=TINY_CONFIG,
    build=build_tiny,
    direct_attention_processor="JointAttnProcessor2_0",
)


FULL_SIZE: dict[str, FullSizeModel] = {
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
}
