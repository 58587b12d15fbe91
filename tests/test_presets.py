"""Shipped presets load and validate; preset files are strict, canonical and untrusted-safe."""

from __future__ import annotations

import json

import pytest

from optim.compat import required_hardware
from optim.config import OptimConfig, parse_optim
from optim.errors import ConfigError
from optim.presets import (
    PRESETS_DIR,
    load_preset,
    make_preset,
    preset_from_json,
    preset_json_schema,
    preset_to_json,
    shipped_preset_names,
)

NAMES = shipped_preset_names()
REQUIRED = {
    "baseline",
    "first-block-cache",
    "pyramid-attention-broadcast",
    "faster-cache",
    "compile-regional",
    "flux-table-quantization",
    "flux-table-quantization-compile",
    "flux-table-quantization-compile-offload",
}


def test_required_presets_are_shipped():
    assert REQUIRED <= set(NAMES)
    families = {json.dumps(sorted(load_preset(n).optim.model_dump(exclude_defaults=True))) for n in NAMES}
    assert len(families) > 5


@pytest.mark.parametrize("name", NAMES)
def test_shipped_preset_is_valid_canonical_and_honest_about_hardware(name):
    preset = load_preset(name)
    assert preset.name == name
    assert preset.description
    text = (PRESETS_DIR / f"{name}.json").read_text()
    assert text == preset_to_json(preset), "not in canonical form: only what differs from defaults, sorted keys"
    needed = required_hardware(preset.optim)
    assert preset.hardware == needed, f"{name} says {preset.hardware} but needs {needed}"


def test_seed_table_presets_match_the_recipe():
    row1 = load_preset("flux-table-quantization").optim
    row2 = load_preset("flux-table-quantization-compile").optim
    row3 = load_preset("flux-table-quantization-compile-offload").optim
    assert row1.quantization.backend == "bitsandbytes_4bit" and row1.quantization.quant_type == "nf4"
    assert set(row1.quantization.components) == {"transformer", "text_encoder_2"}
    assert row2.quantization == row1.quantization and row2.compile.mode == "full" and row2.compile.fullgraph
    # Row 3 as the seed's recipe writes it: after offloading, a plain `transformer.compile()` (default mode, graph
    # breaks allowed: accelerate's hooks cannot be traced and CUDA graphs cannot follow moving weights).
    assert row3.quantization == row1.quantization and row3.offload.mode == "model_cpu"
    assert row3.compile.mode == "full" and row3.compile.inductor_mode == "default" and row3.compile.fullgraph is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "not valid JSON"),
        ('{"schema_version": 1, "name": "x", "optim": {"cache": {"method": "first_block_cache", "threshold": NaN}}}', "NaN is not a valid JSON number"),
        ('{"schema_version": 1, "name": "x", "name": "y"}', "duplicate key 'name'"),
        ('{"schema_version": 2, "name": "x"}', "schema_version 1"),
        ('{"schema_version": 1, "name": "Bad Name"}', "preset.name: 'Bad Name' must match"),
        ('{"schema_version": 1, "name": "x", "optim": {"cache": {"method": "first_block_cache", "treshold": 0.1}}}', "preset.optim.cache.treshold: unknown field (did you mean 'threshold'?)"),
        ('[1, 2]', "expected a JSON object"),
        ('{"name": "x"}', "preset.schema_version: required field is missing"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_preset_text_gives_a_clean_error(text, expected):
    with pytest.raises(ConfigError) as error:
        preset_from_json(text)
    assert expected in str(error.value)


def test_oversized_preset_is_refused():
    with pytest.raises(ConfigError, match="too large"):
        preset_from_json(" " * 100_000)


def test_unknown_preset_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*baseline"):
        load_preset("nope")


def test_preset_file_round_trip(tmp_path):
    preset = make_preset("mine", parse_optim({"cache": {"method": "taylorseer", "cache_interval": 2}}), description="d")
    path = tmp_path / "mine.json"
    path.write_text(preset_to_json(preset))
    assert load_preset(str(path)) == preset
    assert preset.hardware == "any"


def test_make_preset_derives_hardware():
    assert make_preset("g", parse_optim({"offload": {"mode": "model_cpu"}})).hardware == "cuda"
    assert make_preset("c", OptimConfig()).hardware == "any"


def test_schema_file_is_current_and_validates_every_preset():
    import jsonschema

    schema = preset_json_schema()
    shipped = json.loads((PRESETS_DIR / "schema.json").read_text())
    assert shipped == schema, "presets/schema.json is stale: regenerate with python -m optim schema > presets/schema.json"
    for name in NAMES:
        jsonschema.validate(json.loads((PRESETS_DIR / f"{name}.json").read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema_version": 1, "name": "x", "bogus": 1}, schema)
