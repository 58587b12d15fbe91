"""The registry of pipeline families: one module per family, collected here, and what the rest of the lab asks of
them (a family by key or by pipeline class, its guidance style, the techniques it supports, its full-size
models). Adding a family is one new module in `optim/families/` and its name in `FAMILY_NAMES`.
"""

from __future__ import annotations

import importlib
from typing import Any

from optim.families.base import CACHE_DIT_METHODS, GUIDANCE_STYLES, CacheSupport, Family, FullSizeModel, Guidance

# One module per family (optim/families/<name>.py), each defining FAMILY (its `Family`) and FULL_SIZE (its
# published full-size models), in the order the lab lists them.
FAMILY_NAMES = ("flux", "qwen_image", "sd3", "cogvideox", "wan")
FAMILY_MODULES = tuple(importlib.import_module(f"optim.families.{name}") for name in FAMILY_NAMES)

FAMILIES: dict[str, Family] = {module.FAMILY.key: module.FAMILY for module in FAMILY_MODULES}
CACHE_SUPPORT: dict[str, dict[str, CacheSupport]] = {key: fam.cache_support for key, fam in FAMILIES.items()}
PAB_MATCHES_PER_BLOCK: dict[str, dict[str, int]] = {key: fam.pab_matches_per_block for key, fam in FAMILIES.items()}
TINY_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {key: fam.tiny_config for key, fam in FAMILIES.items()}
FULL_SIZE_MODELS: dict[str, FullSizeModel] = {
    name: model for module in FAMILY_MODULES for name, model in module.FULL_SIZE.items()
}


def family(key: str) -> Family:
    """The family `key`, or a ValueError naming the known ones."""
    if key not in FAMILIES:
        raise ValueError(f"unknown pipeline family {key!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def family_of_pipeline(pipeline_class: str) -> Family | None:
    """The family whose pipeline class is `pipeline_class` (a name, e.g. model_index.json's `_class_name`)."""
    return next((fam for fam in FAMILIES.values() if fam.pipeline_class == pipeline_class), None)


def guidance_style(key: str, guidance_embeds: bool) -> str:
    """The lab's guidance style of family `key`: "distilled" with guidance embeddings; FLUX-architecture models
    without them (FLUX.1-schnell, the embedded model) do real CFG through `true_cfg_scale` as a second call, so
    "true_cfg"; otherwise the family's own (Wan and Qwen-Image "true_cfg", SD3 and CogVideoX "cfg")."""
    fam = family(key)
    if guidance_embeds:
        return "distilled"
    if fam.guidance is Guidance.DISTILLED:
        return "true_cfg"
    return GUIDANCE_STYLES[fam.guidance]


def one_call_per_step(style: str, guidance_scale: float) -> bool:
    """Whether a run makes one transformer call per step with no unconditional branch at all, from its guidance
    style (`guidance_style`) and scale: every pipeline here runs classifier-free guidance only when its guidance
    argument is above 1 (`do_classifier_free_guidance`, `do_true_cfg`); guidance-distilled ones never do."""
    return style == "distilled" or guidance_scale <= 1.0


def frames_made(key: str, num_frames: int) -> int:
    """How many frames the family's pipeline really returns for `num_frames` (measured on the tiny builds,
    tests/test_video.py): Wan rounds to 4k+1 (pipeline_wan.py: `num_frames // 4 * 4 + 1`, with a warning);
    CogVideoX (1.0) encodes 4 frames per latent frame and its VAE decodes latent frames in pairs, so an even
    number of latent frames comes out as 4 per latent (5 -> 8, 13 -> 16): only 8k+1 frames (9, 17, 49) come out
    as asked. Other families make images (1). Each video family's rule is its module's `frames_made`."""
    fam = family(key)
    if not fam.video:
        return 1
    return fam.frames_for(num_frames) if fam.frames_for is not None else num_frames


def technique_support(key: str) -> dict[str, CacheSupport]:
    """`TECHNIQUES` -> whether it works on family `key`, and why (the cache entries are `CACHE_SUPPORT`'s)."""
    fam = family(key)
    out: dict[str, CacheSupport] = {}
    if fam.attention_dispatcher:
        out["attention.backend"] = CacheSupport(True, "the attention processors call diffusers' dispatcher "
                                                "(dispatch_attention_fn), so set_attention_backend picks the kernel")
    else:
        out["attention.backend"] = CacheSupport(False, f"{fam.direct_attention_processor} calls torch's "
                                                "scaled_dot_product_attention directly, not diffusers' dispatcher: "
                                                "set_attention_backend is accepted and silently changes nothing")
    for method, support in fam.cache_support.items():
        out[f"cache.{method}"] = support
    for method in CACHE_DIT_METHODS:
        if fam.cache_dit_adapter:
            out[f"cache.{method}"] = CacheSupport(True, f"cache-dit's {fam.cache_dit_adapter} block adapter patches "
                                                        f"{fam.transformer_class}'s blocks (cache_dit.enable_cache)")
        else:
            out[f"cache.{method}"] = CacheSupport(False, f"cache-dit has no block adapter for {fam.pipeline_class}")
    out["quantization.torchao"] = CacheSupport(True, "quantizes the transformer's nn.Linear weights at load "
                                               "(PipelineQuantizationConfig quant_mapping)")
    out["offload.group"] = CacheSupport(True, "enable_group_offload groups the transformer's ModuleList blocks "
                                        "(block_level) or its leaf modules (leaf_level)")
    out["vae.slicing"] = CacheSupport(fam.vae.slicing, f"{fam.vae.vae_class}.enable_slicing: splits the batch, so "
                                      "one " + ("video" if fam.video else "image") + " per prompt changes nothing")
    out["vae.tiling"] = CacheSupport(fam.vae.tiling, f"{fam.vae.vae_class}.enable_tiling: spatial tiles; temporal: "
                                     f"{fam.vae.temporal}")
    if fam.repeated_blocks:
        out["compile.regional"] = CacheSupport(True, "compile_repeated_blocks compiles "
                                               + " and ".join(fam.repeated_blocks) + " once and reuses it per block")
    else:
        out["compile.regional"] = CacheSupport(False, f"{fam.transformer_class} declares no _repeated_blocks, so "
                                               "compile_repeated_blocks raises; use compile mode 'full'")
    out["compile.full"] = CacheSupport(True, "torch.compile of the whole transformer")
    return out


def full_size_model(name: str) -> FullSizeModel:
    """A `FULL_SIZE_MODELS` entry by name, or by family key (the family's reference model)."""
    if name in FAMILIES:
        name = FAMILIES[name].full_size[0]
    if name not in FULL_SIZE_MODELS:
        raise ValueError(f"unknown full-size model {name!r}; known: {', '.join(FULL_SIZE_MODELS)} "
                         f"(or a family: {', '.join(FAMILIES)})")
    return FULL_SIZE_MODELS[name]


def build_full_size_on_meta(name: str, component: str = "transformer") -> Any:
    """The full-size `component` (transformer, vae, or a text encoder) of model `name` on the meta device: real
    shapes, no memory.

        >>> sum(p.numel() for p in build_full_size_on_meta("wan2.1-t2v-14b").parameters())  # doctest: +SKIP
        14288491584
    """
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    model = full_size_model(name)
    fam = FAMILIES[model.family]
    with init_empty_weights(include_buffers=True):
        if component == "transformer":
            return getattr(diffusers, fam.transformer_class)(**model.transformer)
        if component == "vae":
            return getattr(diffusers, fam.vae.vae_class)(**model.vae)
        if component in model.text_encoders:
            class_name, config = model.text_encoders[component]
            model_class = getattr(transformers, class_name)
            return model_class(model_class.config_class(**config))
    raise ValueError(f"{name} has no component {component!r}; it has transformer, vae, "
                     + ", ".join(model.text_encoders))


def count_parameters(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def count_checkpoint_values(module: Any) -> int:
    """Parameters plus persistent buffers: what `save_pretrained` stores (SD3's position table is a buffer)."""
    return sum(t.numel() for t in module.state_dict().values())
