"""Qwen-Image (`qwen-image`): diffusers' QwenImagePipeline, a 20B MMDiT with a Qwen2.5-VL text encoder.

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
    QWEN25_VL_7B,
    WAN_VAE,
)
from optim.families.tiny import seeded
from optim.families.tokenizers import (
    QWEN_TEMPLATE_PREFIX_TOKENS,
    build_qwen2_tokenizer,
)

# Every part tiny (see `optim.families.tiny`).
TINY_CONFIG: dict[str, dict[str, Any]] = {
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
}


# Checked by `probe_cache` on the tiny build (2-step runs, cached output differs from uncached, equal again after
# disable_cache) and by tests/test_families.py.
CACHE_SUPPORT: dict[str, CacheSupport] = {
    FBC: CacheSupport(True, "transformer_blocks ModuleList; QwenImageTransformerBlock registered "
                       "(returns encoder_hidden_states, hidden_states); state per cache_context"),
    PAB: CacheSupport(False, "matches every block's joint `attn` as spatial, but " + PER_MODULE_STATE
                       + " (true CFG: cond then uncond). Prompt and negative prompt of different token counts "
                       "(the usual case) then fail: 'The size of tensor a (9) must match the size of tensor b "
                       "(11)'; equal counts run, mixing the branches"),
    FASTER: CacheSupport(False, "is_guidance_distilled=False fails (IndexError: the denoiser hook's chunk(2) of "
                          "a batch of 1); True fails or mixes like PAB: " + PER_MODULE_STATE,
                          {"is_guidance_distilled": True}),
    MAG: CacheSupport(True, "same block discovery as FirstBlockCache; no published ratios: calibrate first "
                       "(each cache_context gets its own state)"),
    TAYLOR: CacheSupport(True, "default pattern '^transformer_blocks.*attn' matches every block's `attn`; "
                          "state per cache_context"),
}


def build_tiny(seed: int) -> Any:
    """The tiny qwen-image pipeline: every part tiny, random weights (bit-identical per seed)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = TINY_CONFIG
    tokenizer = build_qwen2_tokenizer()
    text = {**cfg["text_encoder"]["text_config"], "vocab_size": len(tokenizer),
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = Qwen2_5_VLConfig(**{**cfg["text_encoder"], "text_config": text})
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**cfg["scheduler"]),
        text_encoder=seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config)),
        tokenizer=tokenizer,
        vae=seeded(seed + 1, lambda: AutoencoderKLQwenImage(**cfg["vae"])),
        transformer=seeded(seed + 2, lambda: QwenImageTransformer2DModel(**cfg["transformer"])),
    )
    check_qwen_template(pipe)
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


def check_qwen_template(pipe: Any) -> None:
    """Fail loudly if the tiny tokenizer would make QwenImagePipeline drop prompt tokens or keep template ones."""
    prefix = pipe.prompt_template_encode.split("{}")[0]
    count = len(pipe.tokenizer(prefix).input_ids)
    if count != pipe.prompt_template_encode_start_idx or count != QWEN_TEMPLATE_PREFIX_TOKENS:
        raise RuntimeError(
            f"the tiny Qwen2 tokenizer gives {count} tokens for QwenImagePipeline's template prefix; the pipeline "
            f"drops {pipe.prompt_template_encode_start_idx}: fix VOCABULARY so the template words are whole tokens"
        )


# Guidance (diffusers 0.42.1 pipelines/qwenimage/pipeline_qwenimage.py 644 / 657): cond and uncond are separate
# calls (true_cfg_scale, 564); guidance_scale only feeds guidance embeddings, which Qwen-Image does not have
# (618-629).
FAMILY = Family(
    key="qwen-image",
    pipeline_class="QwenImagePipeline",
    cache_dit_adapter="QwenImage",
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
    tiny=RunSettings(TINY_PROMPT, TINY_NEGATIVE, 4, 64, 64, 4.0, 32),
    full_size=("qwen-image",),
    cache_support=CACHE_SUPPORT,
    pab_matches_per_block={"spatial": 1, "temporal": 0, "cross": 0},
    tiny_config=TINY_CONFIG,
    build=build_tiny,
)


FULL_SIZE: dict[str, FullSizeModel] = {
    "qwen-image": FullSizeModel(
        name="qwen-image",
        family="qwen-image",
        hub_id="Qwen/Qwen-Image",
        transformer=dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                         axes_dims_rope=(16, 56, 56)),
        vae=dict(WAN_VAE),  # the Qwen-Image VAE keeps Wan 2.1's architecture and latent statistics
        text_encoders={"text_encoder": ("Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B)},
        scheduler=("FlowMatchEulerDiscreteScheduler", TINY_CONFIG["scheduler"]),
        # Model card: 50 steps, true_cfg_scale 4.0, negative_prompt " ", 1328x1328 for 1:1.
        settings=RunSettings("a photo of a cat", " ", 50, 1328, 1328, 4.0, 512),
        published_params_b=20.4,
        published_as="20B MMDiT (model card); 20.4B in the Hub's safetensors metadata",
        source="Qwen/Qwen-Image transformer/, vae/, text_encoder/, scheduler/ config.json; model card",
        uncertain=("vae latents_mean/std (assumed equal to Wan 2.1's)", "scheduler shift_terminal / max_shift",
                   "text_encoder vision_config tokens_per_second"),
    ),
}
