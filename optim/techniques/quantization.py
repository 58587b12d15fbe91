"""Quantization at load time: `from_pretrained(..., quantization_config=PipelineQuantizationConfig(quant_mapping=...))`.

We always give an explicit per-component `quant_mapping`: diffusers components (the transformer, the VAE) take
diffusers' config classes and transformers components (the text encoders) take transformers' own, and
`quant_backend=` + `quant_kwargs` fails for torchao and quanto in diffusers 0.42 ("signatures don't match").

Sizes are measured from the weights themselves: every parameter and buffer, with quantized tensor subclasses
(torchao, quanto) unflattened into the plain tensors they store and bitsandbytes' quantization state counted;
`get_memory_footprint()` can misreport quantized models.
"""

from __future__ import annotations

from typing import Any

from optim import config as C

# Model-index classes that hold no weights (never quantizable).
_NOT_MODELS = ("Tokenizer", "Scheduler", "Processor", "FeatureExtractor")

_TORCHAO_CONFIGS = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "float8_weight_only": "Float8WeightOnlyConfig",
    "float8_dynamic": "Float8DynamicActivationFloat8WeightConfig",
}


def quantizable_components(model_index: dict[str, Any]) -> dict[str, str]:
    """{component: library} for every component of a pipeline that holds weights."""
    out = {}
    for name, spec in model_index.items():
        if name.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[1] is None:
            continue
        library, class_name = spec
        if library in ("diffusers", "transformers") and not any(part in class_name for part in _NOT_MODELS):
            out[name] = library
    return out


def _component_config(quant: Any, library: str) -> Any:
    import torch

    if library == "diffusers":
        import diffusers as lib
    else:
        import transformers as lib

    if isinstance(quant, C.BitsAndBytes4Bit):
        return lib.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
            bnb_4bit_use_double_quant=quant.double_quant,
        )
    if isinstance(quant, C.BitsAndBytes8Bit):
        return lib.BitsAndBytesConfig(load_in_8bit=True)
    if isinstance(quant, C.TorchAo):
        import torchao.quantization

        ao_config = getattr(torchao.quantization, _TORCHAO_CONFIGS[quant.quant_type])()
        return lib.TorchAoConfig(quant_type=ao_config)
    if isinstance(quant, C.Quanto):
        if library == "diffusers":
            return lib.QuantoConfig(weights_dtype=quant.weights)
        return lib.QuantoConfig(weights=quant.weights)
    raise TypeError(f"not a quantization setting: {quant!r}")


def build_quantization_config(quant: Any, libraries: dict[str, str]) -> Any:
    """A `PipelineQuantizationConfig` for the chosen components, or None for no quantization (and for layerwise
    casting, which is applied after loading: `apply_layerwise_casting`)."""
    if isinstance(quant, (C.NoQuantization, C.LayerwiseCasting)):
        return None
    from diffusers import PipelineQuantizationConfig

    mapping = {component: _component_config(quant, libraries[component]) for component in quant.components}
    return PipelineQuantizationConfig(quant_mapping=mapping)


def apply_layerwise_casting(pipe: Any, quant: Any, *, compute_dtype: str) -> None:
    """`enable_layerwise_casting` on each chosen component (diffusers models: optim.compat refuses the others),
    right after loading, so the sizes the report gives are the stored ones. Not undone in place: a side with
    other weights is a fresh load (`optim.measure.swappable`)."""
    if not isinstance(quant, C.LayerwiseCasting):
        return
    import torch

    for component in quant.components:
        getattr(pipe, component).enable_layerwise_casting(storage_dtype=getattr(torch, quant.storage_dtype),
                                                          compute_dtype=getattr(torch, compute_dtype))


def describe_quantization(quant: Any) -> str:
    if isinstance(quant, C.LayerwiseCasting):
        return f"layerwise casting: {quant.storage_dtype} storage on {', '.join(quant.components)}"
    settings = C.minimal_dict(C.OptimConfig(quantization=quant)).get("quantization", {})
    extras = ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("backend", "components"))
    components = ", ".join(quant.components)
    return f"{quant.backend}{f' ({extras})' if extras else ''} on {components}"


# ---------------------------------------------------------------------------------------------------- sizes


def tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor really stores, looking inside quantized tensor subclasses."""
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit: absmax and friends live here
    if state is not None:
        for value in vars(state).values():
            if hasattr(value, "numel") and hasattr(value, "element_size"):
                total += tensor_bytes(value)
            elif hasattr(value, "absmax"):  # nested state of double quantization
                total += sum(tensor_bytes(v) for v in vars(value).values() if hasattr(v, "element_size"))
    for extra in ("SCB",):  # bitsandbytes 8-bit keeps its row scales beside the weight
        value = getattr(tensor, extra, None)
        if value is not None and hasattr(value, "element_size"):
            total += tensor_bytes(value)
    return total


def module_bytes(module: Any) -> int:
    """Bytes of every parameter and buffer of a module (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor_bytes(tensor)
    return total


def component_sizes_mb(pipe: Any, components: list[str]) -> dict[str, float]:
    return {name: module_bytes(getattr(pipe, name)) / (1024 * 1024) for name in components}


# ------------------------------------------------------------------------------------- quantizing in memory

# Backends whose load-time quantization can be repeated on a pipeline built in memory (`quantize_in_memory`).
IN_MEMORY = (C.TorchAo, C.BitsAndBytes4Bit, C.BitsAndBytes8Bit)


def quantize_in_memory(pipe: Any, quant: Any, libraries: dict[str, str]) -> list[str]:
    """Quantize the chosen components of a pipeline that was built in memory (a synthetic model made on the GPU:
    there are no files for `from_pretrained` to quantize while it loads), doing what the loaders do, step for step:

    * torchao (diffusers' and transformers' TorchAoHfQuantizer): `torchao.quantization.quantize_` on the weight of
      every `nn.Linear`, with the same config `_component_config` gives the loaders;
    * bitsandbytes (diffusers' BnB4Bit/BnB8BitDiffusersQuantizer, transformers' Bnb4Bit/Bnb8BitHfQuantizer): the
      loader's own `replace_with_bnb_linear` with the loader's own list of modules not to convert (diffusers: the
      config's skip list and the model's `_keep_in_fp32_modules`, kept in float32; transformers:
      `HfQuantizer.get_modules_to_not_convert`), then each weight wrapped as `Params4bit` / `Int8Params` and moved
      to its device, which quantizes it (the loaders' `create_quantized_param`).

    The replace functions and the skip list are the libraries' helper modules (diffusers.quantizers.bitsandbytes,
    transformers.integrations, transformers.quantizers.base), public but not a stable API: they are touched here
    only, and tests/test_gpu_check.py checks the result against `from_pretrained`'s where a CPU can quantize.
    Returns the report's line."""
    for component in quant.components:
        module = getattr(pipe, component)
        library = libraries[component]
        if isinstance(quant, C.TorchAo):
            import torchao.quantization

            torchao.quantization.quantize_(module, getattr(torchao.quantization, _TORCHAO_CONFIGS[quant.quant_type])())
        else:
            _bitsandbytes_in_memory(module, _component_config(quant, library), library)
    return [f"{describe_quantization(quant)} (quantized in memory after the build, as the loaders do at load)"]


def _bitsandbytes_in_memory(module: Any, config: Any, library: str) -> None:
    import bitsandbytes as bnb
    import torch

    linears = {name: (child.weight, child.bias) for name, child in module.named_modules()
               if type(child) is torch.nn.Linear}
    if library == "diffusers":
        from diffusers.quantizers.bitsandbytes import replace_with_bnb_linear

        keep = list(getattr(module, "_keep_in_fp32_modules", None) or [])
        skip = [m for m in [*(config.llm_int8_skip_modules or []), *keep] if m is not None]
        replace_with_bnb_linear(module, modules_to_not_convert=skip, quantization_config=config)
        for name, child in module.named_modules():  # what diffusers loads in float32 beside the quantized layers
            if keep and any(part in name.split(".") for part in keep):
                child.to(torch.float32)
    else:
        from transformers.integrations import replace_with_bnb_linear
        from transformers.quantizers.base import HfQuantizer

        skip = HfQuantizer.get_modules_to_not_convert(module, config.llm_int8_skip_modules,
                                                      module._keep_in_fp32_modules)
        replace_with_bnb_linear(module, modules_to_not_convert=skip, quantization_config=config)
    for name, child in module.named_modules():
        if not isinstance(child, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) or name not in linears:
            continue
        weight, bias = linears[name]
        old = child._parameters["weight"]
        kind = bnb.nn.Params4bit if isinstance(child, bnb.nn.Linear4bit) else bnb.nn.Int8Params
        child._parameters["weight"] = kind(weight.data, requires_grad=False, **old.__dict__).to(weight.device)
        if bias is not None:
            child._parameters["bias"] = torch.nn.Parameter(bias.data, requires_grad=False)
    del linears
