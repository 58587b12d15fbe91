"""Control values <-> settings, without Gradio: every control of the UI sets exactly one config field, and its key
is that field's path ("cache.first_block_cache.threshold", "offload.use_stream", "run.steps"). A timestep range
takes two controls ("...range.from", "...range.to") and a MagCache ratio list a choice plus a text box
("...mag_ratios", "...mag_ratios.custom"); both set one field.

    values = values_from_settings(preset, run, defaults)    # what the controls show
    preset, run = settings_from_values(values, shipped)     # and back (strict: raises ConfigError)

Labels, help texts and choice labels come from the settings' own facts (`optim.config.facts`).
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args, get_origin

from optim import config as C
from optim.config import Facts, OptimConfig, RunSpec, facts, parse_optim, parse_run
from optim.errors import ConfigError
from optim.model_types import ModelDefaults
from optim.models import EMBEDDED_MODEL
from optim.presets import Preset, make_preset

# --------------------------------------------------------------------------------------- reading the models


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
    int_or_blank (empty = None), tristate (auto/on/off = None/True/False), mag_ratios, text, list (choices),
    numbers (typed, separated by commas)."""
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
    if get_origin(base) in (tuple, list):
        element = get_args(base)[0]
        while get_origin(element) is not None and hasattr(element, "__metadata__"):
            element = get_args(element)[0]
        return "numbers" if element in (int, float) else "list"
    raise TypeError(f"no control for {cls.__name__}.{name} ({annotation})")


# ------------------------------------------------------------------------------------------ control keys

RUN_FIELDS = list(RunSpec.model_fields)
# Run settings: `None` means "the model's default", but the controls always show the value (the model's default
# is filled in), so only the max_sequence_length may be left empty.
RUN_KINDS = {"steps": "int", "width": "int", "height": "int", "max_sequence_length": "int_or_blank",
             "timed_runs": "runs", "num_frames": "int_or_blank", "fps": "int_or_blank"}


def field_keys(prefix: str, cls: type, name: str) -> list[str]:
    """The control key(s) of one config field."""
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
    for method, cls in C.CACHE_VARIANTS.items():
        for name in cls.model_fields:
            if name != "method":
                keys += field_keys(f"cache.{method}", cls, name)
    keys += ["quantization.backend", "quantization.components"]
    for backend, cls in C.QUANTIZATION_VARIANTS.items():
        for name in cls.model_fields:
            if name not in ("backend", "components"):
                keys += field_keys(f"quantization.{backend}", cls, name)
    for section in ("offload", "vae", "compile"):
        for name in C.SECTIONS[section].model_fields:
            keys += field_keys(section, C.SECTIONS[section], name)
    return keys


PRESET_KEYS = ["preset.name", "preset.description"]
RUN_KEYS = [f"run.{name}" for name in RUN_FIELDS]
OPTIM_KEYS = _optim_keys()
CONTROL_KEYS = PRESET_KEYS + RUN_KEYS + OPTIM_KEYS
# Options that only apply when their switch is on; the engine insists they stay at their defaults otherwise, so
# hidden controls are not read (mirrors the validators of OffloadConfig and CompileConfig).
OFFLOAD_GROUP_ONLY = tuple(name for name in C.OffloadConfig.model_fields if name != "mode")
COMPILE_ONLY_WHEN_ON = ("inductor_mode", "fullgraph", "dynamic", "channels_last")


def owner(key: str) -> tuple[type, str]:
    """The settings class and field name a control key sets (sub-keys such as '.from' map to their field)."""
    parts = key.split(".")
    if parts[-1] in ("from", "to", "custom") and len(parts) > 2:
        parts = parts[:-1]
    section = parts[0]
    if section == "preset":
        return Preset, parts[1]
    if section == "run":
        return RunSpec, parts[1]
    if section in C.UNIONS:
        tag, classes = C.UNIONS[section]
        if parts[1] == "components":  # shared by every backend: the same field on each
            return classes["torchao"], "components"
        if parts[1] == tag:  # the picker of the variant
            return C.OptimConfig, tag
        return classes[parts[1]], parts[2]
    return C.SECTIONS[section], parts[1]


def key_facts(key: str) -> Facts:
    """Label and help of the control `key`, from its field's facts."""
    cls, name = owner(key)
    if cls is C.OptimConfig:  # the pickers of a union's variant
        section = key.split(".")[0]
        if section == "cache":
            return Facts("Cache method", "Reuse work across denoising steps: faster, at some cost in fidelity. "
                         "work_fraction in the report says how much transformer work was computed.")
        return Facts("Quantization", "Store weights in fewer bits at load time (the quantized side loads its own "
                     "pipeline): less memory; speed depends on the kernels; a small quality cost.")
    found = facts(cls, name)
    if key.endswith(".from"):
        return Facts(f"{found.label}: from", found.help, found.advanced)
    if key.endswith(".to"):
        return Facts("to", "", found.advanced)
    if key.endswith(".custom"):
        return Facts("Custom ratios", "Comma-separated numbers, one per step.", found.advanced)
    return found


# ------------------------------------------------------------------------------- values <-> settings

TRISTATE = {"auto": None, "on": True, "off": False}


def as_int(value: Any) -> Any:
    """Widgets give floats for whole numbers; pass anything else through so validation names it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def as_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def read_field(values: dict[str, Any], prefix: str, cls: type, name: str) -> Any:
    """The config value of one field from its control(s)."""
    key = f"{prefix}.{name}"
    kind = field_kind(cls, name)
    if kind == "range":
        low, high = values[f"{key}.from"], values[f"{key}.to"]
        if low is None or high is None:
            raise ConfigError(f"optim.{key}: give both ends of the range (from, to)")
        return [as_int(low), as_int(high)]
    value = values[key]
    if kind == "int":
        return as_int(value)
    if kind == "float":
        return as_float(value)
    if kind == "int_or_off":
        return None if value in (None, 0) else as_int(value)
    if kind == "int_or_blank":
        return None if value in (None, "") else as_int(value)
    if kind == "tristate":
        if value not in TRISTATE:
            raise ConfigError(f"optim.{key}: {value!r} is not allowed; allowed: auto, on, off")
        return TRISTATE[value]
    if kind == "mag_ratios":
        return value if value != "custom" else parse_numbers(key, values[f"{key}.custom"], float)
    if kind == "numbers":
        return parse_numbers(key, value, int)
    return value


def parse_numbers(key: str, text: str | None, kind: type) -> list[Any]:
    """Numbers typed into one box, separated by commas or spaces."""
    text = text or ""
    try:
        return [kind(part) for part in re.split(r"[,\s]+", text.strip()) if part]
    except ValueError:
        whole = " whole" if kind is int else ""
        raise ConfigError(
            f"optim.{key}: {text[:60]!r} is not a list of{whole} numbers (write them separated by commas)"
        ) from None


def write_field(out: dict[str, Any], prefix: str, cls: type, name: str, value: Any) -> None:
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
    elif kind == "numbers":
        out[key] = ", ".join(str(v) for v in value)
    else:
        out[key] = value


def optim_from_values(values: dict[str, Any]) -> OptimConfig:
    """The optimized side's settings from the controls (strict: a bad combination raises ConfigError)."""
    data: dict[str, Any] = {}
    for section in ("attention", "offload", "vae", "compile"):
        cls = C.SECTIONS[section]
        names = list(cls.model_fields)
        if section == "offload":
            if values["offload.mode"] != "group":
                names = [n for n in names if n not in OFFLOAD_GROUP_ONLY]
            elif values["offload.offload_type"] == "leaf_level":
                names.remove("num_blocks_per_group")
        if section == "compile" and values["compile.mode"] == "off":
            names = [n for n in names if n not in COMPILE_ONLY_WHEN_ON]
        data[section] = {name: read_field(values, section, cls, name) for name in names}
    method = values["cache.method"]
    cache: dict[str, Any] = {"method": method}
    if method in C.CACHE_VARIANTS:
        cls = C.CACHE_VARIANTS[method]
        cache.update({n: read_field(values, f"cache.{method}", cls, n) for n in cls.model_fields if n != "method"})
    data["cache"] = cache
    backend = values["quantization.backend"]
    quant: dict[str, Any] = {"backend": backend}
    if backend in C.QUANTIZATION_VARIANTS:
        cls = C.QUANTIZATION_VARIANTS[backend]
        for name in cls.model_fields:
            if name == "components":
                quant["components"] = list(values["quantization.components"] or [])
            elif name != "backend":
                quant[name] = read_field(values, f"quantization.{backend}", cls, name)
    data["quantization"] = quant
    return parse_optim(data)


def values_from_optim(optim: OptimConfig) -> dict[str, Any]:
    """Every optimization control's value for these settings (variants not chosen show their defaults)."""
    out: dict[str, Any] = {}
    for section in ("attention", "offload", "vae", "compile"):
        cls, current = C.SECTIONS[section], getattr(optim, section)
        for name in cls.model_fields:
            write_field(out, section, cls, name, getattr(current, name))
    out["cache.method"] = optim.cache.method
    for method, cls in C.CACHE_VARIANTS.items():
        current = optim.cache if optim.cache.method == method else cls(method=method)
        for name in cls.model_fields:
            if name != "method":
                write_field(out, f"cache.{method}", cls, name, getattr(current, name))
    out["quantization.backend"] = optim.quantization.backend
    out["quantization.components"] = list(
        getattr(optim.quantization, "components", None) or C.TorchAo.model_fields["components"].default
    )
    for backend, cls in C.QUANTIZATION_VARIANTS.items():
        current = optim.quantization if optim.quantization.backend == backend else cls(backend=backend)
        for name in cls.model_fields:
            if name not in ("backend", "components"):
                write_field(out, f"quantization.{backend}", cls, name, getattr(current, name))
    return out


def run_from_values(values: dict[str, Any]) -> RunSpec:
    data: dict[str, Any] = {}
    for name in RUN_FIELDS:
        value = values[f"run.{name}"]
        if name == "model":
            value = (value or "").strip() or EMBEDDED_MODEL
        elif name == "negative_prompt":
            value = value or None  # empty: the model's own default
        elif name in ("max_sequence_length", "num_frames", "fps"):
            value = None if value in (None, "", 0) else as_int(value)
        elif name == "guidance_scale":
            value = as_float(value)
        elif name == "timed_runs":
            value = "auto" if value in (None, "", "auto") else as_int(_number(value))
        elif name in ("target_precision", "time_budget_s"):
            value = as_float(value)
        elif name in ("seed", "steps", "width", "height", "warmup_runs"):
            value = as_int(value)
        data[name] = value
    return parse_run(data)


def _number(value: Any) -> Any:
    """A count typed into a box ("5") as a number; anything else unchanged, for validation to name."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def values_from_run(run: RunSpec, defaults: ModelDefaults) -> dict[str, Any]:
    """The run controls for these settings; what the RunSpec leaves to the model shows the model's default."""
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


def settings_from_values(values: dict[str, Any], shipped: dict[str, Preset]) -> tuple[Preset, RunSpec]:
    """The preset and run settings the controls show. Raises `ConfigError` with the engine's message."""
    optim = optim_from_values(values)
    run = run_from_values(values)
    name = slug(values["preset.name"])
    if name in shipped and shipped[name].optim != optim:
        name = slug(f"{name}-modified")  # a shipped name must keep meaning the shipped settings
    return make_preset(name, optim, description=values["preset.description"] or ""), run


def values_from_settings(preset: Preset, run: RunSpec, defaults: ModelDefaults) -> dict[str, Any]:
    """Every control's value for a preset and run settings (inverse of `settings_from_values`)."""
    values = {"preset.name": preset.name, "preset.description": preset.description}
    values.update(values_from_run(run, defaults))
    values.update(values_from_optim(preset.optim))
    return values
