"""Published configs of the text encoders and VAE several families share (CLIP-L and CLIP-G, T5-XXL and UMT5-XXL,
Qwen2.5-VL-7B, Wan 2.1's VAE and scheduler), written from memory of their config.json files: nothing here was
downloaded. Each family's own published configs are in its module.
"""

from __future__ import annotations

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
