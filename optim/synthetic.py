"""Synthetic full-size models: the real architecture and dimensions of a popular model with random weights and no
download, so that latency and memory on a real GPU can be measured anywhere (a Space without a Hub token, a
machine without network). The images are noise; only speed and memory mean anything, and only on a GPU: on a
CPU these models do not fit in memory or take minutes per step.

Weights are created on the meta device and materialized directly on the target device with a seeded normal
initialization (norm weights 1, biases 0), so building FLUX.1-dev takes seconds on a GPU.

    >>> pipe = build_synthetic_pipeline("flux-dev", torch_dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optim.models import ModelDefaults

# FLUX.1-dev's published configs (black-forest-labs/FLUX.1-dev: transformer/, vae/, text_encoder/, text_encoder_2/).
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
FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)


@dataclass(frozen=True)
class SyntheticModel:
    description: str
    defaults: ModelDefaults
    transformer: dict[str, Any] = field(default_factory=dict)

    def describe(self, name: str) -> dict[str, Any]:
        """What `optim.compat` needs, as `describe_model` gives it for real models."""
        return {
            "synthetic": name,
            "pipeline": "FluxPipeline",
            "transformer": "FluxTransformer2DModel",
            "guidance_embeds": bool(self.transformer["guidance_embeds"]),
            "guidance": "distilled" if self.transformer["guidance_embeds"] else "true_cfg",
            "components": {
                "transformer": "diffusers",
                "vae": "diffusers",
                "text_encoder": "transformers",
                "text_encoder_2": "transformers",
            },
        }


SYNTHETIC_MODELS: dict[str, SyntheticModel] = {
    "flux-dev": SyntheticModel(
        description="FLUX.1-dev's architecture (12B transformer, T5-XXL, CLIP-L, 16-channel VAE), random weights",
        defaults=ModelDefaults(steps=28, width=1024, height=1024, guidance_scale=3.5, max_sequence_length=512),
        transformer=FLUX_TRANSFORMER,
    ),
    "flux-schnell": SyntheticModel(
        description="FLUX.1-schnell's architecture (no guidance embeddings), random weights",
        defaults=ModelDefaults(steps=4, width=1024, height=1024, guidance_scale=0.0, max_sequence_length=256),
        transformer={**FLUX_TRANSFORMER, "guidance_embeds": False},
    ),
}


def _clip_tokenizer() -> Any:
    """A byte-level CLIP tokenizer with no merges: every character is a token (real ids, synthetic model)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # CLIP's byte -> character table

    alphabet = list(bytes_to_unicode().values())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.model_max_length = CLIP_L["max_position_embeddings"]
    return tokenizer


def _t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(ch, -5.0) for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,'-!?"]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.model_max_length = 512
    return tokenizer


def _materialize(module: Any, device: str, dtype: Any, seed: int) -> Any:
    """Allocate a meta-device module on `device` and fill it: normal(0, 0.02), norms 1, biases 0."""
    import torch

    if device == "meta":
        return module.to(dtype=dtype)
    module = module.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif parameter.dim() == 1:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
        for name, buffer in module.named_buffers():
            if buffer.is_floating_point() and not torch.isfinite(buffer).all():
                buffer.zero_()
    return module.to(dtype=dtype).eval()


def build_synthetic_pipeline(key: str, *, torch_dtype: Any, device: str) -> Any:
    """The synthetic pipeline `key` on `device` ("meta" builds it without allocating, for inspection)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    model = SYNTHETIC_MODELS[key]
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    with init_empty_weights(include_buffers=False):
        transformer = FluxTransformer2DModel(**model.transformer)
        vae = AutoencoderKL(**FLUX_VAE)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **CLIP_L,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        text_encoder_2 = T5EncoderModel(
            T5Config(**T5_XXL, pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id)
        )
    text_encoder_2.tie_weights()  # T5 shares its input embedding; under init_empty_weights it is not tied yet
    parts = {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for offset, (name, module) in enumerate(parts.items()):
        parts[name] = _materialize(module, device, torch_dtype, seed=offset)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        **parts,
    )
