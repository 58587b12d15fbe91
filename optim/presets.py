"""Presets: one small, strict JSON object each, holding only what differs from the defaults.

A preset file is untrusted input (an upload, a share link, a typo): it is size-limited, parsed as plain JSON
(never evaluated), duplicate keys and non-finite numbers are rejected, and every field is validated by
`optim.config`. Shipped presets live in `presets/NAME.json`.

Example:
    >>> preset = load_preset("first-block-cache")
    >>> preset.optim.cache.method
    'first_block_cache'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from optim.config import OptimConfig, Settings, format_validation_error, info, minimal_dict
from optim.data import PRESETS_DIR
from optim.errors import ConfigError

SCHEMA_VERSION = 1
# A preset is a few hundred bytes; anything far larger is a mistake or an attack.
MAX_PRESET_BYTES = 64 * 1024
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Preset(Settings):
    """A named, described set of optimizations and the hardware it needs ("any" or "cuda")."""

    schema_version: Literal[1]
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(
        ..., **info("Preset name", "Names the file, the saved preset and the share link."))
    description: Annotated[str, Field(max_length=500)] = Field(
        "", **info("Description", "What these settings are for."))
    hardware: Literal["any", "cuda"] = "any"
    optim: OptimConfig = OptimConfig()


def parse_preset(data: Any, *, where: str = "preset") -> Preset:
    """Validate a preset from JSON values (a dict)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool):  # True == 1 in Python, so the Literal[1] below would take it
        raise ConfigError(f"{where}.schema_version: {str(version).lower()} is not a version; write {SCHEMA_VERSION}")
    if version is not None and version != SCHEMA_VERSION and isinstance(version, int):
        raise ConfigError(
            f"{where}.schema_version: {version} is not supported; this version of the app reads schema_version "
            f"{SCHEMA_VERSION}"
        )
    try:
        return Preset.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, where, data, Preset)) from None


def preset_from_json(text: str | bytes, *, where: str = "preset") -> Preset:
    """Parse and validate a preset from JSON text (a file, an upload)."""
    return parse_preset(load_json(text, where=where, max_bytes=MAX_PRESET_BYTES), where=where)


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The minimal JSON form: header fields always, optimizations only where they differ from the defaults."""
    return {
        "schema_version": preset.schema_version,
        "name": preset.name,
        "description": preset.description,
        "hardware": preset.hardware,
        "optim": minimal_dict(preset.optim),
    }


def preset_to_json(preset: Preset) -> str:
    """Stable text: sorted keys, two-space indent, trailing newline (diffs stay small)."""
    return json.dumps(preset_to_dict(preset), indent=2, sort_keys=True) + "\n"


def make_preset(name: str, optim: OptimConfig, *, description: str = "", hardware: str | None = None) -> Preset:
    """Build a validated preset; `hardware=None` derives it from what the optimizations need."""
    from optim.compat import required_hardware

    data = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "description": description,
        "hardware": hardware or required_hardware(optim),
        "optim": minimal_dict(optim),
    }
    return parse_preset(data)


def shipped_preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json") if path.stem != "schema")


def shipped_presets() -> dict[str, Preset]:
    """Every preset in presets/, by name (validated: a broken shipped preset is a bug and raises)."""
    return {name: load_preset(name) for name in shipped_preset_names()}


def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name, or a JSON file by path (for the CLI; the app never reads user paths)."""
    if name_or_path in shipped_preset_names():
        path = PRESETS_DIR / f"{name_or_path}.json"
    else:
        path = Path(name_or_path)
        if path.suffix != ".json" or not path.is_file():
            raise ConfigError(
                f"unknown preset {name_or_path!r}: give a shipped preset name ({', '.join(shipped_preset_names())}) "
                "or the path of a .json preset file"
            )
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise ConfigError(f"preset file {str(path)!r} is larger than {MAX_PRESET_BYTES} bytes; is it a preset?")
    preset = preset_from_json(path.read_bytes(), where=f"preset {path.name}")
    return preset


def preset_json_schema() -> dict[str, Any]:
    """JSON Schema of a preset file (shipped as presets/schema.json for editors and other tools)."""
    schema = Preset.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Diffusion optimization preset"
    return schema


# ----------------------------------------------------------------------------------------- safe JSON reading


def load_json(text: str | bytes, *, where: str, max_bytes: int) -> Any:
    """Plain JSON only: size-limited, no NaN/Infinity, no duplicate keys; errors name the line and column."""
    if len(text) > max_bytes:
        raise ConfigError(f"{where}: {len(text)} bytes is too large (at most {max_bytes})")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not UTF-8 text; a preset is a JSON file") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{where}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply") from None
    except _StrictJsonError as error:
        raise ConfigError(f"{where}: {error}") from None


class _StrictJsonError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _StrictJsonError(f"{name} is not a valid JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _StrictJsonError(f"duplicate key {key!r}")
        out[key] = value
    return out


__all__ = [
    "MAX_PRESET_BYTES",
    "PRESETS_DIR",
    "Preset",
    "SCHEMA_VERSION",
    "load_json",
    "load_preset",
    "make_preset",
    "parse_preset",
    "preset_from_json",
    "preset_json_schema",
    "preset_to_dict",
    "preset_to_json",
    "shipped_preset_names",
    "shipped_presets",
]
