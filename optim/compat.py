"""Checks made before any model is loaded: can this machine run each chosen option, and do the options work
together on this model? A problem raises `UnavailableError` or `IncompatibleError` naming the options, why, and
what to change, so a run never dies halfway through with a traceback.

The combination rules come from running every pair of CPU-capable techniques on the embedded model
(tests/test_pairs.py) and from diffusers' documentation for the GPU-only ones. The rules per pipeline family
(which caches, attention backends and regional compile work on FLUX, Qwen-Image, SD3, CogVideoX, Wan, and why)
come from `optim.families` (`technique_support`), checked on the tiny builds by tests/test_family_matrix.py.
"""

from __future__ import annotations

from typing import Any

from optim import config as C
from optim import families
from optim.capabilities import detect
from optim.errors import IncompatibleError, ModelError, UnavailableError
from optim.generation import guidance_style_of
from optim.model_types import ModelInfo, ModelRef, ResolvedRun
from optim.models import read_component_config, read_model_index
from optim.techniques.compile import needs_graph_breaks, uses_cuda_graphs
from optim.techniques.quantization import quantizable_components

# Components of a pipeline that are diffusers models (bitsandbytes quantizes those on a CUDA GPU only).
DIFFUSERS_COMPONENTS = ("transformer", "vae", "unet")


def cuda_needs(optim: C.OptimConfig) -> list[str]:
    """Why the chosen settings need a CUDA GPU, one line per setting (empty: they run anywhere). Read from the
    settings' facts (`optim.config.facts`), plus bitsandbytes, whose need depends on the components chosen."""
    found = []
    for path, cls, settings in _chosen(optim):
        for name in cls.model_fields:
            value = getattr(settings, name)
            reason = C.facts(cls, name).cuda_reason(value)
            if reason:
                found.append(f"{path}.{name} {value!r}: {reason}")
    quant = optim.quantization
    if quant.backend.startswith("bitsandbytes"):
        on_diffusers = [c for c in quant.components if c in DIFFUSERS_COMPONENTS]
        if on_diffusers:
            found.append(f"quantization {quant.backend!r} on {', '.join(on_diffusers)}: {C.BNB_ON_DIFFUSERS}")
    return found


def _chosen(optim: C.OptimConfig) -> list[tuple[str, type, Any]]:
    """(path, settings class, settings) of every section, unions resolved to the chosen variant."""
    out = [(section, cls, getattr(optim, section)) for section, cls in C.SECTIONS.items()]
    for section in C.UNIONS:
        settings = getattr(optim, section)
        out.append((section, type(settings), settings))
    return out


def required_hardware(optim: C.OptimConfig) -> str:
    """'cuda' if any chosen option needs a CUDA GPU whatever the machine, else 'any'."""
    return "cuda" if cuda_needs(optim) else "any"


def describe_model(ref: ModelRef) -> ModelInfo:
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
    pipeline_class = getattr(diffusers, index["_class_name"])
    family = families.family_of_pipeline(index["_class_name"])
    video = family.video if family is not None else _takes_frames(pipeline_class)
    return ModelInfo(
        pipeline=index["_class_name"],
        transformer=transformer[1],
        guidance=guidance_style_of(pipeline_class, embeds),
        components=quantizable_components(index),
        guidance_embeds=embeds,
        attention_head_dim=transformer_config.get("attention_head_dim"),
        family=family.key if family is not None else None,
        video=video,
    )


def _takes_frames(pipeline_class: Any) -> bool:
    import inspect

    return "num_frames" in inspect.signature(pipeline_class.__call__).parameters


def _runs_on_cpu(synthetic: str) -> bool:
    from optim.synthetic import SYNTHETIC_MODELS

    found = SYNTHETIC_MODELS.get(synthetic.split(":", 1)[-1])
    return bool(found and found.runs_on_cpu)


def check(optim: C.OptimConfig, run: ResolvedRun, model: ModelInfo) -> None:
    """Raise `UnavailableError` or `IncompatibleError` if the optimized side cannot run here."""
    cuda = run.device == "cuda"
    caps = detect()

    if model.synthetic and not cuda and not _runs_on_cpu(model.synthetic):
        raise UnavailableError(
            f"{model.synthetic} has a full-size model's dimensions with random weights, for measuring GPUs: it "
            "needs a CUDA GPU (on a CPU it would not fit in memory, or take minutes per step). Use 'embedded' here"
        )

    # --- each option on its own: can this machine run it?
    attention_reason = caps.reason("attention.backend", optim.attention.backend)
    if attention_reason:
        raise UnavailableError(
            f"attention backend {optim.attention.backend!r} is not available here: {attention_reason}"
        )
    if not cuda:  # (the attention backend and bitsandbytes have their own, more precise reasons)
        needs = [need for need in cuda_needs(optim) if not need.startswith(("quantization ", "attention."))]
        if needs:
            raise UnavailableError(f"{needs[0]}. This run is on the CPU: choose another value, or run on a GPU")
    if optim.attention.backend != "native" and (cuda or optim.attention.checks):
        # Without checks a CPU kernel takes float32 where the CUDA kernel would not (_native_flash); with checks
        # diffusers refuses what the constraint says, on any device.
        _check_attention_inputs(optim.attention.backend, run, model, checks=optim.attention.checks)
    cache_reason = caps.reason("cache.method", optim.cache.method)
    if cache_reason:
        raise UnavailableError(f"cache {optim.cache.method!r} is not available here: {cache_reason}")
    if isinstance(optim.cache, C.CacheDitStepsMask):
        _check_steps_mask(optim.cache, run.steps)
    _check_quantization(optim.quantization, model, cuda)
    if optim.compile.mode != "off":  # (the inductor modes' CUDA needs are settings facts, checked above)
        reason = caps.reason("compile.mode", optim.compile.mode)
        if reason:
            raise UnavailableError(f"compile mode {optim.compile.mode!r} is not available here: {reason}")

    # --- what works on this pipeline family
    _check_family(optim, run, model)

    # --- combinations
    if optim.offload.mode == "sequential_cpu" and optim.compile.mode != "off":
        raise IncompatibleError(
            "sequential CPU offload moves every layer's weights on each call, which torch.compile cannot trace; "
            "use offload mode 'model_cpu' or 'group' with compile, or turn compile off"
        )
    if optim.compile.mode == "aot":
        _check_aot(optim)
    breaks = needs_graph_breaks(optim)
    if optim.compile.mode != "off" and optim.compile.fullgraph and breaks:
        raise IncompatibleError(
            f"compile fullgraph=true cannot work here: {breaks}, which breaks the graph. Set compile fullgraph to "
            "false (or leave it unset: auto), or turn that option off"
        )
    if optim.compile.mode != "off" and cuda and uses_cuda_graphs(optim.compile.inductor_mode):
        _check_cuda_graphs(optim)
    quantized_subclass = optim.quantization.backend in ("torchao", "quanto")
    if optim.offload.mode == "group" and optim.offload.offload_to_disk and quantized_subclass:
        raise IncompatibleError(
            f"group offload to disk cannot store {optim.quantization.backend}-quantized weights (safetensors cannot "
            "serialize their tensor subclasses); turn offload_to_disk off to offload to CPU memory instead"
        )
    if optim.quantization.backend.startswith("bitsandbytes") and optim.offload.mode == "sequential_cpu":
        raise IncompatibleError(
            "sequential CPU offload cannot move bitsandbytes-quantized weights (diffusers#10800, bitsandbytes#1525: "
            "closed as won't fix); use model_cpu offload, or group offload with use_stream"
        )
    if isinstance(optim.quantization, C.BitsAndBytes8Bit) and optim.offload.mode == "group" and cuda:
        raise IncompatibleError(
            "group offload cannot offload bitsandbytes 8-bit weights: their int8 copy (state.CB) stays on the GPU, "
            "so nothing is saved, and without streams it ends on the wrong device; use 4-bit, or model_cpu offload"
        )
    if (isinstance(optim.quantization, C.Quanto) and optim.offload.mode == "group" and not optim.offload.offload_to_disk
            and cuda):  # (on a CPU onload and offload are the same device: nothing moves)
        raise IncompatibleError(
            "group offload cannot move quanto-quantized weights: diffusers moves each tensor with `tensor.data = "
            "moved`, which leaves quanto's inner int8 data and scales where they were. Use torchao (diffusers "
            "swaps its tensors properly) or model_cpu offload with quanto"
        )
    if isinstance(optim.cache, C.FasterCache) and optim.cache.is_guidance_distilled is False:
        if model.guidance != "cfg":
            raise IncompatibleError(
                "FasterCache with is_guidance_distilled=false approximates the unconditional branch of a batched "
                f"classifier-free guidance; {model.pipeline} has none to approximate ("
                + (
                    "guidance-distilled"
                    if model.guidance == "distilled"
                    else "its guidance branches run as separate calls"
                )
                + "). Leave is_guidance_distilled unset so only FasterCache's attention reuse applies"
            )


def _check_family(optim: C.OptimConfig, run: ResolvedRun, model: ModelInfo) -> None:
    """Refuse what cannot work on the model's pipeline family (`optim.families.technique_support`), with why and
    what to change. Pipelines of no known family get only the generic rules."""
    if model.family is None:
        return
    fam = families.family(model.family)
    support = families.technique_support(model.family)
    name = f"{model.pipeline} ({fam.transformer_class})"
    backend = optim.attention.backend
    if backend != "native" and not support["attention.backend"].supported:
        raise IncompatibleError(
            f"attention backend {backend!r} would do nothing on {name}: {support['attention.backend'].reason}. "
            "Leave the attention backend at 'native' for this model"
        )
    method = optim.cache.method
    if method != "none":
        cache = support[f"cache.{method}"]
        one_call = families.one_call_per_step(model.guidance, run.guidance_scale)
        # PAB's and FasterCache's per-module state mixes the two guidance branches only when there are two calls
        # a step; at guidance <= 1 the pipeline makes one call, which they handle correctly.
        mixes_branches = (method in ("pyramid_attention_broadcast", "faster_cache")
                          and fam.guidance is families.Guidance.SEPARATE_CFG)
        if not cache.supported and not (mixes_branches and one_call):
            fix = (f" (it is fine at guidance <= 1, where {model.pipeline} makes one call a step)"
                   if mixes_branches else "")
            others = [m for m in (*(m.value for m in families.CacheMethod), *families.CACHE_DIT_METHODS)
                      if support[f"cache.{m}"].supported]
            instead = f"; use {' or '.join(others)}" if others else "; this family supports no step cache"
            raise IncompatibleError(f"cache {method!r} cannot work on {name}: {cache.reason}{fix}{instead}")
        _check_cache_on_family(optim.cache, run, model, fam)
    if optim.compile.mode == "regional" and not support["compile.regional"].supported:
        raise IncompatibleError(f"compile mode 'regional' cannot work on {name}: "
                                f"{support['compile.regional'].reason}")


def _check_aot(optim: C.OptimConfig) -> None:
    """What compile mode 'aot' (torch.export of each block once, on its first call; `optim.techniques.aot`) cannot
    be combined with. Measured by running each pair on the embedded model (tests/test_aot.py keeps the refusals)."""
    instead = "use compile mode 'regional' (just-in-time compile, which handles it)"
    method = optim.cache.method
    if method != "none":
        raise IncompatibleError(
            f"compile mode 'aot' cannot work with the {method} cache: a cache decides at every step, in Python "
            "hooks, whether to compute, and torch.export traces those hooks once, on the first call (measured: "
            "MagCache and TaylorSeer then never skipped a step while their work count said they did; PAB and "
            f"FasterCache fail to export, on a data-dependent branch). Turn the cache off, or {instead}")
    mode = optim.offload.mode
    if mode != "none":
        raise IncompatibleError(
            f"compile mode 'aot' cannot work with {mode} offload: offload hooks move the weights around every call, "
            "while an AoT package is bound once to each block's weights where they are (measured: group offload "
            f"fails to export, block and leaf level). Turn offload off, or {instead}")
    quant = optim.quantization
    if isinstance(quant, C.LayerwiseCasting) and "transformer" in quant.components:
        raise IncompatibleError(
            "compile mode 'aot' cannot work with layerwise casting on the transformer: its hooks cast each layer's "
            "weights in place around every call, which torch.export cannot trace (measured: \"_apply(): Couldn't "
            f"swap Linear.weight\"). Cast only other components, or {instead}")
    if isinstance(quant, C.Quanto) and "transformer" in quant.components:
        raise IncompatibleError(
            "compile mode 'aot' cannot bind quanto-quantized weights to a package: torch exports them as their inner "
            "tensors, and unwrapping quanto's parameters the same way fails (\"'Parameter' object has no attribute "
            f"'__tensor_flatten__'\"). Use torchao (its int8 weights work with 'aot'), or {instead}")


def _check_steps_mask(cache: C.CacheDitStepsMask, steps: int) -> None:
    """cache-dit's schedule for this many steps, made now: a policy it cannot scale (fewer than 8 steps, except 4
    and 6) or bins too short are refused before loading, with the fix, not met as a failure mid-run."""
    from optim.techniques.cache_dit import steps_mask

    try:
        steps_mask(cache, steps)
    except AssertionError as error:
        raise IncompatibleError(
            f"cache-dit's mask policy {cache.policy!r} cannot schedule {steps} steps ({error}); use policy 'custom' "
            "with your own compute and cache bins, or at least 8 steps") from None


def _check_cache_on_family(cache: Any, run: ResolvedRun, model: ModelInfo, fam: families.Family) -> None:
    """A supported cache's settings that would silently do nothing, or fail, on this family."""
    if isinstance(cache, C.TaylorSeer) and families.CACHE_SUPPORT[fam.key]["taylorseer"].needs.get("use_lite_mode"):
        if not cache.use_lite_mode:
            raise IncompatibleError(
                f"TaylorSeer's default layer patterns match nothing in {fam.transformer_class} (its attention "
                "modules are named attn1/attn2, the patterns need names ending in 'attn'), so the cache would "
                "silently skip nothing; set taylorseer use_lite_mode to true (caches proj_out and whole blocks)"
            )
    if isinstance(cache, C.MagCache) and cache.mag_ratios == "flux" and fam.key != "flux":
        raise IncompatibleError(
            f"MagCache ratios 'flux' are FLUX.1-dev's; {model.pipeline} is a {fam.key} model. Use mag_ratios "
            "'calibrate' (measured on this model in an untimed run first) or give this model's ratios"
        )
    if isinstance(cache, C.FasterCache):
        expected = fam.faster_cache_tensor_format
        default = C.FasterCache.model_fields["tensor_format"].default
        if fam.video and cache.tensor_format not in (default, expected):
            raise IncompatibleError(
                f"FasterCache tensor_format {cache.tensor_format!r} is not the layout of {fam.transformer_class}'s "
                f"hidden states ({expected}); set tensor_format to {expected!r} or leave the default (it is set from "
                "the model)"
            )
        if (model.guidance == "cfg" and cache.is_guidance_distilled is False
                and families.one_call_per_step(model.guidance, run.guidance_scale)):
            raise IncompatibleError(
                f"FasterCache approximates the unconditional branch of {model.pipeline}'s batched guidance, but at "
                f"guidance {run.guidance_scale:g} (<= 1) the pipeline runs no unconditional branch (a batch of one); "
                "set faster_cache is_guidance_distilled to true, or guidance above 1"
            )


def _check_attention_inputs(backend: str, run: ResolvedRun, model: ModelInfo, *, checks: bool = False) -> None:
    """The dtype and head size the backend's kernel accepts (diffusers' own constraints, `backend_needs`), which
    diffusers checks only with DIFFUSERS_ATTN_CHECKS on: without them a mismatch fails inside the kernel."""
    from optim.techniques.attention import backend_needs

    needs = backend_needs(backend)
    if needs.dtypes and run.dtype not in needs.dtypes:
        where = "with the dispatcher checks on, diffusers accepts" if checks else "computes in"
        raise IncompatibleError(
            f"attention backend {backend!r} {where} {' or '.join(needs.dtypes)} only; this run uses {run.dtype}. "
            f"Set run dtype to {needs.dtypes[0]}"
            + (", or turn the checks off" if checks and run.device == "cpu" else " (or auto)")
            + ", or use the 'native' backend"
        )
    head = model.attention_head_dim
    if needs.head_dims and head and head not in needs.head_dims:
        raise IncompatibleError(
            f"attention backend {backend!r} supports head dimensions {', '.join(map(str, needs.head_dims))}; "
            f"{model.transformer} uses {head}. Pick another backend"
        )


def _check_cuda_graphs(optim: C.OptimConfig) -> None:
    """CUDA graphs (`reduce-overhead`, `max-autotune`) replay recorded kernels on fixed memory: every input, weight
    and output lives at the address it had when the graph was recorded, and each replay overwrites the outputs."""
    mode = optim.compile.inductor_mode
    fix = "use inductor_mode 'max-autotune-no-cudagraphs' (the same kernels without CUDA graphs) or 'default'"
    if optim.compile.mode == "regional":
        raise IncompatibleError(
            f"compile inductor_mode {mode!r} records CUDA graphs, and with regional compile each block's graph "
            "output is the next block's input, which the next replay overwrites (pytorch#152887); use compile "
            f"mode 'full', or {fix}"
        )
    if optim.attention.backend.lstrip("_").startswith("sage"):
        raise IncompatibleError(
            f"compile inductor_mode {mode!r} records CUDA graphs, which SageAttention's kernels do not support "
            f"(its README: torch.compile without CUDA graphs only); {fix}"
        )
    if optim.cache.method != "none":
        raise IncompatibleError(
            f"compile inductor_mode {mode!r} records CUDA graphs, whose next replay overwrites the block outputs the "
            f"{optim.cache.method} cache keeps between steps; {fix}"
        )
    if optim.offload.mode != "none":
        raise IncompatibleError(
            f"compile inductor_mode {mode!r} records CUDA graphs, which need weights at fixed GPU addresses; "
            f"{optim.offload.mode} offload moves them on every call (graphs would be re-recorded inside the timed "
            f"runs); {fix}"
        )


def _check_quantization(quant: Any, model: ModelInfo, cuda: bool) -> None:
    if isinstance(quant, C.NoQuantization):
        return
    components = model.components
    for component in quant.components:
        if component not in components:
            raise IncompatibleError(
                f"quantization.components: {component!r} is not a component with weights in this model; "
                f"choose from {', '.join(sorted(components))}"
            )
    caps = detect()
    reason = caps.reason("quantization.backend", quant.backend)
    if reason:
        raise UnavailableError(f"quantization {quant.backend!r} is not available here: {reason}")
    if isinstance(quant, C.LayerwiseCasting):
        others = [c for c in quant.components if components[c] != "diffusers"]
        if others:
            raise IncompatibleError(
                f"layerwise casting is a diffusers model method (enable_layerwise_casting); {', '.join(others)} "
                "is a transformers model: choose diffusers components (the transformer, the VAE), or quantize the "
                "text encoders with torchao, quanto or bitsandbytes")
    if quant.backend.startswith("bitsandbytes"):
        on_diffusers = [c for c in quant.components if components[c] == "diffusers"]
        # A small synthetic model is built and quantized in memory (`optim.techniques.quantization.
        # quantize_in_memory`), where bitsandbytes quantizes on a CPU too: the GPU check's dry run.
        in_memory = bool(model.synthetic) and _runs_on_cpu(model.synthetic)
        if on_diffusers and not cuda and not in_memory:
            raise UnavailableError(
                f"bitsandbytes on {', '.join(on_diffusers)} needs a CUDA GPU (diffusers: 'No GPU found. A GPU is "
                "needed for quantization'); on CPU choose only text encoders, or use torchao or quanto"
            )
    if isinstance(quant, C.TorchAo):
        reason = caps.reason("quantization.torchao.quant_type", quant.quant_type)
        if reason:
            raise UnavailableError(f"torchao {quant.quant_type} is not available here: {reason}")
    if isinstance(quant, C.Quanto):
        reason = caps.reason("quantization.quanto.weights", quant.weights)
        if reason:
            raise UnavailableError(f"quanto {quant.weights} is not available here: {reason}")
