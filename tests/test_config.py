"""Strict parsing of run settings and optimization settings: one error naming path, value and what is allowed."""

from __future__ import annotations

import pytest

from optim.config import (
    ATTENTION_BACKENDS,
    OptimConfig,
    RunSpec,
    minimal_dict,
    parse_optim,
    parse_run,
)
from optim.errors import ConfigError


def test_defaults_change_nothing():
    assert OptimConfig().is_baseline()
    assert minimal_dict(OptimConfig()) == {}
    assert minimal_dict(RunSpec()) == {}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"cache": {"method": "first_block_cache", "thresold": 0.1}}, "optim.cache.thresold: unknown field (did you mean 'threshold'?)"),
        ({"cache": {"method": "fbc"}}, "optim.cache: 'fbc' is not one of the allowed values: 'none', 'first_block_cache'"),
        ({"cache": {"method": "first_block_cache", "threshold": 5}}, "optim.cache.threshold: 5 is out of range; it must be <= 1.0"),
        ({"cache": {"method": "first_block_cache", "threshold": "0.1"}}, "optim.cache.threshold: '0.1'"),
        ({"attention": {"backend": "flash3"}}, "optim.attention.backend: 'flash3' is not allowed; allowed: 'native'"),
        ({"offload": {"use_stream": True}}, "use_stream applies only to mode 'group'"),
        ({"offload": {"mode": "group", "record_stream": True}}, "record_stream needs use_stream=true"),
        ({"compile": {"fullgraph": False}}, "fullgraph applies only when compile mode is 'regional' or 'full'"),
        ({"quantization": {"backend": "torchao", "components": ["Transformer"]}}, "optim.quantization.components.0: 'Transformer' must match"),
        ({"quantization": {"backend": "quanto", "weights": "int3"}}, "optim.quantization.weights: 'int3' is not allowed"),
        ({"cache": {}}, "optim.cache: missing 'method'"),
        ({"foo": 1}, "optim.foo: unknown field; allowed fields: attention, cache, quantization, offload, vae, compile"),
        ({"cache": {"method": "pyramid_attention_broadcast", "spatial_attention_block_skip_range": None}}, "skips nothing"),
        ({"cache": {"method": "faster_cache", "spatial_attention_timestep_skip_range": [900, 100]}}, "low < high"),
        ({"vae": {"slicing": 1}}, "optim.vae.slicing: 1: input should be a valid boolean"),
    ],
)
def test_bad_optim_settings_name_field_value_and_allowed(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_optim(data)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"steps": 0}, "run.steps: 0 is out of range; it must be >= 1"),
        ({"width": 100}, "run.width: 100 is not a multiple of 16; use 96 or 112"),
        ({"seed": "1"}, "run.seed: '1'"),
        ({"modle": "x"}, "run.modle: unknown field (did you mean 'model'?)"),
        ({"warmup_runs": 0}, "run.warmup_runs: 0 is out of range; it must be >= 1"),
        ({"device": "tpu"}, "run.device: 'tpu' is not allowed; allowed: 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_bad_run_settings(data, expected):
    with pytest.raises(ConfigError) as error:
        parse_run(data)
    assert expected in str(error.value)


def test_several_problems_in_one_error():
    with pytest.raises(ConfigError) as error:
        parse_run({"steps": 0, "width": 100})
    assert "run.steps" in str(error.value) and "run.width" in str(error.value)


def test_not_an_object():
    with pytest.raises(ConfigError, match="expected a JSON object"):
        parse_optim(["cache"])


def test_minimal_dict_keeps_the_variant_tag_and_drops_defaults():
    optim = parse_optim({"cache": {"method": "first_block_cache", "threshold": 0.05}, "compile": {"mode": "off"}})
    assert minimal_dict(optim) == {"cache": {"method": "first_block_cache"}}
    assert parse_optim(minimal_dict(optim)) == optim


def test_round_trip_of_every_cache_and_quantization_variant():
    variants = [
        {"cache": {"method": m}} for m in ("first_block_cache", "pyramid_attention_broadcast", "faster_cache", "mag_cache", "taylorseer")
    ] + [
        {"quantization": {"backend": b}} for b in ("bitsandbytes_4bit", "bitsandbytes_8bit", "torchao", "quanto")
    ]
    for data in variants:
        optim = parse_optim(data)
        assert parse_optim(minimal_dict(optim)) == optim
        assert parse_optim(optim.model_dump(mode="json")) == optim


def test_attention_names_match_installed_diffusers():
    from diffusers.models.attention_dispatch import AttentionBackendName

    assert set(ATTENTION_BACKENDS) == {member.value for member in AttentionBackendName}


def test_config_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, optim.config, optim.presets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_faster_cache_must_compute_the_first_step():
    """diffusers' FasterCache reuses attention on its first call when the first timestep (999 or 1000) is in its
    skip range, before anything is cached (TypeError: 'NoneType' object is not subscriptable, seen on CogVideoX):
    refused with the fix; 999 is the largest end that keeps the first step computed."""
    for name in ("spatial_attention_timestep_skip_range", "temporal_attention_timestep_skip_range"):
        with pytest.raises(ConfigError, match=f"{name} must end at 999 or below"):
            parse_optim({"cache": {"method": "faster_cache", name: [-1, 1000]}})
        parse_optim({"cache": {"method": "faster_cache", name: [-1, 999]}})
