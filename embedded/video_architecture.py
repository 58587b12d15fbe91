"""The untrained tiny CogVideoX pipeline, built from configs in code (no files, no downloads).

``build_pipeline(seed)`` returns a real ``diffusers.CogVideoXPipeline`` whose parts are all tiny:

* ``transformer``: ``CogVideoXTransformer3DModel`` (CogVideoX 1.0 layout: one joint text+video
  attention per block, 2x2 spatial patches, no temporal patching), 3D rotary position embeddings
  like CogVideoX-5b (so ``max_sequence_length`` is free), text width = the tiny T5's width.
* ``vae``: ``AutoencoderKLCogVideoX`` with 3 blocks (spatial factor 4: 64x64 frames -> 16x16 latents,
  so a 12-24 pixel shape keeps its outline; a factor-8 VAE reconstructed circles, squares and
  triangles right only 69% of the time) and CogVideoX's temporal compression 4 (the first two
  down / up blocks also halve / double time, causal 3D convolutions), so 9 frames -> 3 latent frames
  exactly as in the real model, and the pipeline's frame arithmetic ``(num_frames - 1) // 4 + 1`` holds.
  With 2x2 patches the transformer sees 8x8 tokens per latent frame, each 8x8 pixels: the geometry of
  the embedded image model (128x128, factor 8, 1x1 patches), which draws its shapes.
* ``text_encoder`` / ``tokenizer``: a 2-layer, 64-wide ``T5EncoderModel`` (random, frozen, its first
  relative-position bias sharpened as in the image model) and a Unigram ``T5Tokenizer`` with one
  piece per vocabulary word.
* ``scheduler``: ``CogVideoXDDIMScheduler`` with the settings CogVideoX-5b publishes (v-prediction,
  scaled-linear betas, zero terminal SNR, trailing spacing, ``snr_shift_scale=1.0``; CogVideoX-2b uses 3.0).

Weights are initialised under ``torch.manual_seed(seed + k)`` in a fixed order, so two builds with the
same seed are bit-identical.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
from transformers import T5EncoderModel, T5Tokenizer

from . import video_dataset
from .architecture import _sharpen_t5, count_parameters, t5_config, t5_tokenizer  # noqa: F401  (count_parameters re-exported)

MAX_SEQUENCE_LENGTH = 16  # T5 length used in training and recommended for inference
EXTRA_WORDS = ("an", "of", "in", "with", "medium", "shape", "video", "and", "is", "the", "at")
LATENT_CHANNELS = 16
VAE_SPATIAL_FACTOR = 4  # 2 ** (number of VAE blocks - 1)

TRANSFORMER_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,  # RoPE splits it 8 (time) + 12 (height) + 12 (width)
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    flip_sin_to_cos=True,
    freq_shift=0,
    time_embed_dim=128,
    text_embed_dim=64,  # = T5 d_model
    num_layers=6,
    dropout=0.0,
    attention_bias=True,
    sample_width=video_dataset.VIDEO_SIZE // VAE_SPATIAL_FACTOR,  # in latent pixels
    sample_height=video_dataset.VIDEO_SIZE // VAE_SPATIAL_FACTOR,
    sample_frames=video_dataset.NUM_FRAMES,
    patch_size=2,
    patch_size_t=None,
    temporal_compression_ratio=4,
    max_text_seq_length=MAX_SEQUENCE_LENGTH,
    activation_fn="gelu-approximate",
    timestep_activation_fn="silu",
    norm_elementwise_affine=True,
    norm_eps=1e-5,
    spatial_interpolation_scale=1.875,
    temporal_interpolation_scale=1.0,
    use_rotary_positional_embeddings=True,
    use_learned_positional_embeddings=False,
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3,
    block_out_channels=(16, 32, 64),
    latent_channels=LATENT_CHANNELS,
    layers_per_block=1,
    act_fn="silu",
    norm_eps=1e-6,
    norm_num_groups=4,
    temporal_compression_ratio=4,
    sample_height=video_dataset.VIDEO_SIZE,
    sample_width=video_dataset.VIDEO_SIZE,
    scaling_factor=1.0,  # set from latent statistics after VAE training
    force_upcast=False,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SCHEDULER_CONFIG = dict(  # CogVideoX-5b's published scheduler config (2b: snr_shift_scale=3.0)
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    clip_sample_range=1.0,
    sample_max_value=1.0,
    set_alpha_to_one=True,
    steps_offset=0,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    snr_shift_scale=1.0,
    timestep_spacing="trailing",
)


def vocabulary_words() -> list[str]:
    words = {"a", "on", "background"}
    words.update(video_dataset.COLOURS)
    words.update(video_dataset.SHAPES)
    words.update(s for s in video_dataset.SIZES if s)
    for phrase in video_dataset.MOTIONS.values():
        words.update(phrase.split())
    words.update(EXTRA_WORDS)
    return sorted(words)


def build_t5_tokenizer() -> T5Tokenizer:
    """Unigram with one piece per vocabulary word ("▁red", ...) and single characters as fallback (the image
    model's tokenizer, with this model's words)."""
    return t5_tokenizer(vocabulary_words())


def build_pipeline(seed: int = 0, transformer_config: dict | None = None, vae_config: dict | None = None
                   ) -> CogVideoXPipeline:
    """A fresh, untrained CogVideoXPipeline, bit-identical for the same ``seed`` (and configs)."""
    tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed + 1)
    text_encoder = T5EncoderModel(t5_config(tokenizer))
    _sharpen_t5(text_encoder, seed)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLCogVideoX(**(vae_config or VAE_CONFIG))
    torch.manual_seed(seed + 3)
    transformer = CogVideoXTransformer3DModel(**(transformer_config or TRANSFORMER_CONFIG))
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    for module in (text_encoder, vae, transformer):
        module.eval()
    text_encoder.requires_grad_(False)
    return CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=scheduler)
