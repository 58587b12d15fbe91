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
