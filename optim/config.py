"""Typed, JSON-friendly settings: what to run (`RunSpec`) and which optimizations to apply (`OptimConfig`).

One small frozen model per technique, holding only JSON values; callables (timestep callbacks and the like) are
attached when the technique is applied (`optim/techniques/`), never stored here. Parsing is strict: an unknown key,
a wrong type or an out-of-range value raises one `ConfigError` naming the field path, the bad value and what is
allowed. This module does not import torch, so settings validate anywhere (a browser upload, a CI job without
a GPU).

Each setting's facts live beside it, in its `Field(...)` (see `facts()`): the label and help the UI shows (also
the JSON Schema's title and description, and README's option tables), whether it is an advanced option, labels
for its choices, and which values need a CUDA GPU and why (what `optim.capabilities` and `optim.compat` read).
A technique variant (a cache method, a quantization backend) carries its label and summary on its class.

Example:
    >>> optim = parse_optim({"cache": {"method": "first_block_cache", "threshold": 0.1}})
    >>> optim.cache.threshold
    0.1
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, model_validator

from optim.cache_settings import (  # noqa: F401  (re-exported: every cache setting is optim.config's too)
    CACHE_DIT_METHODS,
    CacheConfig,
    CacheDitDBCache,
    CacheDitStepsMask,
    FasterCache,
    FirstBlockCache,
    MagCache,
    NoCache,
    PyramidAttentionBroadcast,
    TaylorSeer,
)
from optim.errors import ConfigError
from optim.settings import (  # noqa: F401  (re-exported: the settings machinery is optim.config's too)
    Dtype,
    Facts,
    Settings,
    SkipRange,
    TimestepRange,
    _check_range,
    _only,
    facts,
    info,
    json_key,
    variant,
    variant_facts,
)

# Every attention backend name diffusers 0.42 registers (`AttentionBackendName`); the seed's table is a subset.
# Kept here as data so that validation needs no torch; a test checks it against the installed diffusers.
ATTENTION_BACKENDS: tuple[str, ...] = (
    "native",
    "flex",
    "_native_cudnn",
    "_native_efficient",
    "_native_flash",
    "_native_math",
    "_native_npu",
    "_native_xla",
    "flash",
    "flash_varlen",
    "flash_hub",
    "flash_varlen_hub",
    "flash_4_hub",
    "_flash_3",
    "_flash_varlen_3",
    "_flash_3_hub",
    "_flash_3_varlen_hub",
    "aiter_fa2_hub",
    "sage",
    "sage_varlen",
    "sage_hub",
    "sage_blackwell_hub",
    "_sage_qk_int8_pv_fp8_cuda",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "_sage_qk_int8_pv_fp16_triton",
    "xformers",
)

# ----------------------------------------------------------------------------------------------- the run itself


class RunSpec(Settings):
    """What to generate and how to measure it. `None` means "the model's own default" (see `optim.models`)."""

    model: Annotated[str, Field(min_length=1, max_length=300)] = Field(
        "embedded", **info("Model", "The embedded tiny FLUX runs anywhere in a second. Hub ids download on first use; "
                           "a local diffusers folder works too. Synthetic models have a real model's dimensions and "
                           "random weights (GPU only)."))
    prompt: Annotated[str, Field(max_length=2000)] | None = Field(
        None, **info("Prompt", "Same prompt for both sides. Empty: the model's own example prompt."))
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = Field(
        None, **info("Negative prompt", "Empty: the model's default."))
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        0, **info("Seed", "Same seed (a CPU generator) on both sides, so differences come from the optimizations."))
    steps: Annotated[int, Field(ge=1, le=500)] | None = Field(
        None, **info("Steps", "Denoising steps: time grows with steps; caches have more steps to skip."))
    width: Annotated[int, Field(ge=16, le=8192, multiple_of=16)] | None = Field(
        None, **info("Width", "Multiple of 16. Time and memory grow with pixels."))
    height: Annotated[int, Field(ge=16, le=8192, multiple_of=16)] | None = Field(
        None, **info("Height", "Multiple of 16."))
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = Field(
        None, **info("Guidance", "Guidance strength (for FLUX-architecture models without guidance embeddings, like "
                     "the embedded one, the true-CFG scale); empty: the model's recommended value."))
    max_sequence_length: Annotated[int, Field(ge=1, le=512)] | None = Field(
        None, **info("Max text tokens", "Empty: the model's default (the length it was trained with).",
                     advanced=True))
    num_frames: Annotated[int, Field(ge=1, le=1025)] | None = Field(
        None, **info("Frames", "Video models only: frames per clip (CogVideoX and Wan take 4k+1: 9, 49, 81). Time "
                     "and memory grow with frames. Empty: the model's default."))
    fps: Annotated[int, Field(ge=1, le=240)] | None = Field(
        None, **info("Frames per second", "Video models only: the frame rate of the written MP4 (and of the "
                     "pipeline, where it takes one). Empty: the model's default.", advanced=True))
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", **info("Precision", "auto: bfloat16 on a GPU, float32 on a CPU. Both sides use it.", advanced=True))
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", **info("Device", "auto: CUDA when there is a GPU.", advanced=True))
    # The first warm-up run is eager and also measures how much transformer work the cache skips.
    warmup_runs: Annotated[int, Field(ge=1, le=10)] = Field(
        1, **info("Warm-up runs", "Untimed runs per side before timing (the first also counts skipped work).",
                  advanced=True))
    timed_runs: Annotated[int, Field(ge=1, le=100)] | Literal["auto"] = Field(
        "auto", **info("Timed runs", "Per side, taken in turns with the other side. auto: runs until the speedup is "
                       "known to within the target precision and its interval says faster, slower or equivalent, "
                       "or the time budget is spent.", advanced=True))
    target_precision: Annotated[float, Field(ge=0.005, le=0.5)] = Field(
        0.05, **info("Target precision", "auto runs stop once the speedup's 95% interval is this narrow (0.05: "
                     "within about ±5%) and settles the verdict.", advanced=True))
    time_budget_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        60.0, **info("Time budget (s)", "auto runs stop after this many seconds of timed runs, settled or not "
                     "(an unsettled interval is reported as inconclusive).", advanced=True))
    timing: Literal["auto", "interleaved", "sequential"] = Field(
        "auto", **info("Timing", "interleaved: both sides loaded at once, timed runs taken in turns, so whatever "
                       "the machine does hits both alike; sequential: one side's runs, then the other's (when both "
                       "cannot be loaded together); auto: interleaved when both fit in memory.", advanced=True))


# ------------------------------------------------------------------------------------------------- attention

# Names whose kernels need a CUDA GPU whatever is installed (their packages and the Hub are checked at run time
# by `optim.capabilities`; see FACTS: only these four ran on a CPU).
CPU_ATTENTION = ("native", "_native_math", "_native_flash", "flex")


class AttentionConfig(Settings):
    """`transformer.set_attention_backend(backend)`; `checks` turns on the dispatcher's input checks."""

    backend: Literal[ATTENTION_BACKENDS] = Field(  # type: ignore[valid-type]
        "native", **info(
            "Attention backend",
            "The kernel behind every attention call, through diffusers' dispatcher, restored to native afterwards. "
            "native is PyTorch's scaled_dot_product_attention; _native_math, _native_flash, _native_efficient and "
            "_native_cudnn force one of its kernels; flex is FlexAttention; flash and flash_varlen FlashAttention-2; "
            "_flash_3 and _flash_varlen_3 FlashAttention-3 (Hopper); the sage names SageAttention (int8 QK); "
            "xformers; names ending in _hub fetch their kernel from the Hub. Fused kernels cut time and memory on a "
            "GPU; results can differ in the last bits. On a CPU only native, _native_math, _native_flash and flex "
            "run.",
            cuda={name: "its kernel runs on CUDA GPUs only" for name in ATTENTION_BACKENDS
                  if name not in CPU_ATTENTION and name not in ("_native_npu", "_native_xla")}))
    checks: bool = Field(False, **info(
        "Dispatcher checks", "Validate devices, dtypes and shapes before every attention call (DIFFUSERS_ATTN_CHECKS): "
        "adds overhead, for debugging a backend.", advanced=True))


# ----------------------------------------------------------------------------------------------------- caches
# The cache methods' settings are in optim/cache_settings.py (re-exported here: C.FirstBlockCache ...).

# ----------------------------------------------------------------------------------------------- quantization

Components = Annotated[
    tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], ...],
    Field(strict=False, min_length=1, max_length=8),
]
_COMPONENTS = info("Components", "Which pipeline components to quantize (the report gives each one's size before "
                   "and after, measured from the weights).")
BNB_ON_DIFFUSERS = ("bitsandbytes quantizes diffusers components (the transformer, the VAE) on a CUDA GPU only "
                     "(diffusers: 'No GPU found. A GPU is needed for quantization'); on a CPU only text encoders")


class NoQuantization(Settings):
    model_config = variant("none", "Weights stay in the run's dtype.")
    backend: Literal["none"]


class BitsAndBytes4Bit(Settings):
    """bitsandbytes 4-bit (QLoRA-style): nf4 or fp4 weights, compute in `compute_dtype`."""

    model_config = variant("bitsandbytes 4-bit (NF4/FP4)", "4-bit weights, dequantized for each matmul. "
                           + BNB_ON_DIFFUSERS + ".")
    backend: Literal["bitsandbytes_4bit"]
    components: Components = Field(("transformer",), **_COMPONENTS)
    quant_type: Literal["nf4", "fp4"] = Field("nf4", **info(
        "4-bit type", "nf4 suits normally distributed weights (the usual choice); fp4 is the plain 4-bit float."))
    compute_dtype: Dtype = Field("bfloat16", **info(
        "Compute dtype", "Weights are dequantized to this for matmuls."))
    double_quant: bool = Field(False, **info(
        "Double quantization", "Quantize the scales too: about 0.4 bit per weight less, slightly slower."))


class BitsAndBytes8Bit(Settings):
    """bitsandbytes LLM.int8() weights."""

    model_config = variant("bitsandbytes 8-bit (LLM.int8)", "8-bit weights with outliers kept in 16 bits. "
                           + BNB_ON_DIFFUSERS + ".")
    backend: Literal["bitsandbytes_8bit"]
    components: Components = Field(("transformer",), **_COMPONENTS)


class TorchAo(Settings):
    """torchao through diffusers `TorchAoConfig` (one torchao config class per `quant_type`)."""

    model_config = variant("torchao", "PyTorch-native quantized tensors (int8, float8), composable with "
                           "torch.compile.")
    backend: Literal["torchao"]
    components: Components = Field(("transformer",), **_COMPONENTS)
    quant_type: Literal["int8_weight_only", "int8_dynamic", "float8_weight_only", "float8_dynamic"] = Field(
        "int8_weight_only", **info(
            "torchao type", "int8 weight-only halves bf16 weights; dynamic also quantizes activations (faster on "
            "supported GPUs); float8 dynamic needs an Ada or Hopper GPU (sm89+).",
            cuda={"float8_dynamic": "float8 dynamic activation quantization needs an Ada or Hopper GPU (sm89+)"}))


class Quanto(Settings):
    """optimum-quanto through diffusers `QuantoConfig`."""

    model_config = variant("optimum-quanto", "Quantized weights from optimum-quanto (int8, int4, int2, float8).")
    backend: Literal["quanto"]
    components: Components = Field(("transformer",), **_COMPONENTS)
    weights: Literal["int8", "int4", "int2", "float8"] = Field("int8", **info(
        "Weights", "Fewer bits: less memory, more quality loss."))


class LayerwiseCasting(Settings):
    """diffusers' layerwise casting (`ModelMixin.enable_layerwise_casting`): weights stored in float8, each layer
    cast to the run dtype just for its own computation. Norms, embeddings and patch layers (diffusers' default
    patterns and the model's own) stay at the run dtype."""

    model_config = variant("layerwise casting (float8 storage)", "Weights stored in float8 and cast to the run "
                           "dtype layer by layer: half the memory of bf16 weights (a quarter of float32), on any "
                           "device; diffusers models only (the transformer, the VAE).")
    backend: Literal["layerwise_casting"]
    components: Components = Field(("transformer",), **_COMPONENTS)
    storage_dtype: Literal["float8_e4m3fn", "float8_e5m2"] = Field("float8_e4m3fn", **info(
        "Storage dtype", "e4m3 keeps more precision, e5m2 more range."))


QuantizationConfig = Annotated[
    Union[NoQuantization, BitsAndBytes4Bit, BitsAndBytes8Bit, TorchAo, Quanto, LayerwiseCasting],
    Field(discriminator="backend"),
]

# ---------------------------------------------------------------------------------------------------- offload

_NEEDS_ACCELERATOR = "diffusers onloads weights to an accelerator: it needs a CUDA GPU"


class OffloadConfig(Settings):
    """Where weights live while they are not computing. Group options apply to `mode="group"` only."""

    mode: Literal["none", "model_cpu", "sequential_cpu", "group"] = Field("none", **info(
        "Offload", "Keep weights in CPU memory (or on disk) until needed: far less GPU memory, slower. model_cpu "
        "moves each component to the GPU only while it runs; sequential_cpu moves leaf by leaf (least memory, "
        "slowest); group moves groups of blocks or leaves. Offload runs also report host peak memory.",
        labels={"none": "none", "model_cpu": "model CPU offload", "sequential_cpu": "sequential CPU offload",
                "group": "group offload"},
        cuda={"model_cpu": _NEEDS_ACCELERATOR, "sequential_cpu": _NEEDS_ACCELERATOR}))
    offload_type: Literal["block_level", "leaf_level"] = Field("block_level", **info(
        "Granularity", "block_level moves groups of N blocks; leaf_level moves each layer (least memory, most "
        "transfers)."))
    num_blocks_per_group: Annotated[int, Field(ge=1, le=100)] = Field(1, **info(
        "Blocks per group", "block_level only: more blocks per transfer means fewer, bigger moves."))
    use_stream: bool = Field(False, **info(
        "Use CUDA streams", "Prefetch the next group on a CUDA stream so transfers overlap compute.",
        cuda={True: "CUDA streams need a CUDA GPU"}))
    record_stream: bool = Field(False, **info(
        "Record stream", "Lets memory be freed earlier with streams (needs use_stream)."))
    low_cpu_mem_usage: bool = Field(False, **info(
        "Low CPU memory", "Pin host memory on the fly instead of up front: less host memory, slower transfers."))
    offload_to_disk: bool = Field(False, **info(
        "Offload to disk", "Groups wait on disk, not in RAM: least memory, slowest; cuts host memory on a CPU too. "
        "Not with torchao or quanto weights."))

    @model_validator(mode="after")
    def _group_options(self) -> OffloadConfig:
        defaults = OffloadConfig.model_fields
        if self.mode != "group":
            changed = [name for name in _GROUP_OPTIONS if getattr(self, name) != defaults[name].default]
            if changed:
                raise ValueError(f"{_only(changed)} to mode 'group' (mode is '{self.mode}')")
        if self.record_stream and not self.use_stream:
            raise ValueError("record_stream needs use_stream=true (diffusers: record_stream needs a stream)")
        if self.offload_type == "leaf_level" and self.num_blocks_per_group != 1:
            raise ValueError("num_blocks_per_group applies to offload_type 'block_level' only")
        if self.use_stream and self.num_blocks_per_group != 1:
            # diffusers (hooks/group_offloading.py) silently sets it to 1 when streams are used.
            raise ValueError("num_blocks_per_group must be 1 with use_stream=true (diffusers prefetches one block "
                             "per group on a stream)")
        return self


_GROUP_OPTIONS = (
    "offload_type",
    "num_blocks_per_group",
    "use_stream",
    "record_stream",
    "low_cpu_mem_usage",
    "offload_to_disk",
)


class VaeConfig(Settings):
    """Decode one image at a time (slicing) or tile by tile (tiling) to cut the VAE's peak memory."""

    slicing: bool = Field(False, **info(
        "VAE slicing", "Decode a batch one image at a time: lower peak memory for batches (the report warns when "
        "there is only one image)."))
    tiling: bool = Field(False, **info(
        "VAE tiling", "Decode large images tile by tile: lower peak memory at large sizes; may show faint seams."))


# ---------------------------------------------------------------------------------------------------- compile


class CompileConfig(Settings):
    """torch.compile of the transformer. `regional` compiles the repeated blocks only (much shorter compile);
    `aot` compiles them ahead of time (torch.export + AOTInductor) into packages kept on disk
    (`optim.techniques.aot`)."""

    mode: Literal["off", "regional", "full", "aot"] = Field("off", **info(
        "torch.compile", "Fuse the transformer's kernels: faster steady state after a one-off compile (reported "
        "apart). regional compiles one block and reuses it for every block (short compile, most of the speed); "
        "full compiles the whole transformer; aot exports the repeated block (or the whole transformer) with "
        "torch.export, compiles it with AOTInductor into a package cached on disk (built once per model, shape "
        "and machine, then only loaded) and runs every block through it with its own weights. aot also works "
        "on ZeroGPU, where just-in-time compile does not.",
        labels={"off": "off", "regional": "regional (repeated blocks)", "full": "full transformer",
                "aot": "ahead of time (AOTInductor, cached on disk)"}))
    inductor_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", **info(
            "Inductor mode", "max-autotune searches for the fastest kernels (long compile); reduce-overhead and "
            "max-autotune record CUDA graphs on a GPU (not with caches or offload); max-autotune-no-cudagraphs "
            "searches without them.",
            cuda={"reduce-overhead": "reduce-overhead records CUDA graphs: it needs a CUDA GPU"}))
    # None = auto: one graph (fullgraph) unless a cache or an offload hook is on, whose hooks run outside the
    # graph and need graph breaks (measured: every such pair fails with fullgraph=true).
    fullgraph: bool | None = Field(None, **info(
        "Full graph", "on: one graph, fail on graph breaks (fastest); off: allow breaks; auto: on unless a cache or "
        "offload needs breaks."))
    dynamic: bool | None = Field(None, **info(
        "Dynamic shapes", "auto lets torch decide; on avoids recompiles when sizes change.", advanced=True))
    channels_last: bool = Field(False, **info(
        "channels_last", "Convolution-friendly memory layout for components with convolutions (the VAE); "
        "transformers have none, and the report says so."))
    # The seed's advice: capture dynamic output shapes for bitsandbytes, a large recompile cache with offloading.
    recommended_dynamo_settings: bool = Field(True, **info(
        "Recommended dynamo settings", "The seed's advice: capture_dynamic_output_shape_ops with bitsandbytes, "
        "cache_size_limit=1000 with offloading or a cache (whose hooks otherwise make dynamo give up after 8 "
        "recompiles).", advanced=True))

    @model_validator(mode="after")
    def _off_means_off(self) -> CompileConfig:
        if self.mode == "off":
            defaults = CompileConfig.model_fields
            changed = [
                name
                for name in ("inductor_mode", "fullgraph", "dynamic", "channels_last")
                if getattr(self, name) != defaults[name].default
            ]
            if changed:
                raise ValueError(f"{_only(changed)} when compile mode is 'regional' or 'full' (or 'aot')")
        if self.mode == "aot":
            # torch.export captures one whole graph for one set of input shapes; AOTInductor records no CUDA graphs.
            if self.fullgraph is False:
                raise ValueError("compile fullgraph false has no meaning with mode 'aot': torch.export always "
                                 "captures one whole graph (leave fullgraph unset)")
            if self.dynamic:
                raise ValueError("compile dynamic true is not supported with mode 'aot': it builds one package per "
                                 "input shape (a new size builds or loads another); leave dynamic unset")
            if self.inductor_mode in ("reduce-overhead", "max-autotune"):
                raise ValueError(f"compile inductor_mode {self.inductor_mode!r} records CUDA graphs, which "
                                 "AOTInductor packages do not; with mode 'aot' use 'default' or "
                                 "'max-autotune-no-cudagraphs'")
        return self


# -------------------------------------------------------------------------------------------------- together


class OptimConfig(Settings):
    """Everything the optimized side changes. The default changes nothing (the baseline)."""

    attention: AttentionConfig = AttentionConfig()
    cache: CacheConfig = NoCache(method="none")
    quantization: QuantizationConfig = NoQuantization(backend="none")
    offload: OffloadConfig = OffloadConfig()
    vae: VaeConfig = VaeConfig()
    compile: CompileConfig = CompileConfig()

    def is_baseline(self) -> bool:
        return self == OptimConfig()


def variants(union: Any, tag: str) -> dict[str, type[Settings]]:
    """{tag value: class} of a discriminated union, in the union's order."""
    members = get_args(get_args(union)[0]) if get_origin(union) is not Union else get_args(union)
    return {get_args(cls.model_fields[tag].annotation)[0]: cls for cls in members}


# Adding a cache method or a quantization backend: a class above, in its union; the rest follows from these.
CACHE_VARIANTS = variants(CacheConfig, "method")
QUANTIZATION_VARIANTS = variants(QuantizationConfig, "backend")
CACHE_METHODS = tuple(CACHE_VARIANTS)
# Plain sections of OptimConfig (one setting per field) and the unions (a tag picks the variant).
SECTIONS: dict[str, type[Settings]] = {
    "attention": AttentionConfig, "offload": OffloadConfig, "vae": VaeConfig, "compile": CompileConfig,
}
UNIONS: dict[str, tuple[str, dict[str, type[Settings]]]] = {
    "cache": ("method", CACHE_VARIANTS), "quantization": ("backend", QUANTIZATION_VARIANTS),
}


# The keys whose value picks the variant of a union; `minimal_dict` always keeps them.
_DISCRIMINATORS = {section: tag for section, (tag, _) in UNIONS.items()}
_VARIANTS = {section: classes for section, (_, classes) in UNIONS.items()}


def minimal_dict(settings: BaseModel) -> dict[str, Any]:
    """Only what differs from the defaults (JSON values), keeping the keys that pick a union's variant.

    >>> minimal_dict(parse_optim({"cache": {"method": "first_block_cache"}}))
    {'cache': {'method': 'first_block_cache'}}
    """
    return _diff(settings.model_dump(mode="json"), type(settings)().model_dump(mode="json"))


def _diff(full: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in full.items():
        base = default.get(key)
        if key in _DISCRIMINATORS and isinstance(value, dict):
            if value != base:  # a union differs from the default: keep its tag, then what differs in the variant
                tag = _DISCRIMINATORS[key]
                variant_default = _VARIANTS[key][value[tag]](**{tag: value[tag]}).model_dump(mode="json")
                out[key] = {tag: value[tag], **_diff(value, variant_default)}
        elif isinstance(value, dict) and isinstance(base, dict):
            inner = _diff(value, base)
            if inner:
                out[key] = inner
        elif key not in default or value != base:
            out[key] = value
    return out




# --------------------------------------------------------------------------------------------------- parsing


def parse_run(data: Any, *, where: str = "run") -> RunSpec:
    """Validate run settings from JSON values; raise one `ConfigError` naming every bad field."""
    return _parse(RunSpec, data, where)


def parse_optim(data: Any, *, where: str = "optim") -> OptimConfig:
    """Validate optimization settings from JSON values; raise one `ConfigError` naming every bad field."""
    return _parse(OptimConfig, data, where)


def _parse(cls: type[BaseModel], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {_show(data)}")
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, where, data, cls)) from None


def format_validation_error(error: ValidationError, where: str, data: Any, root: type[BaseModel]) -> str:
    """One line per problem: `path: what is wrong (what is allowed)`, joined with '; '."""
    problems = []
    items = error.errors(include_url=False)
    locs = [tuple(_clean_loc(item["loc"])) for item in items]
    for item, loc_key in zip(items, locs):
        # A container error ("too short") that only echoes an error inside one of its items is noise.
        if any(other != loc_key and other[: len(loc_key)] == loc_key for other in locs):
            continue
        loc = list(loc_key)
        path = ".".join([where, *map(str, loc)]) if where else ".".join(map(str, loc))
        problems.append(f"{path}: {_explain(item, loc, data, root)}")
    # Deduplicate while keeping order (a union can report the same problem twice).
    unique = list(dict.fromkeys(problems))
    return "; ".join(unique)


def _clean_loc(loc: tuple[Any, ...]) -> list[Any]:
    """Drop the variant tag pydantic puts after a union field (`cache.first_block_cache.threshold`)."""
    out: list[Any] = []
    skip_next = False
    for part in loc:
        if skip_next:
            skip_next = False
            continue
        out.append(part)
        if part in _DISCRIMINATORS:
            skip_next = True
    # Constraint errors on `X | None` fields end in a type name such as 'constrained-int'.
    return [
        part
        for part in out
        if not (isinstance(part, str) and ("-" in part and part.startswith(("constrained", "function"))))
    ]


def _lookup(data: Any, loc: list[Any]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, (list, tuple)) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _explain(item: dict[str, Any], loc: list[Any], data: Any, root: type[BaseModel]) -> str:
    kind = item["type"]
    value = item.get("input")
    ctx = item.get("ctx") or {}
    if kind == "extra_forbidden":
        allowed = _allowed_fields(root, loc[:-1], data)
        name = str(loc[-1]) if loc else "?"
        hint = difflib.get_close_matches(name, allowed, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"unknown field{suggestion}; allowed fields: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags", "")
        return f"{_show(ctx.get('tag'))} is not one of the allowed values: {expected}"
    if kind == "union_tag_not_found":
        tag = str(ctx.get("discriminator", "")).strip("'")
        return f"missing '{tag}' (it picks the kind of setting)"
    if kind == "literal_error":
        return f"{_show(value)} is not allowed; allowed: {ctx.get('expected', '')}"
    if kind == "multiple_of":
        step = ctx.get("multiple_of")
        if isinstance(value, int) and isinstance(step, int) and step > 0:
            below, above = value // step * step, (value // step + 1) * step
            nearest = f"{above}" if below < step else f"{below} or {above}"
            return f"{value} is not a multiple of {step}; use {nearest}"
        return f"{_show(value)} must be a multiple of {step}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {
            "greater_than": f"> {ctx.get('gt')}",
            "greater_than_equal": f">= {ctx.get('ge')}",
            "less_than": f"< {ctx.get('lt')}",
            "less_than_equal": f"<= {ctx.get('le')}",
        }[kind]
        return f"{_show(value)} is out of range; it must be {bound}"
    if kind == "missing":
        return "required field is missing"
    if kind == "value_error":
        return str(ctx.get("error", item["msg"]))
    if kind in ("string_too_long", "too_long"):
        return f"too long ({ctx.get('actual_length', '?')} items or characters; at most {ctx.get('max_length')})"
    if kind in ("string_too_short", "too_short"):
        return f"too short (at least {ctx.get('min_length')})"
    if kind == "string_pattern_mismatch":
        return f"{_show(value)} must match {ctx.get('pattern')}"
    return f"{_show(value)}: {item['msg'].lower()}"


def _allowed_fields(root: type[BaseModel], loc: list[Any], data: Any) -> list[str]:
    """The field names valid at `loc` (for a union, those of the variant the data picked)."""
    cls: Any = root
    for index, part in enumerate(loc):
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        if part in _DISCRIMINATORS:
            chosen = _lookup(data, loc[: index + 1])
            tag = chosen.get(_DISCRIMINATORS[part]) if isinstance(chosen, dict) else None
            cls = _VARIANTS[part].get(tag, _VARIANTS[part]["none"])
        else:
            cls = field.annotation
    return list(getattr(cls, "model_fields", {}).keys())


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
