"""Typed, JSON-friendly settings: what to run (`RunSpec`) and which optimizations to apply (`OptimConfig`).

One small frozen model per technique, holding only JSON values; callables (timestep callbacks and the like) are
attached when the technique is applied (`optim/techniques/`), never stored here. Parsing is strict: an unknown key,
a wrong type or an out-of-range value raises one `ConfigError` naming the field path, the bad value and what is
allowed. This module does not import torch, so settings validate anywhere (a browser upload, a CI job without
a GPU).

Example:
    >>> optim = parse_optim({"cache": {"method": "first_block_cache", "threshold": 0.1}})
    >>> optim.cache.threshold
    0.1
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from optim.errors import ConfigError

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

# A timestep range as diffusers takes it: (low, high) on the 0-1000 scale of the pipeline's timesteps.
# JSON has no tuples, so the outer container is lax (a list is fine) while the numbers stay strict.
TimestepRange = Annotated[tuple[StrictInt, StrictInt], Field(strict=False)]
SkipRange = Annotated[int, Field(ge=1, le=50)]
Dtype = Literal["float32", "bfloat16", "float16"]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _only(names: list[str]) -> str:
    return f"{', '.join(names)} {'applies' if len(names) == 1 else 'apply'} only"


def _check_range(value: tuple[int, int] | None, name: str) -> None:
    if value is None:
        return
    low, high = value
    if not (-1 <= low < high <= 1000):
        raise ValueError(f"{name} must be (low, high) with -1 <= low < high <= 1000, got {list(value)}")


# ----------------------------------------------------------------------------------------------- the run itself


class RunSpec(_Settings):
    """What to generate and how to measure it. `None` means "the model's own default" (see `optim.models`)."""

    model: Annotated[str, Field(min_length=1, max_length=300)] = "embedded"
    prompt: Annotated[str, Field(max_length=2000)] | None = None
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    steps: Annotated[int, Field(ge=1, le=500)] | None = None
    width: Annotated[int, Field(ge=16, le=8192, multiple_of=16)] | None = None
    height: Annotated[int, Field(ge=16, le=8192, multiple_of=16)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=50.0)] | None = None
    max_sequence_length: Annotated[int, Field(ge=1, le=512)] | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The first warm-up run is eager and also measures how much transformer work the cache skips.
    warmup_runs: Annotated[int, Field(ge=1, le=10)] = 1
    timed_runs: Annotated[int, Field(ge=1, le=50)] = 3


# ------------------------------------------------------------------------------------------------- attention


class AttentionConfig(_Settings):
    """`transformer.set_attention_backend(backend)`; `checks` turns on the dispatcher's input checks."""

    backend: Literal[ATTENTION_BACKENDS] = "native"  # type: ignore[valid-type]
    checks: bool = False


# ----------------------------------------------------------------------------------------------------- caches


class NoCache(_Settings):
    method: Literal["none"]


class FirstBlockCache(_Settings):
    """diffusers `FirstBlockCacheConfig`: skip the remaining blocks while the first block's residual barely moves."""

    method: Literal["first_block_cache"]
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05


class PyramidAttentionBroadcast(_Settings):
    """diffusers `PyramidAttentionBroadcastConfig` (arXiv 2408.12588). A skip range N recomputes attention once
    every N calls while the timestep is inside the matching timestep range."""

    method: Literal["pyramid_attention_broadcast"]
    spatial_attention_block_skip_range: SkipRange | None = 2
    temporal_attention_block_skip_range: SkipRange | None = None
    cross_attention_block_skip_range: SkipRange | None = None
    spatial_attention_timestep_skip_range: TimestepRange = (100, 800)
    temporal_attention_timestep_skip_range: TimestepRange = (100, 800)
    cross_attention_timestep_skip_range: TimestepRange = (100, 800)

    @model_validator(mode="after")
    def _ranges(self) -> PyramidAttentionBroadcast:
        for kind in ("spatial", "temporal", "cross"):
            _check_range(getattr(self, f"{kind}_attention_timestep_skip_range"), f"{kind}_attention_timestep_skip_range")
        if not any(
            getattr(self, f"{kind}_attention_block_skip_range") for kind in ("spatial", "temporal", "cross")
        ):
            raise ValueError(
                "pyramid_attention_broadcast skips nothing: set at least one of spatial_attention_block_skip_range, "
                "temporal_attention_block_skip_range, cross_attention_block_skip_range"
            )
        return self


class FasterCache(_Settings):
    """diffusers `FasterCacheConfig` (arXiv 2410.19355): reuse attention states and approximate the unconditional
    branch. `is_guidance_distilled=None` means "decide from the model" (FLUX.1-dev style guidance embeddings)."""

    method: Literal["faster_cache"]
    spatial_attention_block_skip_range: SkipRange | None = 2
    temporal_attention_block_skip_range: SkipRange | None = None
    spatial_attention_timestep_skip_range: TimestepRange = (-1, 681)
    temporal_attention_timestep_skip_range: TimestepRange = (-1, 681)
    low_frequency_weight_update_timestep_range: TimestepRange = (99, 901)
    high_frequency_weight_update_timestep_range: TimestepRange = (-1, 301)
    alpha_low_frequency: Annotated[float, Field(ge=0.0, le=10.0)] = 1.1
    alpha_high_frequency: Annotated[float, Field(ge=0.0, le=10.0)] = 1.1
    unconditional_batch_skip_range: Annotated[int, Field(ge=1, le=50)] = 5
    unconditional_batch_timestep_skip_range: TimestepRange = (-1, 641)
    attention_weight: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    tensor_format: Literal["BCFHW", "BFCHW", "BCHW"] = "BCHW"
    is_guidance_distilled: bool | None = None

    @model_validator(mode="after")
    def _ranges(self) -> FasterCache:
        for name in (
            "spatial_attention_timestep_skip_range",
            "temporal_attention_timestep_skip_range",
            "low_frequency_weight_update_timestep_range",
            "high_frequency_weight_update_timestep_range",
            "unconditional_batch_timestep_skip_range",
        ):
            _check_range(getattr(self, name), name)
        return self


class MagCache(_Settings):
    """diffusers `MagCacheConfig`. `mag_ratios`: "calibrate" measures the model's ratios in an untimed run first;
    "flux" uses the FLUX.1 ratios shipped with diffusers; a list gives them explicitly."""

    method: Literal["mag_cache"]
    threshold: Annotated[float, Field(gt=0.0, le=2.0)] = 0.06
    max_skip_steps: Annotated[int, Field(ge=1, le=50)] = 3
    retention_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    mag_ratios: Literal["calibrate", "flux"] | Annotated[list[float], Field(min_length=2, max_length=1000)] = (
        "calibrate"
    )


class TaylorSeer(_Settings):
    """diffusers `TaylorSeerCacheConfig`: predict skipped block outputs with a Taylor expansion."""

    method: Literal["taylorseer"]
    cache_interval: Annotated[int, Field(ge=1, le=50)] = 5
    disable_cache_before_step: Annotated[int, Field(ge=0, le=500)] = 3
    disable_cache_after_step: Annotated[int, Field(ge=0, le=500)] | None = None
    max_order: Annotated[int, Field(ge=0, le=4)] = 1
    taylor_factors_dtype: Dtype = "bfloat16"
    use_lite_mode: bool = False


CacheConfig = Annotated[
    Union[NoCache, FirstBlockCache, PyramidAttentionBroadcast, FasterCache, MagCache, TaylorSeer],
    Field(discriminator="method"),
]
CACHE_METHODS = ("none", "first_block_cache", "pyramid_attention_broadcast", "faster_cache", "mag_cache", "taylorseer")

# ----------------------------------------------------------------------------------------------- quantization

Components = Annotated[
    tuple[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], ...],
    Field(strict=False, min_length=1, max_length=8),
]


class NoQuantization(_Settings):
    backend: Literal["none"]


class BitsAndBytes4Bit(_Settings):
    """bitsandbytes 4-bit (QLoRA-style): nf4 or fp4 weights, compute in `compute_dtype`."""

    backend: Literal["bitsandbytes_4bit"]
    components: Components = ("transformer",)
    quant_type: Literal["nf4", "fp4"] = "nf4"
    compute_dtype: Dtype = "bfloat16"
    double_quant: bool = False


class BitsAndBytes8Bit(_Settings):
    """bitsandbytes LLM.int8() weights."""

    backend: Literal["bitsandbytes_8bit"]
    components: Components = ("transformer",)


class TorchAo(_Settings):
    """torchao through diffusers `TorchAoConfig` (one torchao config class per `quant_type`)."""

    backend: Literal["torchao"]
    components: Components = ("transformer",)
    quant_type: Literal["int8_weight_only", "int8_dynamic", "float8_weight_only", "float8_dynamic"] = (
        "int8_weight_only"
    )


class Quanto(_Settings):
    """optimum-quanto through diffusers `QuantoConfig`."""

    backend: Literal["quanto"]
    components: Components = ("transformer",)
    weights: Literal["int8", "int4", "int2", "float8"] = "int8"


QuantizationConfig = Annotated[
    Union[NoQuantization, BitsAndBytes4Bit, BitsAndBytes8Bit, TorchAo, Quanto],
    Field(discriminator="backend"),
]
QUANTIZATION_BACKENDS = ("none", "bitsandbytes_4bit", "bitsandbytes_8bit", "torchao", "quanto")

# ---------------------------------------------------------------------------------------------------- offload


class OffloadConfig(_Settings):
    """Where weights live while they are not computing. Group options apply to `mode="group"` only."""

    mode: Literal["none", "model_cpu", "sequential_cpu", "group"] = "none"
    offload_type: Literal["block_level", "leaf_level"] = "block_level"
    num_blocks_per_group: Annotated[int, Field(ge=1, le=100)] = 1
    use_stream: bool = False
    record_stream: bool = False
    low_cpu_mem_usage: bool = False
    offload_to_disk: bool = False

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
        return self


_GROUP_OPTIONS = (
    "offload_type",
    "num_blocks_per_group",
    "use_stream",
    "record_stream",
    "low_cpu_mem_usage",
    "offload_to_disk",
)


class VaeConfig(_Settings):
    """Decode one image at a time (slicing) or tile by tile (tiling) to cut the VAE's peak memory."""

    slicing: bool = False
    tiling: bool = False


# ---------------------------------------------------------------------------------------------------- compile


class CompileConfig(_Settings):
    """torch.compile of the transformer. `regional` compiles the repeated blocks only (much shorter compile)."""

    mode: Literal["off", "regional", "full"] = "off"
    inductor_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # None = auto: one graph (fullgraph) unless a cache or group offload is on, whose hooks run outside the
    # graph and need graph breaks (measured: every such pair fails with fullgraph=true).
    fullgraph: bool | None = None
    dynamic: bool | None = None
    channels_last: bool = False
    # The seed's advice: capture dynamic output shapes for bitsandbytes, a large recompile cache with offloading.
    recommended_dynamo_settings: bool = True

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
                raise ValueError(f"{_only(changed)} when compile mode is 'regional' or 'full'")
        return self


# -------------------------------------------------------------------------------------------------- together


class OptimConfig(_Settings):
    """Everything the optimized side changes. The default changes nothing (the baseline)."""

    attention: AttentionConfig = AttentionConfig()
    cache: CacheConfig = NoCache(method="none")
    quantization: QuantizationConfig = NoQuantization(backend="none")
    offload: OffloadConfig = OffloadConfig()
    vae: VaeConfig = VaeConfig()
    compile: CompileConfig = CompileConfig()

    def is_baseline(self) -> bool:
        return self == OptimConfig()


# The keys whose value picks the variant of a union; `minimal_dict` always keeps them.
_DISCRIMINATORS = {"cache": "method", "quantization": "backend"}


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


_CACHE_VARIANTS: dict[str, type[_Settings]] = {
    "none": NoCache,
    "first_block_cache": FirstBlockCache,
    "pyramid_attention_broadcast": PyramidAttentionBroadcast,
    "faster_cache": FasterCache,
    "mag_cache": MagCache,
    "taylorseer": TaylorSeer,
}
_QUANT_VARIANTS: dict[str, type[_Settings]] = {
    "none": NoQuantization,
    "bitsandbytes_4bit": BitsAndBytes4Bit,
    "bitsandbytes_8bit": BitsAndBytes8Bit,
    "torchao": TorchAo,
    "quanto": Quanto,
}
_VARIANTS = {"cache": _CACHE_VARIANTS, "quantization": _QUANT_VARIANTS}

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
    return [part for part in out if not (isinstance(part, str) and ("-" in part and part.startswith(("constrained", "function"))))]


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
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"):
        bound = {
            "greater_than": f"> {ctx.get('gt')}",
            "greater_than_equal": f">= {ctx.get('ge')}",
            "less_than": f"< {ctx.get('lt')}",
            "less_than_equal": f"<= {ctx.get('le')}",
            "multiple_of": f"a multiple of {ctx.get('multiple_of')}",
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
