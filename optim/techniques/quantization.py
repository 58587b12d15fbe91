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
    """A `PipelineQuantizationConfig` for the chosen components, or None for no quantization."""
    if isinstance(quant, C.NoQuantization):
        return None
    from diffusers import PipelineQuantizationConfig

    mapping = {component: _component_config(quant, libraries[component]) for component in quant.components}
    return PipelineQuantizationConfig(quant_mapping=mapping)


def describe_quantization(quant: Any) -> str:
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
