"""The diffusion optimization lab: a Gradio app that runs a diffusers pipeline as a baseline and with the
optimizations you pick, side by side, and shows what they bought (latency, per-step time, peak memory) and
what they cost (pixel differences, PSNR/SSIM, a diff heatmap).

    python app.py                      # serves on 0.0.0.0:7860 (GRADIO_SERVER_PORT to change)

Widgets -> `OptimConfig` + `RunSpec` (validated by `optim.config`) -> `optim.engine.compare` -> components.
Handlers are plain functions at the top of this file; the layout is `build_demo()` at the bottom. Every
optimization control maps to exactly one config field (see `CONTROL_KEYS`: the key is the field's path).

Scripting it with gradio_client (the public `compare` endpoint):

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")        # or "user/space-name" on Hugging Face
    report, baseline, optimized, diff = client.predict(
        "first-block-cache",           # a shipped preset name, or a preset's JSON text
        "embedded",                    # model: embedded, a Hub id, synthetic:flux-dev ...
        "a red circle on a blue background",
        0,                             # seed
        20, 128, 128,                  # steps, width, height (None = the model's default)
        None, 3,                       # guidance (None = model default), timed runs per side
        api_name="/compare",
    )
    print(report["speedup"], report["quality"]["psnr_db"])   # report = the CLI's report.json
    # baseline, optimized, diff are paths of lossless PNG files
"""

from __future__ import annotations

try:  # On ZeroGPU `spaces` must be imported before torch; everywhere else it is optional.
    import spaces
except ImportError:  # pragma: no cover - only on Hugging Face Spaces
    spaces = None

import atexit
import html
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Union, get_args, get_origin

from optim.logs import quiet_libraries

quiet_libraries()

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from optim import capabilities, charts  # noqa: E402
from optim import config as C  # noqa: E402
from optim.config import OptimConfig, RunSpec, minimal_dict, parse_optim, parse_run  # noqa: E402
from optim.engine import BaselineCache, Comparison, compare, prepare  # noqa: E402
from optim.errors import Cancelled, ConfigError, OptimError  # noqa: E402
from optim.limits import Limits, check_run  # noqa: E402
from optim.models import (  # noqa: E402
    EMBEDDED_MODEL,
    download_model,
    POPULAR_MODELS,
    ModelDefaults,
    model_defaults,
    resolve_model,
)
from optim.presets import (  # noqa: E402
    Preset,
    make_preset,
    preset_from_json,
    preset_to_json,
    shipped_presets,
)
from optim.report import fmt_mb, fmt_s, summary_rows, write_report  # noqa: E402
from optim.share import QUERY_PARAMETER, decode_share, encode_share  # noqa: E402
from optim.synthetic import SYNTHETIC_MODELS  # noqa: E402

log = logging.getLogger("optim.app")

# ------------------------------------------------------------------------------------------ this server

LIMITS = Limits.from_env()
CAPS = capabilities.detect()
DEVICE = CAPS["device"]
CUDA = bool(DEVICE["cuda"])
ZERO_GPU = capabilities.on_zero_gpu() and spaces is not None
# ZeroGPU forks a process per GPU call itself; elsewhere each side runs in a fresh worker process.
ISOLATION = "inline" if ZERO_GPU else "process"
# Baselines measured by this server, by model and run settings: the same baseline is measured once.
BASELINES = BaselineCache()
SHIPPED: dict[str, Preset] = shipped_presets()
HISTORY_LENGTH = 20
REPORTS_DIR = Path(tempfile.mkdtemp(prefix="optim-lab-"))  # report files and preset downloads of this server
atexit.register(shutil.rmtree, REPORTS_DIR, True)
# Saved presets live in the browser (localStorage). They are not secret, and a fixed key keeps them readable
# after the server restarts (Gradio's default is a random key per launch).
BROWSER_STATE_SECRET = os.environ.get("OPTIM_BROWSER_STATE_SECRET", "diffusion-optimization-lab-presets")

EXAMPLE_PROMPTS = [
    "a red circle on a blue background",
    "a small yellow triangle at the top left on a black background",
    "a large white square on a green background",
    "a blue circle at the bottom right on a yellow background",
]

# ------------------------------------------------------------------------------ reading the config models


def _variants(union: Any, tag: str) -> dict[str, type]:
    """{tag value: class} of a discriminated union such as `C.CacheConfig`."""
    members = get_args(get_args(union)[0]) if get_origin(union) is not Union else get_args(union)
    return {get_args(cls.model_fields[tag].annotation)[0]: cls for cls in members}


CACHE_VARIANTS = _variants(C.CacheConfig, "method")
QUANT_VARIANTS = _variants(C.QuantizationConfig, "backend")
SECTIONS: dict[str, type] = {  # plain sections: one control per field
    "attention": C.AttentionConfig,
    "offload": C.OffloadConfig,
    "vae": C.VaeConfig,
    "compile": C.CompileConfig,
}
# Options that only apply when their switch is on; the engine insists they stay at their defaults otherwise, so
# hidden controls are not read (mirrors the validators of OffloadConfig and CompileConfig).
OFFLOAD_GROUP_ONLY = tuple(name for name in C.OffloadConfig.model_fields if name != "mode")
COMPILE_ONLY_WHEN_ON = ("inductor_mode", "fullgraph", "dynamic", "channels_last")


def _metadata(cls: type, name: str) -> list[Any]:
    """Every constraint object on a field, including those inside `Annotated[...] | None`."""
    field = cls.model_fields[name]
    found = list(field.metadata)
    stack = [field.annotation]
    while stack:
        annotation = stack.pop()
        args = get_args(annotation)
        if get_origin(annotation) is not None and hasattr(annotation, "__metadata__"):
            for meta in annotation.__metadata__:
                found.extend(getattr(meta, "metadata", [meta]))
            stack.append(args[0])
        else:
            stack.extend(a for a in args if not isinstance(a, (str, int, float, bool)))
    return found


def field_bounds(cls: type, name: str) -> tuple[float | None, float | None, bool]:
    """(lowest, highest, lowest is exclusive) allowed for a numeric field, read from its `Field(ge=..., le=...)`."""
    low = high = None
    exclusive = False
    for meta in _metadata(cls, name):
        if getattr(meta, "ge", None) is not None:
            low = meta.ge
        if getattr(meta, "gt", None) is not None:
            low, exclusive = meta.gt, True
        if getattr(meta, "le", None) is not None:
            high = meta.le
        if getattr(meta, "lt", None) is not None:
            high = meta.lt
    return low, high, exclusive


def field_choices(cls: type, name: str) -> list[Any]:
    """The values of a `Literal[...]` field (also inside `X | None`)."""
    annotation = cls.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for arg in get_args(annotation):
        if get_origin(arg) is Literal:
            return list(get_args(arg))
    return []


def field_kind(cls: type, name: str) -> str:
    """How a field is shown: int, float, bool, choice, range (two numbers), int_or_off (0 = None),
    int_or_blank (empty = None), tristate (auto/on/off = None/True/False), mag_ratios, text."""
    if name == "mag_ratios":
        return "mag_ratios"
    annotation = cls.model_fields[name].annotation
    args = get_args(annotation)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if optional else [annotation]
    base = inner[0] if len(inner) == 1 else annotation
    while get_origin(base) is not None and hasattr(base, "__metadata__"):
        base = get_args(base)[0]
    if get_origin(base) is tuple and name.endswith("range"):
        return "range"
    if get_origin(base) is Literal:
        return "choice"
    if base is bool:
        return "tristate" if optional else "bool"
    if base is int:
        if optional:
            low = field_bounds(cls, name)[0]
            return "int_or_off" if low is not None and low >= 1 else "int_or_blank"
        return "int"
    if base is float:
        return "float"
    if base is str:
        return "text"
    if get_origin(base) is tuple:
        return "list"
    raise TypeError(f"no control for {cls.__name__}.{name} ({annotation})")


# ------------------------------------------------------------------------------------------ control keys
#
# One key per control, named after the config field it sets: "cache.first_block_cache.threshold",
# "offload.use_stream", "run.steps". A timestep range takes two controls ("...range.from", "...range.to") and a
# MagCache ratio list a choice plus a text box ("...mag_ratios", "...mag_ratios.custom"); both set one field.

RUN_FIELDS = list(RunSpec.model_fields)


def _field_keys(prefix: str, cls: type, name: str) -> list[str]:
    kind = field_kind(cls, name)
    key = f"{prefix}.{name}"
    if kind == "range":
        return [f"{key}.from", f"{key}.to"]
    if kind == "mag_ratios":
        return [key, f"{key}.custom"]
    return [key]


def _optim_keys() -> list[str]:
    keys = [f"attention.{name}" for name in C.AttentionConfig.model_fields]
    keys.append("cache.method")
    for method, cls in CACHE_VARIANTS.items():
        for name in cls.model_fields:
            if name != "method":
                keys += _field_keys(f"cache.{method}", cls, name)
    keys += ["quantization.backend", "quantization.components"]
    for backend, cls in QUANT_VARIANTS.items():
        for name in cls.model_fields:
            if name not in ("backend", "components"):
                keys += _field_keys(f"quantization.{backend}", cls, name)
    for section in ("offload", "vae", "compile"):
        for name in SECTIONS[section].model_fields:
            keys += _field_keys(section, SECTIONS[section], name)
    return keys


PRESET_KEYS = ["preset.name", "preset.description"]
RUN_KEYS = [f"run.{name}" for name in RUN_FIELDS]
OPTIM_KEYS = _optim_keys()
CONTROL_KEYS = PRESET_KEYS + RUN_KEYS + OPTIM_KEYS

# ------------------------------------------------------------------------------- values <-> settings

TRISTATE = {"auto": None, "on": True, "off": False}


def _int(value: Any) -> Any:
    """Widgets give floats for whole numbers; pass anything else through so validation names it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _read_field(values: dict[str, Any], prefix: str, cls: type, name: str) -> Any:
    """The config value of one field from its control(s)."""
    key = f"{prefix}.{name}"
    kind = field_kind(cls, name)
    if kind == "range":
        low, high = values[f"{key}.from"], values[f"{key}.to"]
        if low is None or high is None:
            raise ConfigError(f"optim.{key}: give both ends of the range (from, to)")
        return [_int(low), _int(high)]
    value = values[key]
    if kind == "int":
        return _int(value)
    if kind == "float":
        return _float(value)
    if kind == "int_or_off":
        return None if value in (None, 0) else _int(value)
    if kind == "int_or_blank":
        return None if value in (None, "") else _int(value)
    if kind == "tristate":
        if value not in TRISTATE:
            raise ConfigError(f"optim.{key}: {value!r} is not allowed; allowed: auto, on, off")
        return TRISTATE[value]
    if kind == "mag_ratios":
        if value != "custom":
            return value
        text = values[f"{key}.custom"] or ""
        try:
            return [float(part) for part in re.split(r"[,\s]+", text.strip()) if part]
        except ValueError:
            raise ConfigError(
                f"optim.{key}: {text[:60]!r} is not a list of numbers (write them separated by commas)"
            ) from None
    return value


def _write_field(out: dict[str, Any], prefix: str, cls: type, name: str, value: Any) -> None:
    """The control value(s) showing one config value."""
    key = f"{prefix}.{name}"
    kind = field_kind(cls, name)
    if kind == "range":
        out[f"{key}.from"], out[f"{key}.to"] = value[0], value[1]
    elif kind == "int_or_off":
        out[key] = 0 if value is None else value
    elif kind == "tristate":
        out[key] = {None: "auto", True: "on", False: "off"}[value]
    elif kind == "mag_ratios":
        if isinstance(value, str):
            out[key], out[f"{key}.custom"] = value, ""
        else:
            out[key], out[f"{key}.custom"] = "custom", ", ".join(repr(float(v)) for v in value)
    elif kind == "list":
        out[key] = list(value)
    else:
        out[key] = value


def optim_from_values(values: dict[str, Any]) -> OptimConfig:
    """Build the optimized side's settings from the controls (strict: a bad combination raises ConfigError)."""
    data: dict[str, Any] = {}
    for section in ("attention", "offload", "vae", "compile"):
        cls = SECTIONS[section]
        names = list(cls.model_fields)
        if section == "offload":
            if values["offload.mode"] != "group":
                names = [n for n in names if n not in OFFLOAD_GROUP_ONLY]
            elif values["offload.offload_type"] == "leaf_level":
                names.remove("num_blocks_per_group")
        if section == "compile" and values["compile.mode"] == "off":
            names = [n for n in names if n not in COMPILE_ONLY_WHEN_ON]
        data[section] = {name: _read_field(values, section, cls, name) for name in names}
    method = values["cache.method"]
    cache: dict[str, Any] = {"method": method}
    if method in CACHE_VARIANTS:
        cls = CACHE_VARIANTS[method]
        cache.update({n: _read_field(values, f"cache.{method}", cls, n) for n in cls.model_fields if n != "method"})
    data["cache"] = cache
    backend = values["quantization.backend"]
    quant: dict[str, Any] = {"backend": backend}
    if backend in QUANT_VARIANTS:
        cls = QUANT_VARIANTS[backend]
        for name in cls.model_fields:
            if name == "components":
                quant["components"] = list(values["quantization.components"] or [])
            elif name != "backend":
                quant[name] = _read_field(values, f"quantization.{backend}", cls, name)
    data["quantization"] = quant
    return parse_optim(data)


def values_from_optim(optim: OptimConfig) -> dict[str, Any]:
    """Every optimization control's value for these settings (variants not chosen show their defaults)."""
    out: dict[str, Any] = {}
    for section in ("attention", "offload", "vae", "compile"):
        cls, current = SECTIONS[section], getattr(optim, section)
        for name in cls.model_fields:
            _write_field(out, section, cls, name, getattr(current, name))
    out["cache.method"] = optim.cache.method
    for method, cls in CACHE_VARIANTS.items():
        current = optim.cache if optim.cache.method == method else cls(method=method)
        for name in cls.model_fields:
            if name != "method":
                _write_field(out, f"cache.{method}", cls, name, getattr(current, name))
    out["quantization.backend"] = optim.quantization.backend
    out["quantization.components"] = list(
        getattr(optim.quantization, "components", None) or QUANT_VARIANTS["torchao"].model_fields["components"].default
    )
    for backend, cls in QUANT_VARIANTS.items():
        current = optim.quantization if optim.quantization.backend == backend else cls(backend=backend)
        for name in cls.model_fields:
            if name not in ("backend", "components"):
                _write_field(out, f"quantization.{backend}", cls, name, getattr(current, name))
    return out


def run_from_values(values: dict[str, Any]) -> RunSpec:
    data: dict[str, Any] = {}
    for name in RUN_FIELDS:
        value = values[f"run.{name}"]
        if name == "model":
            value = (value or "").strip() or EMBEDDED_MODEL
        elif name == "negative_prompt":
            value = value or None  # empty: the model's own default
        elif name == "max_sequence_length":
            value = None if value in (None, "", 0) else _int(value)
        elif name == "guidance_scale":
            value = _float(value)
        elif name in ("seed", "steps", "width", "height", "warmup_runs", "timed_runs"):
            value = _int(value)
        data[name] = value
    return parse_run(data)


def defaults_for(model: str) -> ModelDefaults:
    return model_defaults(
        resolve_model(model, allow_local=LIMITS.allow_local_models, local_roots=LIMITS.local_model_roots)
    )


def values_from_run(run: RunSpec) -> dict[str, Any]:
    """The run controls for these settings; what the RunSpec leaves to the model shows the model's default."""
    defaults = defaults_for(run.model)
    filled = {
        "prompt": defaults.prompt,
        "negative_prompt": defaults.negative_prompt,
        "steps": defaults.steps,
        "width": defaults.width,
        "height": defaults.height,
        "guidance_scale": defaults.guidance_scale,
        "max_sequence_length": defaults.max_sequence_length,
    }
    out = {}
    for name in RUN_FIELDS:
        value = getattr(run, name)
        if value is None:
            value = filled.get(name)
        if name == "negative_prompt":
            value = value or ""
        out[f"run.{name}"] = value
    return out


def slug(name: str) -> str:
    """A valid preset name from whatever was typed ("My FBC 0.2!" -> "my-fbc-0.2")."""
    text = re.sub(r"[^a-z0-9._-]+", "-", (name or "").strip().lower()).strip("-._")[:64]
    return text or "custom"


def settings_from_values(values: dict[str, Any]) -> tuple[Preset, RunSpec]:
    """The preset and run settings the controls show. Raises `ConfigError` with the engine's message."""
    optim = optim_from_values(values)
    run = run_from_values(values)
    name = slug(values["preset.name"])
    if name in SHIPPED and SHIPPED[name].optim != optim:
        name = slug(f"{name}-modified")  # a shipped name must keep meaning the shipped settings
    return make_preset(name, optim, description=values["preset.description"] or ""), run


def values_from_settings(preset: Preset, run: RunSpec) -> dict[str, Any]:
    """Every control's value for a preset and run settings (inverse of `settings_from_values`)."""
    values = {"preset.name": preset.name, "preset.description": preset.description}
    values.update(values_from_run(run))
    values.update(values_from_optim(preset.optim))
    return values


DEFAULT_RUN = RunSpec()
DEFAULT_PRESET = SHIPPED.get("baseline") or make_preset("baseline", OptimConfig())
DEFAULT_VALUES = values_from_settings(DEFAULT_PRESET, DEFAULT_RUN)

# ------------------------------------------------------------------------------------- control widgets

SIDE_MAX = min(8192, max(512, int(math.sqrt(LIMITS.max_pixels) * 2) // 16 * 16))
# Run-setting ranges: the RunSpec bounds, narrowed to what this server allows.
RUN_LIMITS = {
    "steps": LIMITS.max_steps,
    "width": SIDE_MAX,
    "height": SIDE_MAX,
    "warmup_runs": LIMITS.max_warmup_runs,
    "timed_runs": LIMITS.max_timed_runs,
}


def _short(reason: str) -> str:
    """The gist of an unavailability reason, for a dropdown label (the full text is in the capabilities panel)."""
    text = re.sub(r"\s*\([^)]*\)", "", reason.split(";")[0]).strip()
    return text if len(text) <= 70 else text[:67] + "..."


def _mark(label: str, reason: str | None) -> str:
    return f"{label} (unavailable: {_short(reason)})" if reason else label


def _reason(section: str, name: str) -> str | None:
    return capabilities.reason(section, name)


def _attention_choices() -> list[tuple[str, str]]:
    options = [o for o in CAPS["attention_backends"] if o["name"] in C.ATTENTION_BACKENDS]
    options.sort(key=lambda o: not o["available"])  # what runs here first
    return [(_mark(f"{o['name']} · {o['family']}", o["reason"]), o["name"]) for o in options]


CACHE_LABELS = {
    "none": "none",
    "first_block_cache": "First Block Cache",
    "pyramid_attention_broadcast": "Pyramid Attention Broadcast",
    "faster_cache": "FasterCache",
    "mag_cache": "MagCache",
    "taylorseer": "TaylorSeer",
}


def _quant_backend_choices() -> list[tuple[str, str]]:
    labels = {
        "none": "none",
        "bitsandbytes_4bit": "bitsandbytes 4-bit (NF4/FP4)",
        "bitsandbytes_8bit": "bitsandbytes 8-bit (LLM.int8)",
        "torchao": "torchao",
        "quanto": "optimum-quanto",
    }
    out = []
    quant = {o["name"]: o for o in CAPS["quantization"]}
    for backend in QUANT_VARIANTS:
        if backend.startswith("bitsandbytes"):
            option = quant[backend]
            if option.get("partial"):
                label = f"{labels[backend]} (on this CPU: text encoders only)"
            else:
                label = _mark(labels[backend], option["reason"])
        elif backend in ("torchao", "quanto"):
            variants = [o for name, o in quant.items() if name.startswith(backend + ":")]
            reason = None if any(o["available"] for o in variants) else (variants[0]["reason"] if variants else None)
            label = _mark(labels[backend], reason)
        else:
            label = labels[backend]
        out.append((label, backend))
    return out


def _choice_labels(key: str, choices: list[Any]) -> list[Any]:
    """Dropdown (label, value) pairs marking what this machine cannot run."""
    if key == "attention.backend":
        return _attention_choices()
    if key == "cache.method":
        return [(CACHE_LABELS.get(c, c), c) for c in choices]
    if key == "quantization.backend":
        return _quant_backend_choices()
    if key == "quantization.torchao.quant_type":
        return [(_mark(c, _reason("quantization", f"torchao:{c}")), c) for c in choices]
    if key == "quantization.quanto.weights":
        return [(_mark(c, _reason("quantization", f"quanto:{c}")), c) for c in choices]
    if key == "offload.mode":
        names = {"none": "none", "model_cpu": "model CPU offload", "sequential_cpu": "sequential CPU offload",
                 "group": "group offload"}
        return [(_mark(names[c], _reason("offload", c)), c) for c in choices]
    if key == "compile.mode":
        names = {"off": "off", "regional": "regional (repeated blocks)", "full": "full transformer"}
        return [(_mark(names[c], _reason("compile", c) if c != "off" else None), c) for c in choices]
    if key == "compile.inductor_mode":
        return [(_mark(c, _reason("compile", f"mode:{c}")), c) for c in choices]
    return choices


# label, help text (what it does and its trade-off)
HELP: dict[str, tuple[str, str]] = {
    "run.model": ("Model", "The embedded tiny FLUX runs anywhere in a second. Hub ids download on first use; a local "
                  "diffusers folder works too. Changing it fills in the model's recommended settings."),
    "run.prompt": ("Prompt", "Same prompt for both sides."),
    "run.negative_prompt": ("Negative prompt", "Empty = the model's default."),
    "run.seed": ("Seed", "Same seed (CPU generator) on both sides, so differences come from the optimizations."),
    "run.steps": ("Steps", "Denoising steps: time grows with steps; caches have more steps to skip."),
    "run.width": ("Width", "Multiple of 16. Time and memory grow with pixels."),
    "run.height": ("Height", "Multiple of 16."),
    "run.guidance_scale": ("Guidance", "Guidance strength; the model's recommended value is filled in."),
    "run.max_sequence_length": ("Max text tokens", "Empty = the model's default (the length it was trained with)."),
    "run.dtype": ("Precision", "auto = bfloat16 on a GPU, float32 on CPU. Both sides use it."),
    "run.device": ("Device", "auto = CUDA when there is a GPU."),
    "run.warmup_runs": ("Warm-up runs", "Untimed runs per side before timing (the first also counts skipped work)."),
    "run.timed_runs": ("Timed runs", "Per side; the median is reported with min-max. More = steadier, slower."),
    "attention.backend": ("Attention backend", "The kernel behind every attention call. Fused kernels (flash, "
                          "sage) cut time and memory on a GPU; results can differ in the last bits."),
    "attention.checks": ("Dispatcher checks", "Validate shapes and dtypes on each attention call (slower; for "
                         "debugging a backend)."),
    "cache.method": ("Cache method", "Reuse work across denoising steps: faster, at some cost in fidelity."),
    "quantization.backend": ("Quantization", "Store weights in fewer bits: less memory; speed depends on kernels; "
                             "small quality cost. Applied at load time."),
    "quantization.components": ("Components", "Which parts of the pipeline to quantize."),
    "offload.mode": ("Offload", "Keep weights in CPU memory (or on disk) until needed: far less GPU memory, slower."),
    "offload.offload_type": ("Granularity", "block_level moves groups of blocks; leaf_level moves each layer "
                             "(least memory, most transfers)."),
    "offload.num_blocks_per_group": ("Blocks per group", "More blocks per transfer: fewer, bigger moves."),
    "offload.use_stream": ("Use CUDA streams", "Prefetch the next group while computing: hides transfer time."),
    "offload.record_stream": ("Record stream", "Lets memory be freed earlier with streams (needs streams)."),
    "offload.low_cpu_mem_usage": ("Low CPU memory", "Pin memory lazily: less host memory, slower transfers."),
    "offload.offload_to_disk": ("Offload to disk", "Groups wait on disk, not in RAM: least memory, slowest."),
    "vae.slicing": ("VAE slicing", "Decode a batch one image at a time: lower peak memory for batches."),
    "vae.tiling": ("VAE tiling", "Decode in tiles: lower peak memory at large sizes; may show faint seams."),
    "compile.mode": ("torch.compile", "Fuse the transformer's kernels: faster steady state after a one-off "
                     "compile. Regional compiles one block and reuses it (much shorter compile)."),
    "compile.inductor_mode": ("Inductor mode", "max-autotune searches kernels (long compile); reduce-overhead "
                              "uses CUDA graphs."),
    "compile.fullgraph": ("Full graph", "on = one graph, fail on graph breaks (fastest); off = allow breaks; auto = "
                          "on unless a cache or group offload needs breaks."),
    "compile.dynamic": ("Dynamic shapes", "auto lets torch decide; on avoids recompiles when sizes change."),
    "compile.channels_last": ("channels_last", "Convolution-friendly memory layout (VAE); transformers gain little."),
    "compile.recommended_dynamo_settings": ("Recommended dynamo settings", "Bigger recompile cache with "
                                            "offloading, dynamic output shapes with bitsandbytes."),
    "cache.first_block_cache.threshold": ("Threshold", "Skip the other blocks while the first block's output "
                                          "changes less than this. Higher = more skipped steps, lower fidelity."),
    "cache.mag_cache.threshold": ("Threshold", "Accumulated error allowed before recomputing. Higher = faster, "
                                  "lower fidelity."),
    "cache.mag_cache.max_skip_steps": ("Max skipped steps in a row", "Caps drift between full steps."),
    "cache.mag_cache.retention_ratio": ("Retention ratio", "Share of the first steps always computed in full."),
    "cache.mag_cache.mag_ratios": ("Magnitude ratios", "calibrate = measure this model's ratios in an untimed run; "
                                   "flux = FLUX.1's published ratios; custom = your list."),
    "cache.mag_cache.mag_ratios.custom": ("Custom ratios", "Comma-separated numbers, one per step."),
    "cache.taylorseer.cache_interval": ("Cache interval", "Compute fully every N steps, predict in between. "
                                        "Higher = faster, lower fidelity."),
    "cache.taylorseer.disable_cache_before_step": ("Full steps first", "Steps computed fully before caching starts."),
    "cache.taylorseer.disable_cache_after_step": ("Full steps from",
                                                  "Compute fully from this step on (empty = never)."),
    "cache.taylorseer.max_order": ("Taylor order", "Higher order predicts better, costs memory."),
    "cache.taylorseer.taylor_factors_dtype": ("Factor precision", "dtype of the stored Taylor factors."),
    "cache.taylorseer.use_lite_mode": ("Lite mode", "Cache fewer layers: less memory, less speed-up."),
    "quantization.bitsandbytes_4bit.quant_type": ("4-bit type", "nf4 suits normally distributed weights (usual "
                                                  "choice); fp4 is the plain 4-bit float."),
    "quantization.bitsandbytes_4bit.compute_dtype": ("Compute dtype", "Weights are dequantized to this for matmuls."),
    "quantization.bitsandbytes_4bit.double_quant": ("Double quantization", "Quantize the scales too: ~0.4 bit "
                                                    "per weight less, slightly slower."),
    "quantization.torchao.quant_type": ("torchao type", "int8 weight-only halves bf16 weights; dynamic also "
                                        "quantizes activations (faster on supported GPUs)."),
    "quantization.quanto.weights": ("Weights", "Fewer bits = less memory, more quality loss."),
}
for _kind in ("pyramid_attention_broadcast", "faster_cache"):
    for _name, _text in (
        ("spatial_attention_block_skip_range", "Recompute spatial attention every N calls (0 = never skip)."),
        ("temporal_attention_block_skip_range", "Same for temporal attention (video models; 0 = off)."),
        ("cross_attention_block_skip_range", "Same for cross attention (0 = off)."),
        ("spatial_attention_timestep_skip_range", "Timesteps (0-1000 scale) where spatial skipping applies."),
        ("temporal_attention_timestep_skip_range", "Timesteps where temporal skipping applies."),
        ("cross_attention_timestep_skip_range", "Timesteps where cross-attention skipping applies."),
    ):
        _label = _name.replace("_attention", "").replace("_", " ").capitalize()
        HELP.setdefault(f"cache.{_kind}.{_name}", (_label, _text))
HELP.update({
    "cache.faster_cache.low_frequency_weight_update_timestep_range": ("Low-frequency update range", "Timesteps "
                                                                      "where the low-frequency weight is updated."),
    "cache.faster_cache.high_frequency_weight_update_timestep_range": ("High-frequency update range", "Timesteps "
                                                                       "where the high-frequency weight is updated."),
    "cache.faster_cache.alpha_low_frequency": ("Low-frequency weight", "How much reused low frequencies count."),
    "cache.faster_cache.alpha_high_frequency": ("High-frequency weight", "How much reused high frequencies count."),
    "cache.faster_cache.unconditional_batch_skip_range": ("Unconditional skip range", "Approximate the "
                                                          "unconditional branch every N steps."),
    "cache.faster_cache.unconditional_batch_timestep_skip_range": ("Unconditional skip timesteps", "Timesteps "
                                                                   "where it applies."),
    "cache.faster_cache.attention_weight": ("Attention weight", "Blend of reused and fresh attention."),
    "cache.faster_cache.tensor_format": ("Tensor format", "Layout of the model's hidden states (BCHW for images)."),
    "cache.faster_cache.is_guidance_distilled": ("Guidance-distilled model", "auto decides from the model "
                                                 "(FLUX.1-dev style guidance embeddings skip the unconditional part)."),
})

# Advanced fields (shown in an inner accordion of their technique).
ADVANCED = {
    "cache.faster_cache": ("low_frequency_weight_update_timestep_range", "high_frequency_weight_update_timestep_range",
                           "alpha_low_frequency", "alpha_high_frequency", "unconditional_batch_timestep_skip_range",
                           "attention_weight", "tensor_format", "temporal_attention_block_skip_range",
                           "temporal_attention_timestep_skip_range"),
    "cache.pyramid_attention_broadcast": ("temporal_attention_block_skip_range", "cross_attention_block_skip_range",
                                          "temporal_attention_timestep_skip_range",
                                          "cross_attention_timestep_skip_range"),
}


def _elem_id(key: str) -> str:
    return "ctl-" + re.sub(r"[^a-zA-Z0-9]+", "-", key).strip("-")


def _label_info(key: str) -> tuple[str, str | None]:
    label, info = HELP.get(key, (key.rsplit(".", 1)[-1].replace("_", " ").capitalize(), None))
    return label, info


# Run settings: `None` means "the model's default", but the controls always show the value (the model's default
# is filled in when the model changes), so only the max_sequence_length may be left empty.
RUN_KINDS = {"steps": "int", "width": "int", "height": "int", "max_sequence_length": "int_or_blank"}


def make_field_controls(prefix: str, cls: type, name: str, controls: dict[str, Any]) -> None:
    """Create the control(s) of one config field (ranges from the model's `Field(ge=..., le=...)`)."""
    key = f"{prefix}.{name}"
    kind = RUN_KINDS.get(name, field_kind(cls, name)) if prefix == "run" else field_kind(cls, name)
    label, info = _label_info(key)
    value = DEFAULT_VALUES.get(key)
    common = dict(elem_id=_elem_id(key))
    if key == "offload.use_stream":
        label = _mark(label, _reason("offload", "group:use_stream"))
    if kind == "bool":
        controls[key] = gr.Checkbox(value=value, label=label, info=info, **common)
    elif kind == "tristate":
        controls[key] = gr.Radio(["auto", "on", "off"], value=value, label=label, info=info, **common)
    elif kind == "choice":
        choices = _choice_labels(key, field_choices(cls, name))
        if len(choices) <= 3 and all(not isinstance(c, tuple) for c in choices):
            controls[key] = gr.Radio(choices, value=value, label=label, info=info, **common)
        else:
            controls[key] = gr.Dropdown(choices, value=value, label=label, info=info, **common)
    elif kind in ("int", "float", "int_or_off"):
        low, high, exclusive = field_bounds(cls, name)
        short = f"{prefix}.{name}".startswith("run.") and name in RUN_LIMITS
        if short:
            high = min(high, RUN_LIMITS[name])
        step = 1 if kind != "float" else (0.01 if (high or 1) <= 2 else 0.05 if high <= 10 else 0.1)
        if kind == "int_or_off":
            low = 0
        if exclusive:
            low = low + step
        if name == "seed" or (high is not None and high - low > 100 and kind == "int" and not short):
            # A slider over hundreds of values is hard to set exactly: a number box instead.
            controls[key] = gr.Number(value=value, label=label, info=info, precision=0, minimum=low, maximum=high,
                                      **common)
        else:
            step = 16 if name in ("width", "height") else step
            controls[key] = gr.Slider(low, high, value=value, step=step, label=label, info=info,
                                      precision=None if kind == "float" else 0, **common)
    elif kind == "text":
        multiline = name == "prompt"
        controls[key] = gr.Textbox(value=value, label=label, info=info, lines=2 if multiline else 1,
                                   max_lines=4, **common)
    elif kind == "int_or_blank":
        low, high, _ = field_bounds(cls, name)
        controls[key] = gr.Number(value=value, label=label, info=info, precision=0, minimum=low, maximum=high,
                                  placeholder="default" if prefix == "run" else "never", **common)
    elif kind == "range":
        with gr.Row(equal_height=True):
            low_key, high_key = f"{key}.from", f"{key}.to"
            controls[low_key] = gr.Number(DEFAULT_VALUES[low_key], label=f"{label}: from", info=info, precision=0,
                                          minimum=-1, maximum=1000, elem_id=_elem_id(low_key), min_width=120)
            controls[high_key] = gr.Number(DEFAULT_VALUES[high_key], label="to", precision=0, minimum=-1,
                                           maximum=1000, elem_id=_elem_id(high_key), min_width=120)
    elif kind == "mag_ratios":
        controls[key] = gr.Radio(["calibrate", "flux", "custom"], value=value, label=label, info=info, **common)
        custom_key = f"{key}.custom"
        custom_label, custom_info = _label_info(custom_key)
        controls[custom_key] = gr.Textbox(DEFAULT_VALUES[custom_key], label=custom_label, info=custom_info,
                                          placeholder="1.0, 0.98, 0.97, ...", elem_id=_elem_id(custom_key),
                                          visible=value == "custom")
    else:
        raise TypeError(f"no control for {key} ({kind})")


def _picker(key: str, tags: list[str]) -> Any:
    """The dropdown that picks a union's variant (cache method, quantization backend)."""
    label, info = _label_info(key)
    return gr.Dropdown(_choice_labels(key, tags), value=DEFAULT_VALUES[key], label=label, info=info,
                       elem_id=_elem_id(key))


def control_bounds(values: dict[str, Any]) -> None:
    """Refuse values the run controls cannot show (a link asking for more than this server's sliders allow)."""
    for name, high in RUN_LIMITS.items():
        value = values.get(f"run.{name}")
        if isinstance(value, (int, float)) and value > high:
            raise ConfigError(f"run.{name}: {value} is more than this server allows (at most {high})")


# ------------------------------------------------------------------------------------------- messages


def _escape(message: str) -> str:
    """Gradio shows messages as HTML; engine messages contain '<=' and quotes."""
    return html.escape(message, quote=False)


def warn(message: str) -> None:
    gr.Warning(_escape(message), duration=12)


def user_error(error: BaseException, *, html_message: bool = True) -> gr.Error:
    """The engine's complete message as a dialog (escaped for the page; plain for API clients)."""
    return gr.Error(_escape(str(error)) if html_message else str(error), duration=None)


# -------------------------------------------------------------------------------- settings summary


def describe_optim(optim: OptimConfig) -> list[str]:
    """What the optimized side changes, one short phrase per technique."""
    parts = []
    for section, settings in minimal_dict(optim).items():
        details = ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in settings.items())
        parts.append(f"**{section}** {details}")
    return parts


def settings_summary(values: dict[str, Any]) -> str:
    """Markdown: what the optimized side will change, and any problem the engine finds before loading."""
    try:
        preset, run = settings_from_values(values)
    except OptimError as error:
        return f"<div class='lab-check bad'><b>Cannot run:</b> {_escape(str(error))}</div>"
    parts = describe_optim(preset.optim)
    lines = [
        "<div class='lab-check'>",
        "<b>Optimized side:</b> " + (" · ".join(_md_inline(p) for p in parts) if parts else
                                        "nothing changed (a harness check: images must be bit-identical)"),
    ]
    problem = None
    try:
        check_run(run, LIMITS)
        ref = resolve_model(run.model, allow_local=LIMITS.allow_local_models, local_roots=LIMITS.local_model_roots)
        if ref.kind != "hub":  # Hub models would need a download to check: that happens at run time
            _, resolved = prepare(run, preset.optim, allow_local=LIMITS.allow_local_models,
                                         local_roots=LIMITS.local_model_roots)
            lines.append(
                f"<br>Each side: {resolved.warmup_runs} warm-up + {resolved.timed_runs} timed runs of "
                f"{resolved.steps} steps at {resolved.width}×{resolved.height}, {resolved.dtype} on {resolved.device}."
            )
    except OptimError as error:
        problem = str(error)
    except Exception as error:  # noqa: BLE001 - a live check must never break the page
        log.exception("settings check")
        problem = f"the settings could not be checked ({type(error).__name__}: {error})"
    if problem:
        lines.append(f"<br><span class='bad'><b>Will be refused:</b> {_escape(problem)}</span>")
    lines.append("</div>")
    return "\n".join(lines)


def _md_inline(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", _escape(text))


def matching_shipped(values: dict[str, Any]) -> str | None:
    """The shipped preset whose optimizations the controls show, if any."""
    try:
        optim = optim_from_values(values)
    except OptimError:
        return None
    return next((name for name, preset in SHIPPED.items() if preset.optim == optim), None)


def on_edit(values: dict[str, Any]) -> tuple[str, str]:
    """A user edited a control: re-check the settings; the preset picker shows a shipped preset only while the
    optimizations still equal it."""
    shipped = matching_shipped(values)
    return settings_summary(values), CUSTOM_PRESET if shipped is None else shipped


def model_note(model: str) -> str:
    """A line under the model picker: what this model is and what to expect."""
    model = (model or "").strip()
    try:
        ref = resolve_model(model or EMBEDDED_MODEL, allow_local=LIMITS.allow_local_models,
                            local_roots=LIMITS.local_model_roots)
    except OptimError as error:
        return f"<span class='bad'>{_escape(str(error))}</span>"
    if ref.kind == "embedded":
        return ("A tiny FLUX-architecture model built into the app (a CPU draws an image in well under a second). "
                "It draws “a COLOUR SHAPE on a COLOUR background”: red, green, blue, yellow, white, black; circle, "
                "square, triangle; optionally small/large and “at the top left” (or top right, bottom left ...).")
    if ref.kind == "synthetic":
        spec = SYNTHETIC_MODELS[ref.location]
        gpu = "" if CUDA else " <b>This machine has no GPU: it will be refused here.</b>"
        return (f"<b class='bad'>Synthetic model, only meaningful on a GPU</b>: {_escape(spec.description)}. "
                f"No download; images are noise, but latency and memory are those of the real model.{gpu}")
    if ref.kind == "local":
        return f"Local diffusers folder <code>{_escape(ref.location)}</code>."
    known = "recommended settings filled in" if ref.location in POPULAR_MODELS else "generic defaults filled in"
    return (f"Hugging Face Hub model ({known}). Downloaded on first use: several GB for large models; gated ones "
            "need HF_TOKEN and an accepted licence.")


# ------------------------------------------------------------------------------------ preset handlers


def fill(values: dict[str, Any], *, shipped: Any = None) -> list[Any]:
    """Outputs of every handler that sets all controls: the controls, the shipped-preset picker, the summary."""
    return [values[key] for key in CONTROL_KEYS] + [CUSTOM_PRESET if shipped is None else shipped,
                                                    settings_summary(values)]


def no_change() -> list[Any]:
    return [gr.skip() for _ in CONTROL_KEYS] + [gr.skip(), gr.skip()]


def current_run_values(values: dict[str, Any]) -> RunSpec:
    """The run settings shown now (the defaults if they do not validate), kept when a preset is loaded."""
    try:
        return run_from_values(values)
    except OptimError:
        return DEFAULT_RUN


def load_shipped(name: str, values: dict[str, Any]) -> list[Any]:
    """Pick a shipped preset: every optimization control takes its values; the run settings stay."""
    if name == CUSTOM_PRESET:
        return no_change()  # "custom settings" is what the controls already show
    if name not in SHIPPED:
        warn(f"unknown preset {name!r}")
        return no_change()
    run = current_run_values(values)
    return fill(values_from_settings(SHIPPED[name], run), shipped=name)


def load_model_defaults(model: str, values: dict[str, Any]) -> list[Any]:
    """The model changed: fill in its recommended prompt, steps, size, guidance (other controls stay)."""
    model = (model or "").strip() or EMBEDDED_MODEL
    try:
        defaults = defaults_for(model)
    except OptimError as error:
        warn(str(error))
        return no_change()
    out = dict(values)
    out.update({
        "run.model": model,
        "run.prompt": defaults.prompt,
        "run.negative_prompt": defaults.negative_prompt or "",
        "run.steps": min(defaults.steps, LIMITS.max_steps),
        "run.width": min(defaults.width, SIDE_MAX),
        "run.height": min(defaults.height, SIDE_MAX),
        "run.guidance_scale": defaults.guidance_scale,
        "run.max_sequence_length": defaults.max_sequence_length,
    })
    return fill(out, shipped=gr.skip())


def preset_from_upload(path: str | None) -> Preset:
    """Read an uploaded preset file (size-limited, strict). Raises ConfigError saying what is wrong."""
    if not path:
        raise ConfigError("no file was uploaded")
    size = os.path.getsize(path)
    if size > LIMITS.max_upload_bytes:
        raise ConfigError(
            f"preset upload: {size} bytes is too large for a preset (at most {LIMITS.max_upload_bytes}); is it a "
            "preset JSON file?"
        )
    return preset_from_json(Path(path).read_bytes(), where=f"preset {Path(path).name}")


def import_preset(path: str | None, values: dict[str, Any]) -> list[Any]:
    """Upload a preset JSON: a valid one fills the optimization controls; a bad one warns and changes nothing."""
    try:
        preset = preset_from_upload(path)
    except OptimError as error:
        warn(f"The preset file was not loaded: {error}")
        return no_change() + [None]
    gr.Info(_escape(f"Loaded preset '{preset.name}'."))
    shipped = preset.name if preset.name in SHIPPED and SHIPPED[preset.name] == preset else None
    return fill(values_from_settings(preset, current_run_values(values)), shipped=shipped) + [None]


def export_preset(values: dict[str, Any]) -> tuple[Any, Any]:
    """The current settings as a preset JSON file to download (and its text)."""
    try:
        preset, _ = settings_from_values(values)
    except OptimError as error:
        raise user_error(error) from None
    text = preset_to_json(preset)
    folder = Path(tempfile.mkdtemp(dir=REPORTS_DIR, prefix="preset-"))
    path = folder / f"{preset.name}.json"
    path.write_text(text)
    return gr.update(value=str(path), visible=True), gr.update(value=text, visible=True)


def share_token(values: dict[str, Any]) -> str:
    """The share token of the current settings (preset and run settings, in the URL itself)."""
    preset, run = settings_from_values(values)
    token = encode_share(preset, run)
    if len(token) > LIMITS.max_link_chars:
        raise ConfigError(f"these settings make a link of {len(token)} characters; this server reads at most "
                          f"{LIMITS.max_link_chars} (shorten the description)")
    return token


def share_link(values: dict[str, Any]) -> str:
    """'?s=TOKEN' for the current settings; the page prefixes its own address (see the share button's js)."""
    try:
        return f"?{QUERY_PARAMETER}={share_token(values)}"
    except OptimError as error:
        raise user_error(error) from None


def restore_from_link(token: str | None) -> tuple[dict[str, Any], str | None]:
    """The control values a share token carries; a bad link warns and gives the defaults (never raises)."""
    if token is None or token == "":
        return dict(DEFAULT_VALUES), None
    try:
        preset, run = decode_share(token, max_chars=LIMITS.max_link_chars)
        check_run(run, LIMITS)
        values = values_from_settings(preset, run)
        control_bounds(values)
        settings_from_values(values)  # everything the link restores must also be runnable as shown
    except OptimError as error:
        warn(f"The share link could not be used, so the defaults are shown: {error}")
        return dict(DEFAULT_VALUES), None
    except Exception as error:  # noqa: BLE001 - a hostile link must never break the page
        log.exception("share link")
        warn(f"The share link could not be used, so the defaults are shown ({type(error).__name__}).")
        return dict(DEFAULT_VALUES), None
    shipped = preset.name if preset.name in SHIPPED and SHIPPED[preset.name] == preset else None
    return values, shipped


def on_page_load(saved: Any, request: gr.Request | None) -> list[Any]:
    """Page opened: restore a share link (?s=...) if there is one, and list the presets saved in this browser."""
    params = dict(getattr(request, "query_params", None) or {})
    values, shipped = restore_from_link(params.get(QUERY_PARAMETER))
    if shipped is None and values == DEFAULT_VALUES:  # no link, or a bad one: the defaults are the baseline preset
        shipped = DEFAULT_PRESET.name
    return fill(values, shipped=shipped) + [gr.update(choices=saved_names(saved), value=None)]


# ----------------------------------------------------------------------------- presets in the browser


def saved_names(saved: Any) -> list[str]:
    return sorted(saved) if isinstance(saved, dict) else []


def save_to_browser(values: dict[str, Any], saved: Any) -> tuple[dict[str, str], Any]:
    """Keep the current settings under their preset name in this browser (localStorage)."""
    try:
        preset, _ = settings_from_values(values)
    except OptimError as error:
        raise user_error(error) from None
    saved = dict(saved) if isinstance(saved, dict) else {}
    if preset.name not in saved and len(saved) >= 50:
        raise gr.Error("50 presets are saved in this browser already: delete one first")
    saved[preset.name] = preset_to_json(preset)
    gr.Info(_escape(f"Saved '{preset.name}' in this browser."))
    return saved, gr.update(choices=saved_names(saved), value=preset.name)


def load_from_browser(name: str | None, saved: Any, values: dict[str, Any]) -> list[Any]:
    if not name or not isinstance(saved, dict) or name not in saved:
        warn("Pick a saved preset first.")
        return no_change()
    try:
        preset = preset_from_json(saved[name], where=f"saved preset {name!r}")
    except OptimError as error:
        warn(f"The saved preset could not be loaded (edited by hand?): {error}")
        return no_change()
    shipped = preset.name if preset.name in SHIPPED and SHIPPED[preset.name] == preset else None
    return fill(values_from_settings(preset, current_run_values(values)), shipped=shipped)


def delete_from_browser(name: str | None, saved: Any) -> tuple[dict[str, str], Any]:
    saved = dict(saved) if isinstance(saved, dict) else {}
    if name in saved:
        del saved[name]
        gr.Info(_escape(f"Deleted '{name}' from this browser."))
    return saved, gr.update(choices=saved_names(saved), value=None)


# --------------------------------------------------------------------------------------- running

_ACTIVE: dict[str, threading.Event] = {}  # session -> "stop" flag of its running comparison
_ACTIVE_LOCK = threading.Lock()


def _session(request: Any) -> str:
    return getattr(request, "session_hash", None) or "local"


def cancel_run(request: gr.Request | None = None) -> None:
    """Cancel this session's comparison: its worker process is killed, which frees its memory."""
    with _ACTIVE_LOCK:
        flag = _ACTIVE.get(_session(request))
    if flag is not None:
        flag.set()
        gr.Info("Cancelled: the comparison's worker process was stopped and its memory freed.")


PHASE_NAMES = {"baseline": "Baseline", "optimized": "Optimized"}


def progress_reporter(progress: Any) -> Callable[[str, int, int], None]:
    """Engine phases ('baseline: timed run 1/3', done, total) -> the progress bar."""

    def report(phase: str, done: int, total: int) -> None:
        side, _, what = phase.partition(": ")
        label = f"{PHASE_NAMES.get(side, side)} · {what or side}"
        if what == "loading":
            progress(None, desc=f"{label} model…")
        else:
            progress((done, total), desc=label, unit="steps")

    return report


def estimate_gpu_seconds(run: RunSpec, preset: Preset) -> int:
    """A ZeroGPU duration that fits the request: loading both sides plus every pipeline call, with margin."""
    try:
        defaults = defaults_for(run.model)
    except OptimError:
        defaults = ModelDefaults()
    steps = run.steps or defaults.steps
    megapixels = (run.width or defaults.width) * (run.height or defaults.height) / 1024**2
    calls_per_side = run.warmup_runs + run.timed_runs + (1 if isinstance(preset.optim.cache, C.MagCache) else 0)
    seconds_per_step = 0.4 * max(megapixels, 0.25)  # FLUX.1-dev bf16 on an H200: ~0.3 s per 1024² step
    estimate = 30 + 2 * 25 + 2 * calls_per_side * steps * seconds_per_step
    ceiling = int(os.environ.get("OPTIM_ZEROGPU_MAX_DURATION", "300"))
    return int(min(ceiling, max(60, estimate * 1.3)))


def _compare_inline(run: RunSpec, preset: Preset) -> Comparison:
    return compare(run, preset, isolation="inline", baseline_cache=BASELINES,
                   allow_local=LIMITS.allow_local_models, local_roots=LIMITS.local_model_roots)


if ZERO_GPU:  # pragma: no cover - only on a ZeroGPU Space
    _compare_on_zero_gpu = spaces.GPU(duration=estimate_gpu_seconds)(_compare_inline)


def execute(run: RunSpec, preset: Preset, *, progress: Any = None,
            should_stop: Callable[[], bool] | None = None) -> Comparison:
    """Check the request against this server's limits, then compare (on ZeroGPU inside @spaces.GPU)."""
    check_run(run, LIMITS)
    ref = resolve_model(run.model, allow_local=LIMITS.allow_local_models, local_roots=LIMITS.local_model_roots)
    report = progress_reporter(progress) if progress is not None else None
    if ZERO_GPU:  # pragma: no cover
        if ref.kind == "hub":  # download outside the GPU allowance
            if progress is not None:
                progress(None, desc="Downloading the model (outside the GPU time)…")
            download_model(ref)
        if progress is not None:
            progress(None, desc=f"Running on ZeroGPU (up to {estimate_gpu_seconds(run, preset)} s)…")
        comparison = _compare_on_zero_gpu(run, preset)
        if not comparison.baseline_reused:  # the GPU call ran in a forked process: keep its baseline here
            BASELINES.put(BaselineCache.key(ref, comparison.run), comparison.baseline)
        return comparison
    return compare(run, preset, isolation=ISOLATION, progress=report, should_stop=should_stop,
                   baseline_cache=BASELINES, allow_local=LIMITS.allow_local_models,
                   local_roots=LIMITS.local_model_roots)


def json_safe(value: Any) -> Any:
    """The report as strict JSON values (NaN and infinities become null, numpy scalars plain numbers)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_report_files(comparison: Comparison) -> list[str]:
    """report.json, report.md, the three PNGs (lossless) and the charts, in a fresh folder; newest 50 kept."""
    folder = Path(tempfile.mkdtemp(dir=REPORTS_DIR, prefix="run-"))
    try:
        write_report(comparison, folder)
    except Exception:  # noqa: BLE001 - the files are a convenience; the results still show
        log.exception("writing the report files")
        (folder / "report.json").write_text(json.dumps(json_safe(comparison.to_report()), indent=2) + "\n")
    runs = sorted(REPORTS_DIR.glob("run-*"), key=lambda p: p.stat().st_mtime)
    for old in runs[:-50]:
        shutil.rmtree(old, ignore_errors=True)
    names = ["report.json", "report.md", "baseline.png", "optimized.png", "diff.png"]
    return [str(folder / n) for n in names if (folder / n).is_file()]


def history_entry(comparison: Comparison, files: list[str], number: int) -> dict[str, Any]:
    return {
        "number": number,
        "time": time.strftime("%H:%M:%S"),
        "report": json_safe(comparison.to_report()),
        "baseline": comparison.baseline.image,
        "optimized": comparison.optimized.image,
        "heatmap": comparison.heatmap,
        "files": files,
    }


HISTORY_HEADERS = ["#", "preset", "run", "speedup", "peak memory", "PSNR", "work done"]


def history_rows(history: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for entry in reversed(history):
        r = entry["report"]
        run, quality = r["run"], r["quality"]
        rows.append([
            entry["number"],
            r["preset"]["name"],
            f"{run['model']} · {run['steps']} steps · {run['width']}×{run['height']} · seed {run['seed']} "
            f"· {entry['time']}",
            f"{r['speedup']:.2f}×",
            f"{fmt_mb(r['baseline']['peak_memory_mb'])} → {fmt_mb(r['optimized']['peak_memory_mb'])}",
            "identical" if quality["psnr_db"] is None else f"{quality['psnr_db']:.1f} dB",
            f"{r['optimized']['work_fraction']:.0%}",
        ])
    return rows


def metrics_rows(report: dict[str, Any]) -> list[list[str]]:
    """The engine's summary rows, with the memory saving and the work skipped spelled out."""
    rows = [list(row) for row in summary_rows(report)]
    saving = report["memory_saving_mb"]
    base_peak = report["baseline"]["peak_memory_mb"] or 0.0
    share = f" ({-saving / base_peak:+.0%})".replace("-", "−") if base_peak > 0 else ""
    text = f"saves {fmt_mb(saving)}{share}" if saving >= 0 else f"uses {fmt_mb(-saving)} more{share}"
    index = next((i for i, r in enumerate(rows) if r[0] == "peak memory"), len(rows) - 1) + 1
    rows.insert(index, ["peak memory saving", "", text])
    work = report["optimized"]["work_fraction"]
    index = next((i for i, r in enumerate(rows) if r[0] == "transformer work computed"), len(rows) - 1) + 1
    rows.insert(index, ["transformer work skipped", "0%", f"{max(0.0, 1 - work):.0%}"])
    return rows


def _tile(title: str, value: str, sub: str, tone: str = "") -> str:
    return (f"<div class='lab-stat {tone}'><div class='lab-stat-title'>{title}</div>"
            f"<div class='lab-stat-value'>{value}</div><div class='lab-stat-sub'>{sub}</div></div>")


def headline_html(report: dict[str, Any]) -> str:
    """The four numbers people look at first, and what was compared."""
    b, o, q = report["baseline"], report["optimized"], report["quality"]
    speedup = report["speedup"]
    tone = "good" if speedup >= 1.03 else "bad" if speedup <= 0.97 else ""
    latency = f"{fmt_s(b['latency_s']['median'])} → {fmt_s(o['latency_s']['median'])}"
    # Overlapping min-max ranges of the timed runs: the difference is within this machine's timing noise.
    overlap = (o["latency_s"]["max"] >= b["latency_s"]["min"] and b["latency_s"]["max"] >= o["latency_s"]["min"]
               and len(b["latency_s"]["runs"]) + len(o["latency_s"]["runs"]) > 2)
    if overlap:
        tone, latency = "", latency + " · within noise"
    saving = report["memory_saving_mb"]
    base_peak = b["peak_memory_mb"] or 0.0
    mem_share = (f"{abs(saving) / base_peak:.0%} {'less' if saving >= 0 else 'more'} than {fmt_mb(base_peak)}"
                 if base_peak > 0 else "baseline peak 0 MB")
    mem_tone = "good" if saving > 0.02 * base_peak and saving > 1 else "bad" if saving < -0.02 * base_peak - 1 else ""
    psnr = q["psnr_db"]
    quality_value = "identical" if psnr is None else f"{psnr:.1f} dB"
    quality_tone = "good" if psnr is None or psnr >= 40 else "bad" if psnr < 25 else ""
    skipped = max(0.0, 1 - o["work_fraction"])
    run, env = report["run"], report["environment"]
    badges = [
        f"preset <b>{_escape(report['preset']['name'])}</b>",
        f"{_escape(run['model'])}",
        f"{run['steps']} steps · {run['width']}×{run['height']} · seed {run['seed']}",
        f"{_escape(str(env.get('device_name') or env['device']))}",
    ]
    if b.get("reused"):
        badges.append("<b>baseline reused</b>: measured earlier on this server with the same settings")
    return (
        "<div class='lab-stats'>"
        + _tile("Speedup", f"{speedup:.2f}×", latency, tone)
        + _tile("Peak memory", ("±" if abs(saving) < 0.05 else "−" if saving > 0 else "+") + fmt_mb(abs(saving)),
                mem_share, mem_tone)
        + _tile("Quality (PSNR)", quality_value, f"SSIM {q['ssim']:.4f} · max diff {q['max_abs_diff']}/255",
                quality_tone)
        + _tile("Work skipped", f"{skipped:.0%}", "of the transformer's work", "good" if skipped > 0.01 else "")
        + "</div><div class='lab-badges'>" + "".join(f"<span>{x}</span>" for x in badges) + "</div>"
    )


def details_markdown(report: dict[str, Any]) -> str:
    run, env = report["run"], report["environment"]
    isolation = "each side in its own process" if env.get("isolation") == "process" else "in this process"
    lines = [
        "### Run",
        f"Model `{run['model']}` · “{run['prompt']}” · seed {run['seed']} · {run['steps']} steps · "
        f"{run['width']}×{run['height']} · guidance {run['guidance_scale']} · {run['dtype']} on {env['device']} "
        f"({env.get('device_name')}) · {run['warmup_runs']} warm-up + {run['timed_runs']} timed runs per side, "
        f"{isolation} · torch {env.get('torch')}, diffusers {env.get('diffusers')}",
        "",
        "### Applied to the optimized side, in order",
        *([f"1. {step}" for step in report["optimized"]["applied"]] or ["Nothing: both sides ran the same pipeline."]),
    ]
    warnings = list(report["optimized"]["warnings"])
    if report["baseline"].get("reused"):
        lines += ["", "The baseline was **reused**: this server measured it earlier with the same model and run "
                  "settings (its numbers are from that run)."]
    if warnings:
        lines += ["", "### Warnings", *[f"- {w}" for w in warnings]]
    return "\n".join(lines)


def render_entry(entry: dict[str, Any]) -> list[Any]:
    """Every result component for one comparison (a new one or one picked from the history)."""
    report = entry["report"]
    scale = report["quality"]["heatmap_scale"]
    identical = report["quality"]["max_abs_diff"] == 0
    caption = ("**Bit-identical**: no pixel differs." if identical else
               f"Largest per-pixel channel difference, black = identical, **white = {scale} level"
               f"{'s' if scale != 1 else ''} of 255**. Mean difference {report['quality']['mean_abs_diff']:.3f}.")
    return [
        headline_html(report),
        (entry["baseline"], entry["optimized"]),
        gr.update(value=entry["heatmap"], label="Difference"),
        caption,
        metrics_rows(report),
        charts.latency_chart(report),
        charts.memory_chart(report),
        charts.per_step_chart(report),
        charts.work_chart(report),
        details_markdown(report),
        report,
        entry["files"],
    ]


RESULT_COUNT = 12


def run_comparison(values: dict[str, Any], history: list[dict[str, Any]] | None, progress: Any = None,
                   request: Any = None) -> list[Any]:
    """The Run button: validate, compare both sides, show everything, add it to this session's history."""
    history = list(history or [])
    try:
        preset, run = settings_from_values(values)
    except OptimError as error:
        raise user_error(error) from None
    flag = threading.Event()
    session = _session(request)
    with _ACTIVE_LOCK:
        _ACTIVE[session] = flag
    try:
        if progress is not None:
            progress(0, desc="Checking the settings…")
        comparison = execute(run, preset, progress=progress, should_stop=flag.is_set)
        if progress is not None:
            progress(None, desc="Metrics · images, tables and charts…")
        files = save_report_files(comparison)
    except Cancelled:
        gr.Info("The comparison was cancelled.")
        return [gr.skip()] * (RESULT_COUNT + 2)
    except OptimError as error:
        raise user_error(error) from None
    except gr.Error:
        raise
    except Exception as error:  # noqa: BLE001 - a bug: say so plainly, keep serving
        log.exception("comparison failed")
        raise gr.Error(_escape(f"Unexpected error ({type(error).__name__}: {error}). The app is still running; "
                               "please report this with your settings (the share link)."), duration=None) from None
    finally:
        with _ACTIVE_LOCK:
            if _ACTIVE.get(session) is flag:
                del _ACTIVE[session]
    number = (history[-1]["number"] + 1) if history else 1
    entry = history_entry(comparison, files, number)
    history = (history + [entry])[-HISTORY_LENGTH:]
    return render_entry(entry) + [history, history_rows(history)]


def show_history_entry(history: list[dict[str, Any]] | None, evt: gr.SelectData) -> list[Any]:
    """Selecting a row of the history shows that comparison again."""
    history = history or []
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    ordered = list(reversed(history))  # the table shows the newest first
    if not isinstance(row, int) or not 0 <= row < len(ordered):
        return [gr.skip()] * RESULT_COUNT
    return render_entry(ordered[row])


# ------------------------------------------------------------------------------------------ the API


def preset_from_api(text: str) -> Preset:
    """A shipped preset's name, or a preset's JSON text (strict, size-limited)."""
    text = (text or "").strip()
    if not text:
        return DEFAULT_PRESET
    if not text.startswith("{"):
        if text in SHIPPED:
            return SHIPPED[text]
        raise ConfigError(f"preset: {text[:60]!r} is neither a preset's JSON text nor a shipped preset "
                          f"({', '.join(SHIPPED)})")
    if len(text.encode()) > LIMITS.max_upload_bytes:
        raise ConfigError(f"preset: {len(text.encode())} bytes is too large (at most {LIMITS.max_upload_bytes})")
    return preset_from_json(text)


def api_compare(preset: str, model: str, prompt: str, seed: float | None, steps: float | None, width: float | None,
                height: float | None, guidance_scale: float | None = None, timed_runs: float | None = 3,
                progress: Any = gr.Progress()) -> tuple[dict[str, Any], Any, Any, Any]:
    """Run the model as a baseline and with a preset's optimizations, and compare them.

    Parameters:
        preset: a shipped preset's name (e.g. "first-block-cache") or the JSON text of a preset file
        model: "embedded" (runs on CPU), a Hugging Face Hub model id, or "synthetic:flux-dev" (GPU only)
        prompt: the prompt for both sides; empty for the model's default
        seed: the seed for both sides
        steps: denoising steps; empty for the model's default
        width: image width (a multiple of 16); empty for the model's default
        height: image height (a multiple of 16); empty for the model's default
        guidance_scale: guidance strength; empty for the model's default
        timed_runs: timed runs per side (the median is reported, with min and max)
    Returns:
        report: the comparison, the same JSON as the command line's report.json (speedup, quality, both sides)
        baseline: the baseline image (lossless PNG)
        optimized: the optimized image (lossless PNG)
        diff: the difference heatmap (lossless PNG; report.quality.heatmap_scale levels = white)
    """
    try:
        chosen = preset_from_api(preset)
        run = parse_run(json_safe({
            "model": (model or "").strip() or EMBEDDED_MODEL,
            "prompt": prompt or None,
            "seed": _int(seed) if seed is not None else 0,
            "steps": _int(steps) if steps else None,
            "width": _int(width) if width else None,
            "height": _int(height) if height else None,
            "guidance_scale": _float(guidance_scale) if guidance_scale is not None else None,
            "timed_runs": _int(timed_runs) if timed_runs else 3,
        }), where="run")
        comparison = execute(run, chosen, progress=progress)
    except OptimError as error:
        raise user_error(error, html_message=False) from None
    except Exception as error:  # noqa: BLE001
        log.exception("api compare failed")
        raise gr.Error(f"Unexpected error ({type(error).__name__}: {error})") from None
    report = json_safe(comparison.to_report())
    return report, comparison.baseline.image, comparison.optimized.image, comparison.heatmap


# ------------------------------------------------------------------------------------------- layout

THEME = gr.themes.Soft(
    primary_hue="orange",
    secondary_hue="blue",
    neutral_hue="slate",
    font=["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

CSS = """
.gradio-container { max-width: 1500px !important; margin: 0 auto; }
#lab-header { padding: 4px 2px 0 2px; }
#lab-header h1 { font-size: 1.7rem; margin: 0 0 2px 0; letter-spacing: -0.01em; }
#lab-header .lab-tagline { font-size: 1rem; opacity: 0.85; margin: 0 0 6px 0; }
#lab-header .lab-device { display: flex; flex-wrap: wrap; gap: 6px; font-size: 0.82rem; }
#lab-header .lab-device span, .lab-badges span {
  border: 1px solid var(--border-color-primary); border-radius: 999px; padding: 2px 10px;
  background: var(--background-fill-secondary);
}
.lab-note { font-size: 0.85rem; opacity: 0.9; }
.lab-note.warn, .bad { color: #c2410c; }
.lab-check { font-size: 0.86rem; line-height: 1.45; padding: 8px 12px; border-radius: 8px;
  border: 1px dashed var(--border-color-primary); background: var(--background-fill-secondary); }
.lab-check.bad { border-color: #c2410c; }
.lab-stats { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 10px; }
@media (max-width: 800px) { .lab-stats { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
.lab-stat { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 10px 14px;
  background: var(--background-fill-secondary); }
.lab-stat-title { font-size: 0.78rem; text-transform: uppercase; letter-spacing: 0.05em; opacity: 0.7; }
.lab-stat-value { font-size: clamp(1.15rem, 1.9vw, 1.7rem); white-space: nowrap; font-weight: 700;
  line-height: 1.2; font-variant-numeric: tabular-nums; }
.lab-stat-sub { font-size: 0.8rem; opacity: 0.75; }
.lab-stat.good .lab-stat-value { color: #15803d; }
.lab-stat.bad .lab-stat-value { color: #c2410c; }
.lab-badges { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 10px; font-size: 0.8rem; }
.lab-empty { padding: 28px; text-align: center; opacity: 0.75; border: 1px dashed var(--border-color-primary);
  border-radius: 12px; }
#run-button { font-size: 1.05rem; }
/* Show the exact pixels: a one-level difference must not be blurred away by the browser's scaling. */
#image-slider img, #heatmap img { image-rendering: pixelated; }
#technique-tabs button[role="tab"] { padding-left: 10px; padding-right: 10px; }
.lab-section-title { margin: 4px 0 -4px 0; font-weight: 600; }
"""

EMPTY_RESULTS = (
    "<div class='lab-empty'>Pick a preset or set the optimizations, then <b>Run comparison</b>.<br>"
    "Both sides use the same prompt, seed and settings; the numbers and images appear here.</div>"
)


def header_html() -> str:
    d = DEVICE
    if d["cuda"]:
        where = [f"GPU: {_escape(str(d['name']))}", f"{d['memory_gb']} GB", f"CUDA {d['cuda_version']}",
                 f"compute {d['compute_capability']}"]
    else:
        where = [f"CPU: {_escape(str(d['name']))}", f"{d['cpu_count']} cores",
                 f"{d['ram_gb']} GB RAM" if d.get("ram_gb") else "RAM unknown", "no GPU"]
    where += [f"torch {d['torch']}", f"diffusers {d['diffusers']}", f"Python {d['python']}"]
    if ZERO_GPU:
        where.append("ZeroGPU: a GPU per comparison; just-in-time torch.compile is disabled there")
    if LIMITS.public:
        where.append(f"public server: ≤ {LIMITS.max_steps} steps, ≤ {LIMITS.max_pixels // 1024}K pixels, "
                     f"≤ {LIMITS.max_timed_runs} timed runs")
    return (
        "<div id='lab-header'><h1>Diffusion Optimization Lab</h1>"
        "<p class='lab-tagline'>Run a diffusers pipeline as a baseline and with the optimizations you choose "
        "(attention backend, step cache, quantization, offloading, torch.compile), side by side: what each setting "
        "buys in latency and memory, and what it costs in image quality.</p>"
        "<div class='lab-device'>" + "".join(f"<span>{w}</span>" for w in where) + "</div></div>"
    )


def capabilities_markdown() -> str:
    titles = {"attention_backends": "Attention backends", "cache_methods": "Cache methods",
              "quantization": "Quantization", "offload": "Offload", "compile": "torch.compile"}
    parts = []
    for section, title in titles.items():
        rows = ["| option | here | why not |", "|---|---|---|"]
        for option in CAPS[section]:
            mark = "✅" if option["available"] else "—"
            reason = (option.get("reason") or option.get("note") or "").replace("|", "/")
            rows.append(f"| `{option['name']}` | {mark} | {reason} |")
        parts.append(f"**{title}**\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def _model_choices() -> list[tuple[str, str]]:
    choices = [("embedded · tiny FLUX, runs on CPU", EMBEDDED_MODEL)]
    choices += [(name, name) for name in POPULAR_MODELS]
    choices += [(f"synthetic:{key} · random weights, GPU only", f"synthetic:{key}") for key in SYNTHETIC_MODELS]
    return choices


CUSTOM_PRESET = ""  # the picker's value while the optimizations match no shipped preset


def _shipped_choices() -> list[tuple[str, str]]:
    out = [("custom settings (edited, uploaded or from a link)", CUSTOM_PRESET)]
    for name, preset in SHIPPED.items():
        label = name if preset.hardware == "any" or CUDA else f"{name} (needs a CUDA GPU)"
        out.append((label, name))
    return out


def _visibility(options: list[str]) -> Callable[[str], list[Any]]:
    def show(chosen: str) -> list[Any]:
        return [gr.update(visible=chosen == option) for option in options]

    return show


def build_demo() -> gr.Blocks:
    controls: dict[str, Any] = {}
    with gr.Blocks(title="Diffusion Optimization Lab", fill_width=True) as demo:
        gr.HTML(header_html())
        with gr.Accordion("What this machine can run (and why not)", open=False):
            gr.Markdown(capabilities_markdown())

        with gr.Row(equal_height=False):
            # ------------------------------------------------------------------ settings column
            with gr.Column(scale=1, min_width=440):
                shipped = gr.Dropdown(_shipped_choices(), value=DEFAULT_PRESET.name, label="Preset",
                                      info="A shipped preset fills every optimization control (the model and prompt "
                                           "stay); then adjust anything.", elem_id="preset-picker")
                with gr.Tabs(elem_id="technique-tabs"):
                    with gr.Tab("Model", id="tab-run"):
                        controls["run.model"] = gr.Dropdown(
                            _model_choices(), value=DEFAULT_VALUES["run.model"], allow_custom_value=True,
                            label=HELP["run.model"][0], info=HELP["run.model"][1], elem_id=_elem_id("run.model"))
                        model_info = gr.HTML(model_note(DEFAULT_VALUES["run.model"]), elem_classes="lab-note")
                        make_field_controls("run", RunSpec, "prompt", controls)
                        gr.Examples(EXAMPLE_PROMPTS, inputs=[controls["run.prompt"]],
                                    label="Prompts the embedded model knows")
                        with gr.Row():
                            make_field_controls("run", RunSpec, "seed", controls)
                            make_field_controls("run", RunSpec, "steps", controls)
                        with gr.Row():
                            make_field_controls("run", RunSpec, "width", controls)
                            make_field_controls("run", RunSpec, "height", controls)
                        make_field_controls("run", RunSpec, "guidance_scale", controls)
                        with gr.Accordion("More run settings", open=False):
                            make_field_controls("run", RunSpec, "negative_prompt", controls)
                            with gr.Row():
                                make_field_controls("run", RunSpec, "warmup_runs", controls)
                                make_field_controls("run", RunSpec, "timed_runs", controls)
                            with gr.Row():
                                make_field_controls("run", RunSpec, "dtype", controls)
                                make_field_controls("run", RunSpec, "device", controls)
                            make_field_controls("run", RunSpec, "max_sequence_length", controls)

                    with gr.Tab("Attention", id="tab-attention"):
                        make_field_controls("attention", C.AttentionConfig, "backend", controls)
                        make_field_controls("attention", C.AttentionConfig, "checks", controls)

                    with gr.Tab("Cache", id="tab-cache"):
                        controls["cache.method"] = _picker("cache.method", list(CACHE_VARIANTS))
                        cache_groups = []
                        for method, cls in CACHE_VARIANTS.items():
                            with gr.Group(visible=method == DEFAULT_VALUES["cache.method"]) as group:
                                if method == "none":
                                    gr.Markdown("No cache: every step computes every block.", elem_classes="lab-note")
                                advanced = ADVANCED.get(f"cache.{method}", ())
                                for name in cls.model_fields:
                                    if name != "method" and name not in advanced:
                                        make_field_controls(f"cache.{method}", cls, name, controls)
                                if advanced:
                                    with gr.Accordion("Advanced", open=False):
                                        for name in advanced:
                                            make_field_controls(f"cache.{method}", cls, name, controls)
                            cache_groups.append(group)

                    with gr.Tab("Quantize", id="tab-quantization"):
                        controls["quantization.backend"] = _picker("quantization.backend", list(QUANT_VARIANTS))
                        controls["quantization.components"] = gr.Dropdown(
                            ["transformer", "text_encoder", "text_encoder_2", "vae"],
                            value=DEFAULT_VALUES["quantization.components"], multiselect=True,
                            allow_custom_value=True, label=HELP["quantization.components"][0],
                            info=HELP["quantization.components"][1], elem_id=_elem_id("quantization.components"),
                            visible=DEFAULT_VALUES["quantization.backend"] != "none")
                        quant_groups = []
                        for backend, cls in QUANT_VARIANTS.items():
                            names = [n for n in cls.model_fields if n not in ("backend", "components")]
                            shown = backend == DEFAULT_VALUES["quantization.backend"] and bool(names)
                            with gr.Group(visible=shown) as group:
                                for name in names:
                                    make_field_controls(f"quantization.{backend}", cls, name, controls)
                            quant_groups.append(group)

                    with gr.Tab("Offload", id="tab-offload"):
                        make_field_controls("offload", C.OffloadConfig, "mode", controls)
                        with gr.Group(visible=DEFAULT_VALUES["offload.mode"] == "group") as offload_group:
                            with gr.Row():
                                make_field_controls("offload", C.OffloadConfig, "offload_type", controls)
                                make_field_controls("offload", C.OffloadConfig, "num_blocks_per_group", controls)
                            with gr.Row():
                                for name in ("use_stream", "record_stream"):
                                    make_field_controls("offload", C.OffloadConfig, name, controls)
                            with gr.Row():
                                for name in ("low_cpu_mem_usage", "offload_to_disk"):
                                    make_field_controls("offload", C.OffloadConfig, name, controls)
                        gr.Markdown("**VAE**", elem_classes="lab-section-title")
                        with gr.Row():
                            make_field_controls("vae", C.VaeConfig, "slicing", controls)
                            make_field_controls("vae", C.VaeConfig, "tiling", controls)

                    with gr.Tab("Compile", id="tab-compile"):
                        if ZERO_GPU or _reason("compile", "regional"):
                            gr.Markdown(f"**Unavailable here:** {_escape(_reason('compile', 'regional') or '')}",
                                        elem_classes="lab-note warn")
                        make_field_controls("compile", C.CompileConfig, "mode", controls)
                        with gr.Group(visible=DEFAULT_VALUES["compile.mode"] != "off") as compile_group:
                            make_field_controls("compile", C.CompileConfig, "inductor_mode", controls)
                            with gr.Row():
                                make_field_controls("compile", C.CompileConfig, "fullgraph", controls)
                                make_field_controls("compile", C.CompileConfig, "channels_last", controls)
                            make_field_controls("compile", C.CompileConfig, "dynamic", controls)
                            make_field_controls("compile", C.CompileConfig, "recommended_dynamo_settings", controls)

                summary = gr.HTML(settings_summary(DEFAULT_VALUES), elem_id="settings-summary")
                with gr.Row():
                    run_button = gr.Button("Run comparison", variant="primary", scale=3, elem_id="run-button")
                    cancel_button = gr.Button("Cancel", variant="stop", scale=1, elem_id="cancel-button")

                with gr.Accordion("Save, share, import", open=False, elem_id="share-accordion"):
                    with gr.Row():
                        controls["preset.name"] = gr.Textbox(DEFAULT_VALUES["preset.name"], label="Preset name",
                                                             info="Names the file, the saved preset and the link.",
                                                             elem_id=_elem_id("preset.name"), scale=1)
                        controls["preset.description"] = gr.Textbox(
                            DEFAULT_VALUES["preset.description"], label="Description", lines=1, max_lines=3,
                            info="What these settings are for.", elem_id=_elem_id("preset.description"), scale=2)
                    with gr.Row():
                        share_button = gr.Button("Create share link", size="sm", elem_id="share-button")
                        export_button = gr.Button("Download preset JSON", size="sm", elem_id="export-button")
                    share_box = gr.Textbox(label="Share link", info="Carries the preset and run settings in the URL "
                                           "itself: opening it restores every control.", buttons=["copy"],
                                           interactive=False, elem_id="share-link")
                    export_file = gr.File(label="Preset file", visible=False, interactive=False, elem_id="export-file")
                    export_code = gr.Code(label="Preset JSON", language="json", visible=False, interactive=False)
                    upload = gr.File(label="Load a preset JSON file", file_types=[".json"], type="filepath",
                                     height=110, elem_id="preset-upload")
                    saved_picker = gr.Dropdown([], label="My presets", info="Kept in this browser: they survive a "
                                               "reload.", elem_id="saved-presets")
                    with gr.Row():
                        save_button = gr.Button("Save current settings", size="sm")
                        load_button = gr.Button("Load", size="sm")
                        delete_button = gr.Button("Delete", size="sm", variant="stop")

            # ------------------------------------------------------------------- results column
            with gr.Column(scale=1, min_width=480):
                headline = gr.HTML(EMPTY_RESULTS, elem_id="headline")
                with gr.Tabs():
                    with gr.Tab("Images", id="tab-images"):
                        with gr.Row(equal_height=False):
                            slider = gr.ImageSlider(label="Baseline (left) ↔ optimized (right)", format="png",
                                                    type="numpy", scale=3, elem_id="image-slider", max_height=640)
                            with gr.Column(scale=2, min_width=200):
                                heatmap = gr.Image(label="Difference", format="png", type="numpy", height=300,
                                                   interactive=False, elem_id="heatmap",
                                                   buttons=["download", "fullscreen"])
                                heatmap_caption = gr.Markdown(elem_classes="lab-note")
                    with gr.Tab("Metrics", id="tab-metrics"):
                        metrics = gr.Dataframe(headers=["metric", "baseline", "optimized"], value=[],
                                               interactive=False, wrap=True, max_height=900,
                                               column_widths=["34%", "33%", "33%"], elem_id="metrics-table")
                        gr.Markdown("Latency is per image, median of the timed runs with min-max; memory is the "
                                    "peak during the timed runs (GPU allocated on CUDA, process RSS growth on CPU). "
                                    "“within noise” in the summary: the two sides' min-max ranges overlap.",
                                    elem_classes="lab-note")
                    with gr.Tab("Charts", id="tab-charts"):
                        with gr.Row():
                            latency_plot = gr.Plot(label="Latency", format="png", show_label=False)
                            memory_plot = gr.Plot(label="Peak memory", format="png", show_label=False)
                        with gr.Row():
                            per_step_plot = gr.Plot(label="Per-step time", format="png", show_label=False)
                            work_plot = gr.Plot(label="Work per step", format="png", show_label=False)
                    with gr.Tab("Details", id="tab-details"):
                        details = gr.Markdown("Run a comparison to see what was applied, in order, and any warnings.")
                        report_files = gr.File(label="Report files (report.json, report.md, lossless PNGs)",
                                               file_count="multiple", interactive=False)
                        with gr.Accordion("report.json", open=False):
                            report_json = gr.JSON()
                    with gr.Tab("History", id="tab-history"):
                        gr.Markdown("This session's comparisons, newest first. Select a row to show it again.",
                                    elem_classes="lab-note")
                        history_table = gr.Dataframe(headers=HISTORY_HEADERS, value=[], interactive=False,
                                                     wrap=True, elem_id="history-table",
                                                     column_widths=["6%", "22%", "30%", "10%", "14%", "10%", "8%"])
        history = gr.State([])
        saved = gr.BrowserState({}, storage_key="optim-lab-presets", secret=BROWSER_STATE_SECRET)

        # Hidden components of the public API endpoint (gradio_client: api_name="/compare").
        with gr.Column(visible=False):
            api_inputs = [
                gr.Textbox(DEFAULT_PRESET.name, label="preset"),
                gr.Textbox(EMBEDDED_MODEL, label="model"),
                gr.Textbox("", label="prompt"),
                gr.Number(0, label="seed", precision=0),
                gr.Number(None, label="steps", precision=0),
                gr.Number(None, label="width", precision=0),
                gr.Number(None, label="height", precision=0),
                gr.Number(None, label="guidance_scale"),
                gr.Number(3, label="timed_runs", precision=0),
            ]
            api_outputs = [gr.JSON(label="report"), gr.Image(label="baseline", format="png"),
                           gr.Image(label="optimized", format="png"), gr.Image(label="diff", format="png")]
            api_button = gr.Button("compare")

        missing = set(CONTROL_KEYS) - set(controls)
        assert not missing, f"controls missing for {sorted(missing)}"  # a config field without a widget is a bug
        ui = dict(
            shipped=shipped, model_info=model_info, cache_groups=cache_groups, quant_groups=quant_groups,
            offload_group=offload_group, compile_group=compile_group, summary=summary, run_button=run_button,
            cancel_button=cancel_button, share_button=share_button, export_button=export_button,
            share_box=share_box, export_file=export_file, export_code=export_code, upload=upload,
            saved_picker=saved_picker, save_button=save_button, load_button=load_button,
            delete_button=delete_button, headline=headline, slider=slider, heatmap=heatmap,
            heatmap_caption=heatmap_caption, metrics=metrics, latency_plot=latency_plot, memory_plot=memory_plot,
            per_step_plot=per_step_plot, work_plot=work_plot, details=details, report_files=report_files,
            report_json=report_json, history_table=history_table, history=history, saved=saved,
            api_inputs=api_inputs, api_outputs=api_outputs, api_button=api_button,
        )
        wire_events(demo, controls, ui)
    return demo


def wire_events(demo: gr.Blocks, controls: dict[str, Any], ui: dict[str, Any]) -> None:
    """Connect the events. Internal events stay out of the public API; the run and the API share one slot."""
    key_of = {component._id: key for key, component in controls.items()}
    control_list = [controls[key] for key in CONTROL_KEYS]
    fill_outputs = control_list + [ui["shipped"], ui["summary"]]
    private = dict(api_visibility="private")

    def by_key(data: dict[Any, Any]) -> dict[str, Any]:
        return {key_of[c._id]: v for c, v in data.items() if c._id in key_of}

    def with_values(fn: Callable[..., Any], *extra: Any) -> tuple[Callable[..., Any], set[Any]]:
        """Adapt a handler taking (extra values..., values) to Gradio's dict-of-inputs form."""
        def handler(data: dict[Any, Any]) -> Any:
            return fn(*[data[c] for c in extra], by_key(data))
        return handler, {*control_list, *extra}

    # Presets
    # `select`, not `input`: a dropdown selection fires `input` twice, and the late duplicate fill would undo the
    # user's next edits.
    fn, inputs = with_values(load_shipped, ui["shipped"])
    ui["shipped"].select(fn, inputs, fill_outputs, **private)
    fn, inputs = with_values(import_preset, ui["upload"])
    ui["upload"].upload(fn, inputs, fill_outputs + [ui["upload"]], **private)
    fn, inputs = with_values(export_preset)
    ui["export_button"].click(fn, inputs, [ui["export_file"], ui["export_code"]], **private)
    fn, inputs = with_values(share_link)
    ui["share_button"].click(fn, inputs, ui["share_box"], **private).then(
        None, ui["share_box"], ui["share_box"],
        js="(link) => link && link.startsWith('?') ? window.location.origin + window.location.pathname + link : link",
        **private)
    ui["save_button"].click(lambda d: save_to_browser(by_key(d), d[ui["saved"]]), {*control_list, ui["saved"]},
                            [ui["saved"], ui["saved_picker"]], **private)
    fn, inputs = with_values(load_from_browser, ui["saved_picker"], ui["saved"])
    ui["load_button"].click(fn, inputs, fill_outputs, **private)
    ui["delete_button"].click(delete_from_browser, [ui["saved_picker"], ui["saved"]],
                              [ui["saved"], ui["saved_picker"]], **private)
    demo.load(on_page_load, [ui["saved"]], fill_outputs + [ui["saved_picker"]], **private)

    # Model: a user's choice fills its defaults; the note follows every change (also from a link).
    fn, inputs = with_values(load_model_defaults, controls["run.model"])
    controls["run.model"].input(fn, inputs, fill_outputs, **private)  # `input`: typed Hub ids and folders too
    controls["run.model"].change(model_note, controls["run.model"], ui["model_info"], queue=False, **private)

    # Only the chosen technique's options are shown.
    controls["cache.method"].change(_visibility(list(CACHE_VARIANTS)), controls["cache.method"],
                                    ui["cache_groups"], queue=False, **private)
    quant_names = list(QUANT_VARIANTS)

    def show_quant(backend: str) -> list[Any]:
        has_options = {b: any(n not in ("backend", "components") for n in cls.model_fields)
                       for b, cls in QUANT_VARIANTS.items()}
        return [gr.update(visible=backend != "none")] + [
            gr.update(visible=backend == b and has_options[b]) for b in quant_names]

    controls["quantization.backend"].change(show_quant, controls["quantization.backend"],
                                            [controls["quantization.components"], *ui["quant_groups"]],
                                            queue=False, **private)
    controls["offload.mode"].change(lambda m: gr.update(visible=m == "group"), controls["offload.mode"],
                                    ui["offload_group"], queue=False, **private)
    controls["offload.offload_type"].change(lambda t: gr.update(visible=t == "block_level"),
                                            controls["offload.offload_type"], controls["offload.num_blocks_per_group"],
                                            queue=False, **private)
    controls["compile.mode"].change(lambda m: gr.update(visible=m != "off"), controls["compile.mode"],
                                    ui["compile_group"], queue=False, **private)
    ratios = controls["cache.mag_cache.mag_ratios"]
    ratios.change(lambda r: gr.update(visible=r == "custom"), ratios, controls["cache.mag_cache.mag_ratios.custom"],
                  queue=False, **private)

    # The live check of the settings (user edits only; handlers that fill every control update it themselves).
    gr.on([c.input for c in control_list if hasattr(c, "input")], lambda d: on_edit(by_key(d)),
          set(control_list), [ui["summary"], ui["shipped"]], trigger_mode="always_last", show_progress="hidden",
          **private)

    # Run, cancel, history
    results = [ui["headline"], ui["slider"], ui["heatmap"], ui["heatmap_caption"], ui["metrics"],
               ui["latency_plot"], ui["memory_plot"], ui["per_step_plot"], ui["work_plot"], ui["details"],
               ui["report_json"], ui["report_files"]]
    assert len(results) == RESULT_COUNT

    def on_run(data: dict[Any, Any], progress: gr.Progress = gr.Progress(), request: gr.Request = None) -> list[Any]:
        return run_comparison(by_key(data), data[ui["history"]], progress, request)

    run_event = ui["run_button"].click(
        on_run, {*control_list, ui["history"]}, results + [ui["history"], ui["history_table"]],
        concurrency_limit=1, concurrency_id="gpu", show_progress_on=[ui["headline"], ui["slider"]],
        scroll_to_output=False, **private)
    ui["cancel_button"].click(cancel_run, None, None, cancels=[run_event], **private)
    ui["history_table"].select(show_history_entry, ui["history"], results, **private)

    # The public API: same GPU slot as the button.
    ui["api_button"].click(api_compare, ui["api_inputs"], ui["api_outputs"], api_name="compare",
                           concurrency_limit=1, concurrency_id="gpu")


demo = build_demo()
demo.queue(max_size=64, default_concurrency_limit=8)

# theme/css are launch() arguments in Gradio 6; tests launch with the same.
LAUNCH_KWARGS: dict[str, Any] = dict(
    theme=THEME,
    css=CSS,
    max_file_size=1024 * 1024,  # uploads are presets; the app itself refuses more than LIMITS.max_upload_bytes
    footer_links=["api", "gradio"],
)


def main() -> None:
    # A stop request (SIGTERM: a Space restarting, `docker stop`, a test fixture) exits like Ctrl-C does, so the
    # atexit cleanups run: this server's report folder, the worker zygote.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    # server_port=None: Gradio reads GRADIO_SERVER_PORT, else 7860.
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"), **LAUNCH_KWARGS)


if __name__ == "__main__":
    main()
