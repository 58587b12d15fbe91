"""The untrained tiny FLUX pipeline, built from configs in code (no files, no downloads).

``build_pipeline(seed)`` returns a real ``diffusers.FluxPipeline`` whose parts are all tiny:

* ``transformer``: ``FluxTransformer2DModel``, patch_size 1, 2 double + 4 single blocks,
  4 heads x 32 dims (inner dim 128), in_channels 32 (= 8 latent channels x 2x2 packing).
* ``vae``: ``AutoencoderKL`` with 4 blocks of (8, 16, 32, 64) channels (scale factor 8),
  8 latent channels, no attention, no quant convs (like FLUX's VAE).
* ``text_encoder`` / ``tokenizer``: a 2-layer, 64-wide ``CLIPTextModel`` and a byte-level BPE
  ``CLIPTokenizer`` whose merges make every vocabulary word a single token.
* ``text_encoder_2`` / ``tokenizer_2``: a 2-layer, 64-wide ``T5EncoderModel`` and a Unigram
  ``T5Tokenizer`` with one piece per vocabulary word (plus single letters as a fallback).
* ``scheduler``: ``FlowMatchEulerDiscreteScheduler`` with FLUX.1-dev's settings.

The text encoders stay random and frozen: training only teaches the transformer (and the VAE)
to read their outputs. Weights are initialised under ``torch.manual_seed(seed)`` in a fixed
order, so two builds with the same seed are bit-identical.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from . import dataset

# Extra words the tokenizers know as whole tokens beyond the dataset grammar (cheap, harmless).
EXTRA_WORDS = ("an", "of", "in", "with", "medium", "centre", "center", "shape", "picture", "and")
CLIP_MAX_LENGTH = 24  # the pipeline pads CLIP input to tokenizer.model_max_length
MAX_SEQUENCE_LENGTH = 16  # T5 length used in training and recommended for inference

TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=32,
    out_channels=None,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 32, 64),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=8,
    norm_num_groups=4,
    sample_size=dataset.IMAGE_SIZE,
    scaling_factor=1.0,  # set from latent statistics after VAE training
    shift_factor=0.0,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
    force_upcast=False,
)
SCHEDULER_CONFIG = dict(  # FLUX.1-dev's scheduler config
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


def vocabulary_words() -> list[str]:
    words = {"a", "on", "at", "the", "background", "top", "bottom", "left", "right"}
    words.update(dataset.COLOURS)
    words.update(dataset.SHAPES)
    words.update(s for s in dataset.SIZES if s)
    words.update(EXTRA_WORDS)
    return sorted(words)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE: the 256-byte alphabet (plain and end-of-word forms) plus merges that
    build each vocabulary word left to right, so every known word is one token."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    seen = set()
    # Longest words first so that their chains win ties against shorter words' merges.
    for word in sorted(vocabulary_words(), key=lambda w: (-len(w), w)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for nxt in pieces[1:]:
            if (left, nxt) not in seen:
                seen.add((left, nxt))
                merges.append((left, nxt))
                vocab.setdefault(left + nxt, len(vocab))
            left = left + nxt
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = CLIP_MAX_LENGTH
    return tok


def build_t5_tokenizer() -> T5Tokenizer:
    """Unigram with one piece per vocabulary word ("▁red", ...) and single characters as fallback."""
    return t5_tokenizer(vocabulary_words())


def t5_tokenizer(words: list[str]) -> T5Tokenizer:
    """The T5 tokenizer both embedded models use: one piece per word of `words`, single characters as fallback."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    for word in words:
        pieces.append(("\u2581" + word, -1.0))
    pieces.append(("\u2581", -5.0))
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789.,'-":
        pieces.append((ch, -8.0))
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = 512
    return tok


def clip_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        projection_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def t5_config(tokenizer: T5Tokenizer) -> T5Config:
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=0,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def _sharpen_t5(model: T5EncoderModel, seed: int) -> None:
    """Give the random T5 encoder a strong, structured relative-position bias.

    FLUX gives all text tokens the same position id (txt_ids are zeros), so word order reaches
    the transformer only through the text encoder. With a random T5 the attention is nearly
    uniform and "a red circle on a blue background" would encode almost like "a blue circle on
    a red background". Biasing each head towards a fixed neighbour (-1, +1, +2, 0) makes every
    token's output carry its neighbours ("blue" next to "background" vs next to "circle"),
    which a real, trained T5 does as well. Deterministic given ``seed``.
    """
    attn = model.encoder.block[0].layer[0].SelfAttention
    cfg = model.config
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        bias = attn.relative_attention_bias.weight  # (num_buckets, num_heads)
        bias.copy_(torch.randn(bias.shape, generator=g) * 0.5)
        targets = (-1, 1, 2, 0)
        for head in range(cfg.num_heads):
            rel = torch.tensor([[targets[head % len(targets)]]])
            bucket = attn._relative_position_bucket(
                rel, bidirectional=True, num_buckets=cfg.relative_attention_num_buckets,
                max_distance=cfg.relative_attention_max_distance,
            )
            bias[int(bucket), head] += 6.0


def build_pipeline(seed: int = 0) -> FluxPipeline:
    """A fresh, untrained FluxPipeline, bit-identical for the same ``seed``."""
    tokenizer = build_clip_tokenizer()
    tokenizer_2 = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_config(tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(t5_config(tokenizer_2))
    _sharpen_t5(text_encoder_2, seed)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 3)
    transformer = FluxTransformer2DModel(**TRANSFORMER_CONFIG)
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    for module in (text_encoder, text_encoder_2, vae, transformer):
        module.eval()
    text_encoder.requires_grad_(False)
    text_encoder_2.requires_grad_(False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
