"""Synthetic full-size models: the real architecture and dimensions of a popular model with random weights and no
download, so that latency and memory on a real GPU can be measured anywhere (a Space without a Hub token, a
machine without network). The images are noise; only speed and memory mean anything, and only on a GPU: on a
CPU these models do not fit in memory or take minutes per step.

A synthetic model is written once as an ordinary diffusers folder (configs, tokenizers, safetensors weights) in
the model cache, then loaded with `DiffusionPipeline.from_pretrained` like any Hub model: quantization at load,
tied weights, buffers and dtype conversion all take the path a real model takes. Writing streams one shard at a
time: every tensor is made directly in its final dtype (bfloat16), so memory never holds more than one shard and
never an fp32 copy of the 12 B-parameter transformer.

    >>> folder = synthetic_model_path("flux-dev")            # doctest: +SKIP  (about 33 GB, once)
    >>> pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from optim import families
from optim.errors import ModelError

# FLUX.1-dev's published configs live in `optim.families` (one place, beside the other families' published ones).
from optim.families import CLIP_L, FLUX_TRANSFORMER, FLUX_VAE, T5_XXL, FullSizeModel
from optim.model_types import ModelDefaults, ModelInfo

__all__ = ["CLIP_L", "FLUX_TRANSFORMER", "FLUX_VAE", "T5_XXL", "SYNTHETIC_MODELS", "SyntheticModel",
           "synthetic_model_path"]

FLUX_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

# Weights are written in this dtype (the published one); `from_pretrained(torch_dtype=...)` converts on load.
WEIGHTS_DTYPE = "bfloat16"
SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Part:
    """One component of a pipeline folder: its library, class and config (transformers: the config class too)."""

    library: str  # "diffusers" or "transformers"
    class_name: str
    config: dict[str, Any]
    config_class: str | None = None  # transformers only


@dataclass(frozen=True)
class SyntheticModel:
    description: str
    defaults: ModelDefaults
    pipeline: str
    parts: dict[str, Part]
    tokenizers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    scheduler: tuple[str, dict[str, Any]] = ("FlowMatchEulerDiscreteScheduler", FLUX_SCHEDULER)
    family: str = "flux"  # the `optim.families` key
    runs_on_cpu: bool = False  # small enough for a CPU (the GPU check's dry run); full-size ones need a GPU

    @property
    def video(self) -> bool:
        return families.family(self.family).video

    @property
    def transformer(self) -> dict[str, Any]:
        return self.parts["transformer"].config

    def describe(self, name: str) -> ModelInfo:
        """What `optim.compat` needs, as `describe_model` gives it for real models (no weights are written)."""
        embeds = bool(self.transformer.get("guidance_embeds", False))
        return ModelInfo(
            pipeline=self.pipeline,
            transformer=self.parts["transformer"].class_name,
            guidance=families.guidance_style(self.family, embeds),
            components=self.components(),
            guidance_embeds=embeds,
            attention_head_dim=self.transformer.get("attention_head_dim"),
            synthetic=name,
            family=self.family,
            video=self.video,
        )

    def components(self) -> dict[str, str]:
        """{component: library} of every part that holds weights."""
        return {name: part.library for name, part in self.parts.items()}

    def fingerprint(self) -> str:
        """Changes whenever the folder's contents would: the configs and the libraries that write them."""
        import diffusers
        import transformers

        data = {
            "pipeline": self.pipeline,
            "parts": {name: [p.library, p.class_name, p.config, p.config_class] for name, p in self.parts.items()},
            "tokenizers": sorted(self.tokenizers),
            "scheduler": self.scheduler,
            "versions": [diffusers.__version__, transformers.__version__, WEIGHTS_DTYPE, 1],
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:12]


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


# The special tokens' ids in the tokenizers above (CLIP: 256 byte characters, 256 end-of-word ones, then
# <|startoftext|> and <|endoftext|>, which also pads; T5: <pad> 0, </s> 1). CLIP finds its pooled output by them.
CLIP_TOKEN_IDS = dict(bos_token_id=512, eos_token_id=513, pad_token_id=513)
T5_TOKEN_IDS = dict(pad_token_id=0, eos_token_id=1)


def flux_parts(transformer: dict[str, Any], *, clip: dict[str, Any] = CLIP_L, t5: dict[str, Any] = T5_XXL,
               vae: dict[str, Any] = FLUX_VAE) -> dict[str, Part]:
    """The components of a FluxPipeline folder with these dimensions."""
    return {
        "transformer": Part("diffusers", "FluxTransformer2DModel", transformer),
        "vae": Part("diffusers", "AutoencoderKL", vae),
        "text_encoder": Part("transformers", "CLIPTextModel", {**clip, **CLIP_TOKEN_IDS}, "CLIPTextConfig"),
        "text_encoder_2": Part("transformers", "T5EncoderModel", {**t5, **T5_TOKEN_IDS}, "T5Config"),
    }


FLUX_TOKENIZERS = {"tokenizer": _clip_tokenizer, "tokenizer_2": _t5_tokenizer}

# The configs class of each transformers text encoder a full-size model uses.
_CONFIG_CLASSES = {"CLIPTextModel": "CLIPTextConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                   "T5EncoderModel": "T5Config", "UMT5EncoderModel": "UMT5Config",
                   "Qwen2_5_VLForConditionalGeneration": "Qwen2_5_VLConfig"}
# Token ids the text encoders' configs take from the tokenizers below (T5 and UMT5 share families' T5 tokenizer:
# <pad> 0, </s> 1). Qwen2.5-VL keeps its published ids: they only size nothing and pick no pooled token.
_TOKEN_IDS = {"T5EncoderModel": T5_TOKEN_IDS, "UMT5EncoderModel": {**T5_TOKEN_IDS, "decoder_start_token_id": 0}}
# The tokenizers `optim.families` builds in code (whole words for its vocabulary, characters for the rest): real
# token ids for the pipeline's padding and attention masks; the text is noise to random weights anyway.
_FAMILY_TOKENIZERS: dict[str, dict[str, Callable[[], Any]]] = {
    "qwen-image": {"tokenizer": families.build_qwen2_tokenizer},
    "cogvideox": {"tokenizer": families.build_t5_tokenizer},
    "wan": {"tokenizer": families.build_t5_tokenizer},
}
_DESCRIPTIONS = {
    "qwen-image": "Qwen-Image's architecture (20B MMDiT transformer, Qwen2.5-VL-7B text encoder, 16-channel causal "
                  "3-D VAE), random weights",
    "cogvideox-5b": "CogVideoX-5b's architecture (5.6B video transformer, T5-XXL, 3-D VAE; 49 frames 720x480), "
                    "random weights",
    "wan2.1-t2v-1.3b": "Wan 2.1 T2V 1.3B's architecture (1.4B video transformer, UMT5-XXL, Wan VAE; 81 frames "
                       "832x480), random weights",
    "wan2.1-t2v-14b": "Wan 2.1 T2V 14B's architecture (14B video transformer, UMT5-XXL, Wan VAE; 81 frames "
                      "1280x720), random weights",
}


def defaults_from_settings(settings: families.RunSettings) -> ModelDefaults:
    """A model card's recommended run (`families.RunSettings`) as the lab's `ModelDefaults`."""
    return ModelDefaults(prompt=settings.prompt, negative_prompt=settings.negative_prompt, steps=settings.steps,
                         width=settings.width, height=settings.height, guidance_scale=settings.guidance_scale,
                         max_sequence_length=settings.max_sequence_length, num_frames=settings.num_frames,
                         fps=settings.fps)


def from_full_size(model: FullSizeModel, *, description: str | None = None,
                   tokenizers: dict[str, Callable[[], Any]] | None = None) -> SyntheticModel:
    """A synthetic model from `optim.families`' published configs of a full-size model (`FULL_SIZE_MODELS`)."""
    fam = families.family(model.family)
    parts = {
        "transformer": Part("diffusers", fam.transformer_class, dict(model.transformer)),
        "vae": Part("diffusers", fam.vae.vae_class, dict(model.vae)),
    }
    for component, (class_name, config) in model.text_encoders.items():
        parts[component] = Part("transformers", class_name, {**config, **_TOKEN_IDS.get(class_name, {})},
                                _CONFIG_CLASSES[class_name])
    return SyntheticModel(
        description=description or _DESCRIPTIONS.get(model.name, f"{model.hub_id}'s architecture, random weights"),
        defaults=defaults_from_settings(model.settings),
        pipeline=fam.pipeline_class,
        parts=parts,
        tokenizers=dict(tokenizers if tokenizers is not None else _FAMILY_TOKENIZERS[model.family]),
        scheduler=(model.scheduler[0], dict(model.scheduler[1])),
        family=model.family,
    )


# FLUX's layout at toy size (2+2 blocks, 4 heads of 16, a small T5 and CLIP): the GPU check's dry run on a CPU
# builds, quantizes and compares it through exactly the code path the full-size model takes on the GPU.
FLUX_TINY_TRANSFORMER = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                             num_attention_heads=4, joint_attention_dim=128, pooled_projection_dim=64,
                             guidance_embeds=True, axes_dims_rope=(4, 6, 6))
FLUX_TINY_CLIP = dict(vocab_size=514, hidden_size=64, intermediate_size=128, projection_dim=64, num_hidden_layers=2,
                      num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
FLUX_TINY_T5 = dict(vocab_size=72, d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=0, num_heads=4,
                    relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)
FLUX_TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                     latent_channels=4, norm_num_groups=4, sample_size=64, use_quant_conv=False,
                     use_post_quant_conv=False, scaling_factor=1.0, shift_factor=0.0)

SYNTHETIC_MODELS: dict[str, SyntheticModel] = {
    "flux-dev": SyntheticModel(
        description="FLUX.1-dev's architecture (12B transformer, T5-XXL, CLIP-L, 16-channel VAE), random weights",
        defaults=ModelDefaults(steps=28, width=1024, height=1024, guidance_scale=3.5, max_sequence_length=512),
        pipeline="FluxPipeline",
        parts=flux_parts(FLUX_TRANSFORMER),
        tokenizers=FLUX_TOKENIZERS,
    ),
    "flux-schnell": SyntheticModel(
        description="FLUX.1-schnell's architecture (no guidance embeddings), random weights",
        defaults=ModelDefaults(steps=4, width=1024, height=1024, guidance_scale=0.0, max_sequence_length=256),
        pipeline="FluxPipeline",
        parts=flux_parts({**FLUX_TRANSFORMER, "guidance_embeds": False}),
        tokenizers=FLUX_TOKENIZERS,
    ),
    "flux-tiny": SyntheticModel(
        description="FLUX.1-dev's layout at toy size (0.3M-parameter transformer), random weights: runs on a CPU, "
                    "for dry runs of the GPU check",
        defaults=ModelDefaults(steps=4, width=64, height=64, guidance_scale=3.5, max_sequence_length=32),
        pipeline="FluxPipeline",
        parts=flux_parts(FLUX_TINY_TRANSFORMER, clip=FLUX_TINY_CLIP, t5=FLUX_TINY_T5, vae=FLUX_TINY_VAE),
        tokenizers=FLUX_TOKENIZERS,
        runs_on_cpu=True,
    ),
    **{name: from_full_size(families.FULL_SIZE_MODELS[name])
       for name in ("qwen-image", "cogvideox-5b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b")},
}


# --------------------------------------------------------------------------------------------- writing a folder


def model_cache_dir() -> Path:
    """Where generated models are kept: $OPTIM_MODEL_CACHE, else ~/.cache/optim-lab."""
    return Path(os.environ.get("OPTIM_MODEL_CACHE") or Path.home() / ".cache" / "optim-lab")


def synthetic_model_path(key: str) -> Path:
    """The folder of synthetic model `key`, written on first use (a few GB to tens of GB: see `weights_bytes`)."""
    model = SYNTHETIC_MODELS[key]
    return ensure_written(model, model_cache_dir() / "synthetic" / f"{key}-{model.fingerprint()}")


def ensure_written(model: SyntheticModel, folder: Path, *, seed: int = 0) -> Path:
    """Write `model` into `folder` unless it is already there. Safe when several processes ask at once (a lock;
    the folder appears complete or not at all)."""
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if (folder / "model_index.json").is_file():
            return folder
        need = weights_bytes(model)
        free = shutil.disk_usage(folder.parent).free
        if free < need * 1.05 + 256 * 1024**2:
            raise ModelError(
                f"writing the synthetic model needs {need / 1024**3:.1f} GB free in {folder.parent} "
                f"({free / 1024**3:.1f} GB free); set OPTIM_MODEL_CACHE to a folder on a larger disk"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            write_model(model, staging, seed=seed)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_on_meta(part: Part) -> Any:
    """The component with its weights on the meta device (no memory); buffers stay real, so buffers such as
    CLIP's position ids keep their values."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        if part.library == "diffusers":
            return getattr(diffusers, part.class_name)(**part.config)
        config = getattr(transformers, part.config_class)(**part.config)
        module = getattr(transformers, part.class_name)(config)
    # init_empty_weights re-creates every parameter it registers, which unties tied ones (T5's shared input
    # embedding); tie them again so the tensor is written once and the loader ties it back.
    module.tie_weights()
    return module


def weights_bytes(model: SyntheticModel) -> int:
    """Bytes of the weights written (each tensor once, in WEIGHTS_DTYPE)."""
    import torch

    size = torch.tensor([], dtype=getattr(torch, WEIGHTS_DTYPE)).element_size()
    return sum(tensor.numel() * size for part in model.parts.values() for _, tensor in _tensors(build_on_meta(part)))


def _tensors(module: Any) -> list[tuple[str, Any]]:
    """(name, tensor) of everything the component's state dict holds, tied weights once (the loader ties them)."""
    seen: set[int] = set()
    out = []
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        out.append((name, tensor))
    return out


def write_model(model: SyntheticModel, folder: Path, *, seed: int = 0, shard_bytes: int = SHARD_BYTES) -> None:
    """Write a complete diffusers folder: model_index.json, every part (config + random weights), the tokenizers
    and the scheduler."""
    import diffusers

    index: dict[str, Any] = {"_class_name": model.pipeline, "_diffusers_version": diffusers.__version__}
    for offset, (name, part) in enumerate(model.parts.items()):
        module = build_on_meta(part)
        (folder / name).mkdir(parents=True)
        if part.library == "diffusers":
            module.save_config(folder / name)
            prefix = "diffusion_pytorch_model"
        else:
            module.config.architectures = [part.class_name]
            module.config.save_pretrained(folder / name)
            prefix = "model"
        _write_weights(module, folder / name, prefix, seed=seed + offset, shard_bytes=shard_bytes)
        index[name] = [part.library, part.class_name]
        del module
    for name, make in model.tokenizers.items():
        tokenizer = make()
        tokenizer.save_pretrained(folder / name)
        index[name] = ["transformers", type(tokenizer).__name__]
    scheduler_class, scheduler_config = model.scheduler
    getattr(diffusers, scheduler_class)(**scheduler_config).save_pretrained(folder / "scheduler")
    index["scheduler"] = ["diffusers", scheduler_class]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _random_tensor(name: str, tensor: Any, dtype: Any, generator: Any) -> Any:
    """normal(0, 0.02) for matrices, 1 for norm scales (1-D weights), 0 for biases; made in `dtype` directly."""
    import torch

    if tensor.device.type != "meta":  # a real buffer (kept as the model's constructor made it)
        return tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach().clone()
    out = torch.empty(tensor.shape, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    if name.endswith("bias"):
        return out.zero_()
    if tensor.dim() <= 1:
        return out.fill_(1.0)
    return out.normal_(0.0, 0.02, generator=generator)


def _write_weights(module: Any, folder: Path, prefix: str, *, seed: int, shard_bytes: int) -> None:
    """Random weights as safetensors shards of at most `shard_bytes` (+ the index diffusers/transformers read)."""
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, WEIGHTS_DTYPE)
    generator = torch.Generator().manual_seed(seed)
    shards: list[list[str]] = [[]]
    sizes: list[int] = [0]
    tensors = _tensors(module)
    for name, tensor in tensors:
        kind = dtype if tensor.is_floating_point() else tensor.dtype
        nbytes = tensor.numel() * torch.tensor([], dtype=kind).element_size()
        if shards[-1] and sizes[-1] + nbytes > shard_bytes:
            shards.append([])
            sizes.append(0)
        shards[-1].append(name)
        sizes[-1] += nbytes
    by_name = dict(tensors)
    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file = (f"{prefix}.safetensors" if len(shards) == 1
                else f"{prefix}-{number:05d}-of-{len(shards):05d}.safetensors")
        shard = {name: _random_tensor(name, by_name[name], dtype, generator).contiguous() for name in names}
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in names})
        del shard
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ building in memory

BUILD_ENV = "OPTIM_SYNTHETIC_BUILD"  # "memory" (default where possible) or "disk"


def builds_in_memory(quantization: Any) -> bool:
    """Whether a synthetic model with this quantization is built straight into memory (`build_pipeline`) rather
    than written to disk and loaded: no quantization, torchao and bitsandbytes can be applied to a model in
    memory exactly as their loaders do (`optim.techniques.quantization.quantize_in_memory`); quanto only through
    `from_pretrained`. OPTIM_SYNTHETIC_BUILD=disk forces the folder."""
    from optim import config as C
    from optim.techniques.quantization import IN_MEMORY

    if os.environ.get(BUILD_ENV, "memory").strip().lower() == "disk":
        return False
    return quantization is None or isinstance(quantization, (C.NoQuantization, *IN_MEMORY))


def _fill(name: str, tensor: Any, generator: Any, fill_device: str) -> None:
    """The same values `_random_tensor` chooses (normal(0, 0.02) matrices, ones for 1-D scales, zero biases),
    drawn on `fill_device` (a CUDA generator is thousands of times faster than the CPU's one) and copied in."""
    import torch

    if name.endswith("bias"):
        tensor.zero_()
    elif tensor.dim() <= 1:
        tensor.fill_(1.0)
    elif str(tensor.device).startswith(fill_device):
        tensor.normal_(0.0, 0.02, generator=generator)
    else:
        tensor.copy_(torch.empty(tensor.shape, dtype=tensor.dtype, device=fill_device).normal_(
            0.0, 0.02, generator=generator))


def materialize(part: Part, *, place: str, fill_device: str, dtype: Any, seed: int) -> Any:
    """One component with random weights, allocated on `place` in `dtype` (float tensors), no file involved."""
    import torch

    module = build_on_meta(part)
    kept = {name: buffer.detach().clone() for name, buffer in module.named_buffers() if buffer.device.type != "meta"}
    # Still on meta, so free; floating parameters are then allocated in `dtype` directly. (nn.Module's own `to`:
    # diffusers' override warns about float32 modules, which from_pretrained(torch_dtype=...) would also cast.)
    torch.nn.Module.to(module, dtype)
    module.to_empty(device=place)
    if hasattr(module, "tie_weights"):  # transformers models: T5's shared embedding, as the loader ties it
        module.tie_weights()
    for name, buffer in module.named_buffers():
        if name in kept:  # constructor-made buffers (position ids, rotary tables) keep their values
            value = kept[name]
            buffer.copy_(value.to(buffer.dtype) if value.is_floating_point() else value)
    generator = torch.Generator(fill_device).manual_seed(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for name, parameter in module.named_parameters(remove_duplicate=False):
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            _fill(name, parameter, generator, fill_device)
    return module.eval()


def build_pipeline(model: SyntheticModel, *, place: str, fill_device: str, dtype: str, seed: int = 0) -> Any:
    """The whole pipeline in memory: every component materialized on `place` with random weights drawn on
    `fill_device` (the same seed gives both sides of a comparison identical weights, wherever they are placed),
    the tokenizers and the scheduler, assembled by the pipeline's own constructor. No folder, no disk."""
    import diffusers
    import torch

    torch_dtype = getattr(torch, dtype)
    components: dict[str, Any] = {}
    for offset, (name, part) in enumerate(model.parts.items()):
        components[name] = materialize(part, place=place, fill_device=fill_device, dtype=torch_dtype,
                                       seed=seed + offset)
    for name, make in model.tokenizers.items():
        components[name] = make()
    scheduler_class, scheduler_config = model.scheduler
    components["scheduler"] = getattr(diffusers, scheduler_class)(**scheduler_config)
    return getattr(diffusers, model.pipeline)(**components)
