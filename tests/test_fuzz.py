"""Preset files, uploads and share links are untrusted: every input parses into a valid preset or gives a clean
`ConfigError`, never another exception. Hypothesis generates well over a thousand cases per decoder (random
JSON, mutated real presets, random text and bytes, damaged and hand-made tokens)."""

from __future__ import annotations

import base64
import json
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optim.config import RunSpec
from optim.errors import ConfigError
from optim.presets import Preset, parse_preset, preset_from_json, preset_to_dict, shipped_presets
from optim.share import decode_share, encode_share

CASES = settings(max_examples=1200, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
SHIPPED = [preset_to_dict(p) for p in shipped_presets().values()]

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=25,
)
KEYS = ["schema_version", "name", "description", "hardware", "optim", "attention", "cache", "quantization",
        "offload", "vae", "compile", "method", "backend", "threshold", "mode", "components", "fullgraph",
        "spatial_attention_timestep_skip_range", "mag_ratios", "quant_type", "weights", "offload_to_disk"]


@st.composite
def mutated_presets(draw):
    """A shipped preset with a few random edits at random depths: the inputs most likely to reach deep code."""
    data = json.loads(json.dumps(draw(st.sampled_from(SHIPPED))))
    for _ in range(draw(st.integers(1, 4))):
        node = data
        path = []
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            path.append(key)
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if not isinstance(node, dict):
            continue
        action = draw(st.sampled_from(["set", "delete", "add"]))
        key = draw(st.sampled_from(sorted(node) or KEYS)) if action != "add" else draw(st.sampled_from(KEYS) | st.text(max_size=10))
        if action == "delete":
            node.pop(key, None)
        else:
            node[key] = draw(json_values | st.sampled_from([0.1, -1, 2**40, "none", "first_block_cache", [100, 800], [800, 100], True]))
    return data


def _parses_or_clean_error(call, *args):
    try:
        result = call(*args)
    except ConfigError as error:
        assert str(error), "an error must say what is wrong"
        return None
    return result


@CASES
@given(json_values | mutated_presets())
def test_preset_values_parse_or_fail_cleanly(data):
    result = _parses_or_clean_error(parse_preset, data)
    assert result is None or isinstance(result, Preset)


@CASES
@given(st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    mutated_presets().map(json.dumps),
    json_values.map(json.dumps),
    mutated_presets().map(lambda d: json.dumps(d)[: len(json.dumps(d)) // 2]),
))
def test_preset_text_parses_or_fails_cleanly(text):
    result = _parses_or_clean_error(preset_from_json, text)
    assert result is None or isinstance(result, Preset)


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(payload)).decode().rstrip("=")


@st.composite
def share_tokens(draw):
    kind = draw(st.sampled_from(["text", "payload", "mutated", "truncated", "run"]))
    if kind == "text":
        return draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=200) | st.from_regex(r"[A-Za-z0-9_=-]{0,300}", fullmatch=True))
    if kind == "payload":
        return _token(json.dumps(draw(json_values)).encode())
    if kind == "mutated":
        return _token(json.dumps({"v": 1, "preset": draw(mutated_presets()), "run": {}}).encode())
    if kind == "run":
        run = draw(st.dictionaries(st.sampled_from(list(RunSpec.model_fields) + ["bogus"]), json_values, max_size=4))
        return _token(json.dumps({"v": 1, "preset": SHIPPED[0], "run": run}).encode())
    valid = encode_share(shipped_presets()["first-block-cache"], RunSpec(seed=3))
    return valid[: draw(st.integers(0, len(valid)))]


@CASES
@given(share_tokens())
def test_share_links_parse_or_fail_cleanly(token):
    result = _parses_or_clean_error(decode_share, token)
    assert result is None or (isinstance(result[0], Preset) and isinstance(result[1], RunSpec))


def test_a_zip_bomb_link_is_refused():
    bomb = _token(b'{"v": 1, "preset": "' + b"a" * 5_000_000 + b'"}')
    assert len(bomb) < 20_000
    try:
        decode_share(bomb, max_chars=50_000)
    except ConfigError as error:
        assert "larger than" in str(error)
    else:
        raise AssertionError("a 5 MB payload must be refused")
