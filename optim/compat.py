"""Checks made before any model is loaded: can this machine run each chosen option, and do the options work
together on this model? A problem raises `UnavailableError` or `IncompatibleError` naming the options, why, and
what to change, so a run never dies halfway through with a traceback.

The combination rules come from running every pair of CPU-capable techniques on the embedded model
(tests/test_pairs.py) and from diffusers' documentation for the GPU-only ones.
"""

from __future__ import annotations

from typing import Any

from optim import capabilities
from optim import config as C
from optim.errors import IncompatibleError, ModelError, UnavailableError
from optim.generation import guidance_style_of
from optim.models import ModelRef, ResolvedRun, read_component_config, read_model_index
from optim.techniques.compile import needs_graph_breaks
from optim.techniques.quantization import quantizable_components


def required_hardware(optim: C.OptimConfig) -> str:
    """'cuda' if any chosen option needs a CUDA GPU whatever the machine, else 'any'."""
    cpu_attention = optim.attention.backend in capabilities.CPU_ATTENTION
    quant = optim.quantization
    bnb_on_diffusers = quant.backend.startswith("bitsandbytes") and any(
        component in ("transformer", "vae", "unet") for component in quant.components
    )
    needs_cuda = (
        not cpu_attention
        or bnb_on_diffusers
        or (isinstance(quant, C.TorchAo) and quant.quant_type == "float8_dynamic")
        or optim.offload.mode in ("model_cpu", "sequential_cpu")
        or optim.offload.use_stream
        or optim.compile.inductor_mode == "reduce-overhead"
    )
    return "cuda" if needs_cuda else "any"


def describe_model(ref: ModelRef) -> dict[str, Any]:
    """What the checks need to know about a model, read from its configs (no weights are loaded)."""
    if ref.kind == "synthetic":
        from optim.synthetic import SYNTHETIC_MODELS

        return SYNTHETIC_MODELS[ref.location].describe(ref.name)
    import diffusers

    index = read_model_index(ref)
    transformer = index.get("transformer")
    if not (isinstance(transformer, list) and transformer[1]):
        raise ModelError(
            f"model {ref.name!r} ({index.get('_class_name')}) has no transformer: this lab measures "
            "transformer-based pipelines (FLUX, SD3, Qwen-Image, CogView4, Wan ...), not UNet ones"
        )
    transformer_config = read_component_config(ref, "transformer") or {}
    embeds = bool(transformer_config.get("guidance_embeds", False))
    return {
        "pipeline": index.get("_class_name"),
        "transformer": transformer[1],
        "guidance_embeds": embeds,
        "guidance": guidance_style_of(getattr(diffusers, index["_class_name"]), embeds),
        "components": quantizable_components(index),
    }


def check(optim: C.OptimConfig, run: ResolvedRun, model: dict[str, Any]) -> None:
    """Raise `UnavailableError` or `IncompatibleError` if the optimized side cannot run here."""
    cuda = run.device == "cuda"

    if model.get("synthetic") and not cuda:
        raise UnavailableError(
            f"{model['synthetic']} has a full-size model's dimensions with random weights, for measuring GPUs: it "
            "needs a CUDA GPU (on a CPU it would not fit in memory, or take minutes per step). Use 'embedded' here"
        )

    # --- each option on its own: is it available on this machine?
    attention_reason = capabilities.reason("attention_backends", optim.attention.backend)
    if attention_reason:
        raise UnavailableError(f"attention backend {optim.attention.backend!r} is not available here: {attention_reason}")
    _check_quantization(optim.quantization, model, cuda)
    if optim.offload.mode in ("model_cpu", "sequential_cpu") and not cuda:
        raise UnavailableError(
            f"offload mode {optim.offload.mode!r} needs a CUDA GPU (diffusers onloads to an accelerator); "
            "on CPU use mode 'group' with offload_to_disk, or no offload"
        )
    if optim.offload.use_stream and not cuda:
        raise UnavailableError("group offload use_stream needs a CUDA GPU (CUDA streams); turn use_stream off")
    if optim.compile.mode != "off":
        reason = capabilities.reason("compile", optim.compile.mode)
        if reason:
            raise UnavailableError(f"compile mode {optim.compile.mode!r} is not available here: {reason}")
        if optim.compile.inductor_mode == "reduce-overhead" and not cuda:
            raise UnavailableError("compile inductor_mode 'reduce-overhead' uses CUDA graphs and needs a CUDA GPU")

    # --- combinations
    if optim.offload.mode == "sequential_cpu" and optim.compile.mode != "off":
        raise IncompatibleError(
            "sequential CPU offload moves every layer's weights on each call, which torch.compile cannot trace; "
            "use offload mode 'model_cpu' or 'group' with compile, or turn compile off"
        )
    breaks = needs_graph_breaks(optim)
    if optim.compile.mode != "off" and optim.compile.fullgraph and breaks:
        raise IncompatibleError(
            f"compile fullgraph=true cannot work here: {breaks}, which breaks the graph. Set compile fullgraph to "
            "false (or leave it unset: auto), or turn the cache/group offload off"
        )
    quantized_subclass = optim.quantization.backend in ("torchao", "quanto")
    if optim.offload.mode == "group" and optim.offload.offload_to_disk and quantized_subclass:
        raise IncompatibleError(
            f"group offload to disk cannot store {optim.quantization.backend}-quantized weights (safetensors cannot "
            "serialize their tensor subclasses); turn offload_to_disk off to offload to CPU memory instead"
        )
    if isinstance(optim.cache, C.FasterCache) and optim.cache.is_guidance_distilled is False:
        if model["guidance"] != "cfg":
            raise IncompatibleError(
                "FasterCache with is_guidance_distilled=false approximates the unconditional branch of a batched "
                f"classifier-free guidance; {model['pipeline']} has none to approximate ("
                + ("guidance-distilled" if model["guidance"] == "distilled" else "its guidance branches run as separate calls")
                + "). Leave is_guidance_distilled unset so only FasterCache's attention reuse applies"
            )


def _check_quantization(quant: Any, model: dict[str, Any], cuda: bool) -> None:
    if isinstance(quant, C.NoQuantization):
        return
    components = model["components"]
    for component in quant.components:
        if component not in components:
            raise IncompatibleError(
                f"quantization.components: {component!r} is not a component with weights in this model; "
                f"choose from {', '.join(sorted(components))}"
            )
    if quant.backend.startswith("bitsandbytes"):
        if not capabilities._installed("bitsandbytes"):
            raise UnavailableError("bitsandbytes is not installed (pip install bitsandbytes)")
        on_diffusers = [c for c in quant.components if components[c] == "diffusers"]
        if on_diffusers and not cuda:
            raise UnavailableError(
                f"bitsandbytes on {', '.join(on_diffusers)} needs a CUDA GPU (diffusers: 'No GPU found. A GPU is "
                "needed for quantization'); on CPU choose only text encoders, or use torchao or quanto"
            )
    if isinstance(quant, C.TorchAo):
        reason = capabilities.reason("quantization", f"torchao:{quant.quant_type}")
        if reason:
            raise UnavailableError(f"torchao {quant.quant_type} is not available here: {reason}")
    if isinstance(quant, C.Quanto):
        reason = capabilities.reason("quantization", f"quanto:{quant.weights}")
        if reason:
            raise UnavailableError(f"quanto {quant.weights} is not available here: {reason}")
