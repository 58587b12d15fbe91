"""CogVideoX (`cogvideox`): diffusers' CogVideoXPipeline, text to video; the embedded video model is one too.

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
    T5_XXL,
)
from optim.families.tiny import seeded, t5_encoder
from optim.families.tokenizers import (
    build_t5_tokenizer,
)

# Every part tiny (see `optim.families.tiny`).
TINY_CONFIG: dict[str, dict[str, Any]] = {
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
}


# Checked by `probe_cache` on the tiny build (2-step runs, cached output differs from uncached, equal again after
# disable_cache) and by tests/test_families.py.
CACHE_SUPPORT: dict[str, CacheSupport] = {
    FBC: CacheSupport(True, "transformer_blocks ModuleList; CogVideoXBlock registered; one cond_uncond context "
                       "(batched CFG)"),
    PAB: CacheSupport(True, "spatial: every CogVideoXBlock's attn1 (joint text+video self-attention); no "
                       "cross or temporal modules. One call per step, so per-module state is correct "
                       "(PAB's paper setting)"),
    FASTER: CacheSupport(True, "designed for it: batched CFG (uncond approximated from cond), output "
                          "(B, F, C, H, W) so tensor_format BFCHW; matches attn1 of every block",
                          {"tensor_format": "BFCHW"}),
    MAG: CacheSupport(True, "same block discovery as FirstBlockCache; no published ratios: calibrate first"),
    TAYLOR: CacheSupport(True, "default patterns need a name ENDING in 'attn' (re.fullmatch), CogVideoX's is "
                          "'attn1': the default config hooks nothing (a silent no-op); use_lite_mode "
                          "(proj_out + whole blocks) works", {"use_lite_mode": True}),
}


def frames_made(num_frames: int) -> int:
    """CogVideoX (1.0) encodes 4 frames per latent frame and its VAE decodes latent frames in pairs, so an even
    number of latent frames comes out as 4 per latent (5 -> 8, 13 -> 16): only 8k+1 frames (9, 17, 49) come out
    as asked (measured on the tiny build, tests/test_video.py)."""
    latents = (num_frames - 1) // 4 + 1
    return 4 * (latents - 1) + 1 if latents % 2 == 1 or latents == 1 else 4 * latents


def build_tiny(seed: int) -> Any:
    """The tiny cogvideox pipeline: every part tiny, random weights (bit-identical per seed)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    cfg = TINY_CONFIG
    tokenizer = build_t5_tokenizer()
    return CogVideoXPipeline(
        scheduler=CogVideoXDDIMScheduler(**cfg["scheduler"]),
        text_encoder=seeded(seed, lambda: t5_encoder(cfg["text_encoder"], tokenizer)),
        tokenizer=tokenizer,
        vae=seeded(seed + 1, lambda: AutoencoderKLCogVideoX(**cfg["vae"])),
        transformer=seeded(seed + 2, lambda: CogVideoXTransformer3DModel(**cfg["transformer"])),
    )


# Guidance (diffusers 0.42.1 pipelines/cogvideo/pipeline_cogvideox.py 723): torch.cat([latents] * 2); 730 one call
# in cache_context("cond_uncond"); 747 chunk(2).
FAMILY = Family(
    key="cogvideox",
    pipeline_class="CogVideoXPipeline",
    cache_dit_adapter="CogVideoX",
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
    tiny=RunSettings(TINY_PROMPT, TINY_NEGATIVE, 4, 32, 32, 6.0, 16, num_frames=9, fps=8),
    full_size=("cogvideox-5b",),
    attention_dispatcher=False,  # CogVideoXAttnProcessor2_0 calls F.scaled_dot_product_attention
    default_fps=8,
    cache_support=CACHE_SUPPORT,
    pab_matches_per_block={"spatial": 1, "temporal": 0, "cross": 0},
    tiny_config=TINY_CONFIG,
    build=build_tiny,
    frames_for=frames_made,
    direct_attention_processor="CogVideoXAttnProcessor2_0",
)


FULL_SIZE: dict[str, FullSizeModel] = {
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
        scheduler=("CogVideoXDDIMScheduler", TINY_CONFIG["scheduler"]),
        # Model card: 50 steps, guidance 6, 720x480, 49 frames at 8 fps, 226 text tokens.
        settings=RunSettings("a panda playing a guitar in a bamboo forest", None, 50, 720, 480, 6.0, 226,
                             num_frames=49, fps=8),
        published_params_b=5.57,
        published_as="5B (name); 5.57B in the Hub's safetensors metadata",
        source="THUDM/CogVideoX-5b transformer/, vae/, scheduler/ config.json; model card",
        uncertain=("vae scaling_factor 0.7", "scheduler snr_shift_scale 1.0"),
    ),
}
