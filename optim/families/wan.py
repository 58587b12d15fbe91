"""Wan 2.1 (`wan`): diffusers' WanPipeline, text to video, 1.3B and 14B.

Its descriptor, which step caches work on it and why, its tiny random build and its published full-size models.
"""

from __future__ import annotations

from typing import Any

from optim.families.base import (
    FASTER,
    FBC,
    MAG,
    PAB,
    PER_MODULE_STATE,
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
    UMT5_XXL,
    WAN_NEGATIVE_PROMPT,
    WAN_SCHEDULER,
    WAN_VAE,
)
from optim.families.tiny import seeded, t5_encoder
from optim.families.tokenizers import (
    build_t5_tokenizer,
)

WAN_TRANSFORMER = dict(patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
                        freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                        added_kv_proj_dim=None, rope_max_seq_len=1024)


# Every part tiny (see `optim.families.tiny`).
TINY_CONFIG: dict[str, dict[str, Any]] = {
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
}


# Checked by `probe_cache` on the tiny build (2-step runs, cached output differs from uncached, equal again after
# disable_cache) and by tests/test_families.py.
CACHE_SUPPORT: dict[str, CacheSupport] = {
    FBC: CacheSupport(True, "blocks ModuleList; WanTransformerBlock registered (returns hidden_states only); "
                       "state per cache_context"),
    PAB: CacheSupport(False, "matches attn1 (spatial) and attn2 (cross, is_cross_attention=True) of every "
                       "block, but " + PER_MODULE_STATE + " (Wan's cond/uncond calls). Wan pads the text to "
                       "max_sequence_length, so shapes agree and it runs, silently mixing the branches; correct "
                       "only with guidance_scale <= 1"),
    FASTER: CacheSupport(False, "is_guidance_distilled=False fails (IndexError: the denoiser hook's chunk(2) of "
                          "a batch of 1); True runs but mixes the branches: " + PER_MODULE_STATE,
                          {"is_guidance_distilled": True}),
    MAG: CacheSupport(True, "same block discovery as FirstBlockCache; no published ratios: calibrate first"),
    TAYLOR: CacheSupport(True, "default patterns need a name ENDING in 'attn' (re.fullmatch), Wan's are "
                          "'attn1'/'attn2': the default config hooks nothing (a silent no-op); use_lite_mode "
                          "(proj_out + whole blocks) works", {"use_lite_mode": True}),
}


def frames_made(num_frames: int) -> int:
    """Wan rounds the frame count to 4k+1 (pipeline_wan.py: `num_frames // 4 * 4 + 1`, with a warning)."""
    return num_frames if num_frames % 4 == 1 else num_frames // 4 * 4 + 1


def build_tiny(seed: int) -> Any:
    """The tiny wan pipeline: every part tiny, random weights (bit-identical per seed)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    cfg = TINY_CONFIG
    tokenizer = build_t5_tokenizer()
    return WanPipeline(
        scheduler=UniPCMultistepScheduler(**cfg["scheduler"]),
        text_encoder=seeded(seed, lambda: t5_encoder(cfg["text_encoder"], tokenizer, umt5=True)),
        tokenizer=tokenizer,
        vae=seeded(seed + 1, lambda: AutoencoderKLWan(**cfg["vae"])),
        transformer=seeded(seed + 2, lambda: WanTransformer3DModel(**cfg["transformer"])),
    )


# Guidance (diffusers 0.42.1 pipelines/wan/pipeline_wan.py 620 / 630): cond and uncond are separate calls
# (do_classifier_free_guidance: guidance_scale > 1).
FAMILY = Family(
    key="wan",
    pipeline_class="WanPipeline",
    cache_dit_adapter="Wan",
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
    tiny=RunSettings(TINY_PROMPT, TINY_NEGATIVE, 4, 32, 32, 5.0, 16, num_frames=9, fps=16),
    full_size=("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"),
    default_fps=16,
    cache_support=CACHE_SUPPORT,
    pab_matches_per_block={"spatial": 1, "temporal": 0, "cross": 1},
    tiny_config=TINY_CONFIG,
    build=build_tiny,
    frames_for=frames_made,
)


FULL_SIZE: dict[str, FullSizeModel] = {
    "wan2.1-t2v-1.3b": FullSizeModel(
        name="wan2.1-t2v-1.3b",
        family="wan",
        hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        transformer=dict(WAN_TRANSFORMER, num_attention_heads=12, ffn_dim=8960, num_layers=30),
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
        transformer=dict(WAN_TRANSFORMER, num_attention_heads=40, ffn_dim=13824, num_layers=40),
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
