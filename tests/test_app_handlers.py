"""The app's event handlers as plain functions (no server): presets fill every control and read back exactly, each
control sets exactly one config field, bad uploads and links warn without breaking anything, share links restore
every control, and a run on the embedded model returns the images, the table and the charts."""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import FAST_RUN
from matplotlib.figure import Figure

from lab import api, fields, results, run_panel, sharing, text
from lab import controls as ui
from lab.context import ServerContext
from lab.fields import CONTROL_KEYS, OPTIM_KEYS
from optim.config import AttentionConfig, OptimConfig, RunSpec
from optim.errors import ConfigError
from optim.presets import make_preset, preset_from_json, preset_to_json, shipped_preset_names

CTX = ServerContext.create()
DEFAULT_VALUES = sharing.default_values(CTX)
NO_CHANGE = ui.no_change()


@pytest.fixture(scope="module", autouse=True)
def _close_context():
    yield
    CTX.close()


def as_values(outputs: list) -> dict:
    """The control values from a handler's `fill` outputs."""
    return dict(zip(CONTROL_KEYS, outputs[: len(CONTROL_KEYS)]))


def values(**changes) -> dict:
    """The default controls with some changed (keys use '__' for '.': cache__method='first_block_cache')."""
    out = dict(DEFAULT_VALUES)
    for key, value in changes.items():
        key = key.replace("__", ".")
        assert key in out, key
        out[key] = value
    return out


def refusal(outputs: list) -> str:
    """The headline of a refused run, after checking that no earlier result is left on screen and the history is
    kept: images, tables and charts are empty."""
    headline = outputs[0]
    assert "Not run" in headline, headline
    slider, heatmap, caption, metrics, *charts = outputs[1:9]
    assert slider is None and heatmap is None and caption == "" and metrics == [] and charts == [None] * 4
    assert outputs[11] is None  # the report files
    assert all(isinstance(v, dict) and v.get("__type__") == "update" and len(v) == 1 for v in outputs[-2:])  # skip
    return headline


def flat(data, prefix=""):
    """{'cache.threshold': 0.1, ...}: the leaves of a settings dump (lists are leaves)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", shipped_preset_names())
def test_every_shipped_preset_fills_the_controls_and_reads_back_exactly(name):
    start = values(run__seed=11, run__steps=7)
    outputs = sharing.load_shipped(CTX, name, start)
    filled = as_values(outputs)
    assert outputs[len(CONTROL_KEYS)] == name  # the picker shows it
    preset, run = fields.settings_from_values(filled, CTX.shipped)
    assert preset == CTX.shipped[name]  # name, description, hardware and every optimization
    assert (run.seed, run.steps) == (11, 7), "picking a preset keeps the run settings"
    assert fields.optim_from_values(filled) == CTX.shipped[name].optim


def test_unknown_shipped_preset_warns_and_changes_nothing():
    with pytest.warns(UserWarning, match="unknown preset"):
        assert sharing.load_shipped(CTX, "no-such-preset", values()) == NO_CHANGE


# A non-default value for each control, and what else must be set for that control to be in effect.
def _active(key: str) -> dict:
    parts = key.split(".")
    if parts[0] == "cache" and key != "cache.method":
        base = {"cache.method": parts[1]}
        if key == "cache.mag_cache.mag_ratios.custom":
            base.update({"cache.mag_cache.mag_ratios": "custom", key: "1.0, 0.9, 0.8"})
        return base
    if parts[0] == "quantization" and key != "quantization.backend":
        return {"quantization.backend": parts[1] if len(parts) == 3 else "torchao"}
    if parts[0] == "offload" and key != "offload.mode":
        base = {"offload.mode": "group"}
        if key == "offload.record_stream":
            base["offload.use_stream"] = True
        return base
    if parts[0] == "compile" and key not in ("compile.mode", "compile.recommended_dynamo_settings"):
        return {"compile.mode": "regional"}
    return {}


def _other(key: str, current):
    """A different valid value for the control `key`."""
    special = {
        "attention.backend": "_native_math",
        "cache.method": "first_block_cache",
        "quantization.backend": "quanto",
        "quantization.components": ["transformer", "vae"],
        "offload.mode": "group",
        "compile.mode": "full",
        "compile.inductor_mode": "max-autotune",
        "cache.mag_cache.mag_ratios": "flux",
        "cache.mag_cache.mag_ratios.custom": "1.0, 0.8",
        "cache.taylorseer.disable_cache_after_step": 12,
        "cache.faster_cache.is_guidance_distilled": "on",
        "compile.dynamic": "off",
    }
    if current in ("auto", "on", "off") and key not in special:  # any other tri-state (bool | None) field
        return "on" if current != "on" else "off"
    if key in special:
        return special[key]
    if isinstance(current, bool):
        return not current
    if isinstance(current, str):
        choices = {
            "offload.offload_type": "leaf_level",
            "cache.faster_cache.tensor_format": "BFCHW",
            "cache.taylorseer.taylor_factors_dtype": "float32",
            "quantization.bitsandbytes_4bit.quant_type": "fp4",
            "quantization.bitsandbytes_4bit.compute_dtype": "float16",
            "quantization.torchao.quant_type": "int8_dynamic",
            "quantization.quanto.weights": "int4",
            "cache.cache_dit_dbcache.calibrator": "taylorseer",
            "cache.cache_dit_steps_mask.calibrator": "none",
            "cache.cache_dit_steps_mask.policy": "custom",
            "cache.cache_dit_steps_mask.compute_bins": "4, 2, 2",
            "cache.cache_dit_steps_mask.cache_bins": "2, 3",
            "quantization.layerwise_casting.storage_dtype": "float8_e5m2",
        }
        return choices[key]
    if isinstance(current, float):
        return round(current + 0.03, 4) if current + 0.03 <= 1.0 else round(current - 0.03, 4)
    assert isinstance(current, int), (key, current)
    if key.endswith(".to"):
        return current - 1
    return current + 1


@pytest.mark.parametrize("key", OPTIM_KEYS)
def test_each_control_sets_exactly_one_config_field(key):
    base = values(**{k.replace(".", "__"): v for k, v in _active(key).items()})
    before = fields.optim_from_values(base)
    changed = dict(base)
    changed[key] = _other(key, base[key])
    after = fields.optim_from_values(changed)
    diff = {path for path, value in flat(after.model_dump(mode="json")).items()
            if flat(before.model_dump(mode="json")).get(path, object()) != value}
    parts = key.split(".")
    if parts[-1] in ("from", "to", "custom"):
        parts = parts[:-1]
    if parts[0] in ("cache", "quantization") and len(parts) == 3:
        parts = [parts[0], parts[2]]  # the variant is picked by the method/backend control
    expected = ".".join(parts)
    if key in ("cache.method", "quantization.backend"):
        assert f"{parts[0]}.{'method' if parts[0] == 'cache' else 'backend'}" in diff
    else:
        assert diff == {expected}, f"{key} changed {diff}"


def test_a_bad_combination_gives_the_engines_message():
    bad = values(offload__mode="group", offload__record_stream=True)
    with pytest.raises(ConfigError, match="record_stream needs use_stream"):
        fields.settings_from_values(bad, CTX.shipped)
    assert "record_stream needs use_stream" in text.settings_summary(CTX, bad)
    assert "record_stream" in refusal(run_panel.run_comparison(CTX, bad, []))
    assert "not a list of numbers" in refusal(run_panel.run_comparison(
        CTX, values(cache__method="mag_cache", cache__mag_cache__mag_ratios="custom",
                    **{"cache__mag_cache__mag_ratios__custom": "1.0, lots"}), []))


def test_run_controls_round_trip_and_model_defaults_fill_in():
    run = RunSpec(model="embedded", prompt="a small red square at the top left on a black background",
                  negative_prompt="blurry", seed=9, steps=5, width=96, height=64, guidance_scale=2.5,
                  max_sequence_length=24, dtype="float32", device="cpu", warmup_runs=2, timed_runs=2)
    assert fields.run_from_values(fields.values_from_run(run, CTX.defaults_for("embedded"))) == run
    applied = {key: DEFAULT_VALUES[key] for key in ui.MODEL_DEFAULT_KEYS}
    filled = as_values(ui.load_model_defaults(CTX, "synthetic:flux-schnell", applied, values()))
    assert (filled["run.steps"], filled["run.guidance_scale"], filled["run.max_sequence_length"]) == (4, 0.0, 256)
    assert filled["attention.backend"] == DEFAULT_VALUES["attention.backend"]
    with pytest.warns(UserWarning, match="unknown model"):
        assert ui.load_model_defaults(CTX, "not a model!", applied, values()) == NO_CHANGE + [gr.skip()]


def test_a_new_model_keeps_what_the_user_typed_and_the_button_sets_the_models_own():
    """Issue: typing a model id overwrote the prompt and reset steps, size and guidance without asking."""
    applied = {key: DEFAULT_VALUES[key] for key in ui.MODEL_DEFAULT_KEYS}
    edited = values(run__prompt="my own prompt", run__steps=7)
    outputs = ui.load_model_defaults(CTX, "synthetic:flux-schnell", applied, edited)
    filled, new_applied = as_values(outputs), outputs[-1]
    assert filled["run.prompt"] == "my own prompt" and filled["run.steps"] == 7  # edited: kept
    assert filled["run.guidance_scale"] == 0.0 and filled["run.max_sequence_length"] == 256  # not edited: the model's
    assert new_applied["run.steps"] == 4 and new_applied["run.prompt"] == CTX.defaults_for("synthetic:flux-schnell").prompt
    # "Use this model's recommended settings" sets the edited ones too.
    recommended = as_values(ui.load_model_defaults(CTX, "synthetic:flux-schnell", new_applied, filled, overwrite=True))
    assert recommended["run.steps"] == 4 and recommended["run.prompt"] == new_applied["run.prompt"]
    # Back to the embedded model: what still shows the previous model's defaults follows the new model.
    back = as_values(ui.load_model_defaults(CTX, "embedded", new_applied, recommended))
    assert (back["run.steps"], back["run.prompt"]) == (DEFAULT_VALUES["run.steps"], DEFAULT_VALUES["run.prompt"])


def test_a_refused_run_says_why_where_the_result_was_and_clears_the_old_result():
    """Issues: steps 0 ran silently with 1 step; a failed run left the previous result on screen."""
    steps_zero = refusal(run_panel.run_comparison(CTX, values(run__steps=0), [{"number": 1}]))
    assert "run.steps: 0 is out of range; it must be &gt;= 1" in steps_zero
    assert "77 is not a multiple of 16; use 64 or 80" in refusal(run_panel.run_comparison(CTX, values(run__width=77),
                                                                                         []))
    assert "Cannot run:</b> run.steps: 0 is out of range" in text.settings_summary(CTX, values(run__steps=0))


def test_numeric_controls_keep_what_was_typed():
    """Gradio clamps a value typed into a slider or a number box with a minimum (0 became 1, and ran): the
    numeric controls have no bounds of their own; the settings check names a value out of range."""
    from lab.layout import build_demo

    demo = build_demo(CTX)
    for block in demo.blocks.values():
        key = getattr(block, "elem_id", None) or ""
        if key.startswith("ctl-"):
            assert not isinstance(block, gr.Slider), key
            if isinstance(block, gr.Number):
                assert block.minimum is None and block.maximum is None, key
    assert "only meaningful on a GPU" in text.model_note(CTX, "synthetic:flux-dev")


# ------------------------------------------------------------------------------------------ share links


def _scenarios() -> list[tuple[str, dict]]:
    """Control values with every in-effect control away from its default, one scenario per variant."""
    run = dict(run__prompt="a large blue triangle at the bottom right on a yellow background", run__seed=12345,
               run__steps=9, run__width=96, run__height=112, run__guidance_scale=4.5, run__negative_prompt="noise",
               run__max_sequence_length=20, run__dtype="float32", run__device="cpu", run__warmup_runs=2,
               run__timed_runs=4, preset__name="my-settings", preset__description="tried on a laptop")
    out = [("run settings", values(**run))]
    for key in OPTIM_KEYS:
        active = {k.replace(".", "__"): v for k, v in _active(key).items()}
        scenario = values(**run, **active)
        scenario[key] = _other(key, scenario[key])
        out.append((key, scenario))
    return out


@pytest.mark.parametrize("label,controls", _scenarios(), ids=[label for label, _ in _scenarios()])
def test_share_link_round_trips_every_control(label, controls):
    link = sharing.share_link(CTX, controls)
    assert link.startswith("?s=")
    restored, shipped = sharing.restore_from_link(CTX, link[len("?s="):])
    assert restored == controls
    assert shipped is None


def test_share_link_of_a_shipped_preset_selects_it_in_the_picker():
    controls = as_values(sharing.load_shipped(CTX, "first-block-cache", values(run__seed=3)))
    restored, shipped = sharing.restore_from_link(CTX, sharing.share_token(CTX, controls))
    assert restored == controls and shipped == "first-block-cache"


def _token(payload) -> str:
    return base64.urlsafe_b64encode(zlib.compress(json.dumps(payload).encode())).decode().rstrip("=")


GOOD = sharing.share_token(CTX, values(cache__method="first_block_cache", preset__name="x"))
BAD_LINKS = {
    "garbage": "%%%not-a-token%%%",
    "not zlib": base64.urlsafe_b64encode(b"hello world").decode(),
    "truncated": GOOD[: len(GOOD) // 2],
    "oversized": "A" * (CTX.limits.max_link_chars + 1),
    "bad field": _token({"v": 1, "preset": {"schema_version": 1, "name": "x",
                                            "optim": {"cache": {"method": "first_block_cache", "threshold": 5}}},
                         "run": {}}),
    "unknown key": _token({"v": 1, "preset": {"schema_version": 1, "name": "x", "optim": {"turbo": True}}}),
    "bad run": _token({"v": 1, "preset": {"schema_version": 1, "name": "x"}, "run": {"steps": 0}}),
    "beyond limits": _token({"v": 1, "preset": {"schema_version": 1, "name": "x"},
                             "run": {"steps": CTX.limits.max_steps + 1}}),
    "unknown model": _token({"v": 1, "preset": {"schema_version": 1, "name": "x"}, "run": {"model": "no such!"}}),
    "wrong version": _token({"v": 99, "preset": {"schema_version": 1, "name": "x"}}),
    "not an object": _token([1, 2, 3]),
    "zip bomb": base64.urlsafe_b64encode(zlib.compress(b"{" + b" " * 1_000_000 + b"}", 9)).decode(),
}


@pytest.mark.parametrize("name", sorted(BAD_LINKS))
def test_a_bad_link_warns_and_gives_the_defaults(name):
    with pytest.warns(UserWarning, match="share link could not be used"):
        restored, shipped = sharing.restore_from_link(CTX, BAD_LINKS[name])
    assert restored == DEFAULT_VALUES and shipped is None


class FakeRequest:
    def __init__(self, query):
        self.query_params = query
        self.session_hash = "test-session"


def test_page_load_restores_a_link_or_the_defaults_and_lists_saved_presets():
    controls = values(run__seed=77, cache__method="taylorseer", preset__name="shared")
    outputs = sharing.on_page_load(CTX, {"b": "{}", "a": "{}"}, FakeRequest({"s": sharing.share_token(CTX, controls)}))
    assert as_values(outputs) == controls and outputs[len(CONTROL_KEYS)] == ui.CUSTOM_PRESET
    assert outputs[-1]["choices"] == ["a", "b"]
    with pytest.warns(UserWarning):
        outputs = sharing.on_page_load(CTX, None, FakeRequest({"s": "broken"}))
    assert as_values(outputs) == DEFAULT_VALUES and outputs[len(CONTROL_KEYS)] == "baseline"
    # No link: the page already shows the defaults, and what a user typed meanwhile stays (nothing is filled).
    outputs = sharing.on_page_load(CTX, None, FakeRequest({}))
    assert outputs[:-1] == NO_CHANGE


# ------------------------------------------------------------------------------- upload, download, browser


def _upload(tmp_path: Path, content: bytes) -> str:
    path = tmp_path / "preset.json"
    path.write_bytes(content)
    return str(path)


BAD_UPLOADS = {
    "invalid json": b'{"schema_version": 1, "name": ',
    "unknown key": json.dumps({"schema_version": 1, "name": "x", "optim": {"cache": {"method": "none"}},
                               "speed": "max"}).encode(),
    "bad value": json.dumps({"schema_version": 1, "name": "x", "optim": {"compile": {"mode": "turbo"}}}).encode(),
    "oversized": b'{"schema_version": 1, "name": "x", "description": "' + b"x" * 70_000 + b'"}',
    "not utf-8": b"\xff\xfe{}",
    "a list": b"[]",
    "duplicate key": b'{"schema_version": 1, "name": "x", "name": "y"}',
}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_a_bad_upload_warns_and_changes_nothing(tmp_path, name):
    with pytest.warns(UserWarning, match="preset file was not loaded"):
        outputs = sharing.import_preset(CTX, _upload(tmp_path, BAD_UPLOADS[name]), values())
    assert outputs == NO_CHANGE + [None]


def test_download_then_upload_round_trips(tmp_path):
    controls = as_values(sharing.load_shipped(CTX, "pyramid-attention-broadcast", values()))
    controls["cache.pyramid_attention_broadcast.spatial_attention_block_skip_range"] = 3
    file_update, code_update = sharing.export_preset(CTX, controls)
    text = Path(file_update["value"]).read_text()
    assert text == code_update["value"]
    preset = preset_from_json(text)
    assert preset.name == "pyramid-attention-broadcast-modified"
    assert preset.optim.cache.spatial_attention_block_skip_range == 3
    restored = as_values(sharing.import_preset(CTX, file_update["value"], values(run__seed=5)))
    assert fields.optim_from_values(restored) == preset.optim and restored["run.seed"] == 5


def test_presets_saved_in_the_browser_save_load_delete():
    controls = values(cache__method="first_block_cache", preset__name="Mine 1", preset__description="d")
    saved, picker = sharing.save_to_browser(CTX, controls, {})
    assert list(saved) == ["mine-1"] and picker["value"] == "mine-1"
    assert preset_from_json(saved["mine-1"]).optim.cache.method == "first_block_cache"
    loaded = as_values(sharing.load_from_browser(CTX, "mine-1", saved, values(run__seed=4)))
    assert fields.optim_from_values(loaded) == fields.optim_from_values(controls) and loaded["run.seed"] == 4
    with pytest.warns(UserWarning, match="could not be loaded"):
        assert sharing.load_from_browser(CTX, "mine-1", {"mine-1": '{"nope": 1}'}, values()) == NO_CHANGE
    saved, picker = sharing.delete_from_browser("mine-1", saved)
    assert saved == {} and picker["choices"] == []


def test_api_preset_argument_takes_a_name_or_json():
    assert api.preset_from_api(CTX, "first-block-cache") == CTX.shipped["first-block-cache"]
    text = preset_to_json(make_preset("x", OptimConfig()))
    assert api.preset_from_api(CTX, text).name == "x"
    with pytest.raises(ConfigError, match="neither"):
        api.preset_from_api(CTX, "fastest-please")


# -------------------------------------------------------------------------------------------- running


class Recorder:
    def __init__(self, on_desc=None):
        self.descriptions = []
        self.on_desc = on_desc

    def __call__(self, progress=None, desc=None, total=None, unit="steps"):
        self.descriptions.append(desc)
        if self.on_desc:
            self.on_desc(desc or "")


FAST = {f"run__{k}": v for k, v in FAST_RUN.items()}


def test_run_returns_images_table_and_charts_then_reuses_the_baseline():
    CTX.baselines.clear()
    controls = as_values(sharing.load_shipped(CTX, "first-block-cache", values(**FAST, run__seed=1)))
    progress = Recorder()
    outputs = run_panel.run_comparison(CTX, controls, [], progress)
    (headline, pair, heatmap, caption, table, latency, memory, per_step, work, details, report, files) = outputs[:12]
    history, history_table = outputs[results.VIEW_COUNT:]
    assert "Speedup" in headline and "Peak memory" in headline and "Work skipped" in headline
    baseline, optimized = pair
    for image in (baseline, optimized, heatmap["value"]):
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape[2] == 3
    assert baseline.shape[:2] == (report["run"]["height"], report["run"]["width"])
    scale = report["quality"]["heatmap_scale"]
    assert f"white = {scale} level" in caption or (report["quality"]["max_abs_diff"] == 0 and "identical" in caption)
    metrics = {row[0]: row[1:] for row in table}
    for name in ("own time median (min-max)", "wall time median (min-max)", "speedup (95% CI, verdict)", "timed runs",
                 "mean time per step",
                 "peak memory", "peak memory saving (95% CI)",
                 "load time", "compile time (cold)", "PSNR vs baseline", "SSIM vs baseline",
                 "max / mean abs diff (0-255)", "transformer work skipped"):
        assert name in metrics, name
    assert all(isinstance(figure, Figure) for figure in (latency, memory, per_step, work))
    assert "cache: first_block_cache" in details
    assert report["preset"]["name"] == "first-block-cache" and report["baseline"]["reused"] is False
    assert report["run"]["steps"] == FAST_RUN["steps"] and report["speedup"] > 0
    assert {Path(f).name for f in files} >= {"report.json", "baseline.png", "optimized.png", "diff.png"}
    assert json.loads(Path(files[0]).read_text())["speedup"] == pytest.approx(report["speedup"])
    assert len(history) == 1 and history_table[0][1] == "first-block-cache"
    seen = " | ".join(d for d in progress.descriptions if d)
    assert "Baseline · loading" in seen and "Optimized · timed run 1/1" in seen and "Metrics" in seen

    # Same run settings, another preset: the baseline's process was kept warm (load reused, runs timed again).
    controls = as_values(sharing.load_shipped(CTX, "baseline", controls))
    outputs = run_panel.run_comparison(CTX, controls, history, Recorder())
    headline, report, history, history_table = outputs[0], outputs[10], *outputs[results.VIEW_COUNT:]
    assert report["baseline"]["reused"] is True and "baseline kept warm" in headline
    assert "taken now, in turns" in report["timing"]["baseline_reuse"]
    assert report["quality"]["max_abs_diff"] == 0
    assert [row[0] for row in history_table] == [2, 1]

    # Selecting the older row of the history shows it again.
    class Select:
        index = [1, 0]

    again = results.show_history_entry(history, Select())
    assert again[10]["preset"]["name"] == "first-block-cache"


def test_cancel_stops_the_run_and_the_app_keeps_working():
    CTX.baselines.clear()
    controls = values(**FAST, run__seed=2)
    request = FakeRequest({})
    progress = Recorder(on_desc=lambda desc: run_panel.cancel_run(CTX, request) if "warm-up" in desc else None)
    outputs = run_panel.run_comparison(CTX, controls, [], progress, request)
    assert outputs == [gr.skip()] * (results.VIEW_COUNT + 2)
    assert not CTX.active.stop(request.session_hash), "the cancelled run is no longer registered"
    # The app keeps working: the same session runs the next comparison to the end.
    controls = as_values(sharing.load_shipped(CTX, "first-block-cache", values(**FAST, run__seed=3)))
    outputs = run_panel.run_comparison(CTX, controls, [], Recorder(), request)
    report = outputs[10]
    assert report["run"]["seed"] == 3 and report["preset"]["name"] == "first-block-cache"
    assert report["optimized"]["applied"] == ["cache: first_block_cache (threshold=0.1)"]
    assert len(outputs[results.VIEW_COUNT]) == 1


def test_an_unavailable_option_is_refused_before_loading():
    controls = values(**FAST, attention__backend="flash")
    assert "not available here" in refusal(run_panel.run_comparison(CTX, controls, []))
    assert "needs a CUDA GPU" in refusal(run_panel.run_comparison(CTX, values(**FAST, run__model="synthetic:flux-dev"),
                                                                  []))


def test_editing_a_control_unselects_the_shipped_preset_it_no_longer_matches():
    controls = as_values(sharing.load_shipped(CTX, "first-block-cache", values()))
    assert ui.on_edit(CTX, controls)[1] == "first-block-cache"
    controls["cache.first_block_cache.threshold"] = 0.3
    summary, shipped = ui.on_edit(CTX, controls)
    assert shipped == ui.CUSTOM_PRESET and "threshold=0.3" in summary
    assert sharing.load_shipped(CTX, ui.CUSTOM_PRESET, controls) == NO_CHANGE


def test_handlers_are_safe_to_call_from_threads():
    """Many users at once, all starting together: the live check, share links, downloads into the server's
    folder, presets saved in browsers and the registry of running comparisons, with different inputs each."""
    count = 24
    barrier = threading.Barrier(count)
    errors = []
    methods = ["first_block_cache", "taylorseer", "mag_cache", "pyramid_attention_broadcast", "faster_cache"]

    def user(index: int) -> None:
        rng = random.Random(index)
        method = methods[index % len(methods)]
        controls = values(cache__method=method, run__seed=index, run__steps=rng.randint(2, 30),
                          preset__name=f"user-{index}")
        request = FakeRequest({})
        request.session_hash = f"session-{index}"
        try:
            barrier.wait(timeout=60)
            assert f"method={method}" in text.settings_summary(CTX, controls)
            restored, _ = sharing.restore_from_link(CTX, sharing.share_token(CTX, controls))
            assert restored == controls
            file_update, _ = sharing.export_preset(CTX, controls)
            assert preset_from_json(Path(file_update["value"]).read_text()).name == f"user-{index}"
            saved, _ = sharing.save_to_browser(CTX, controls, {})
            assert list(saved) == [f"user-{index}"]
            flag = CTX.active.start(request.session_hash)
            assert CTX.active.stop(request.session_hash) and flag.is_set()
            CTX.active.finish(request.session_hash, flag)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append((index, error))

    threads = [threading.Thread(target=user, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert len(list(CTX.reports_dir.glob("preset-*"))) >= count


def test_example_prompts_are_in_each_embedded_models_grammar():
    """The example prompts under the prompt box are ones the embedded models were trained on: each set parses
    with its model's caption grammar, and neither model's grammar accepts the other's (no motion / no position)."""
    from embedded import dataset, video_dataset

    for prompt in ui.EXAMPLE_PROMPTS:
        dataset.parse_caption(prompt)
        with pytest.raises(ValueError):
            video_dataset.parse_caption(prompt)
    for prompt in ui.VIDEO_EXAMPLE_PROMPTS:
        video_dataset.parse_caption(prompt)
        with pytest.raises(ValueError):
            dataset.parse_caption(prompt)


def test_help_text_never_hands_gradio_an_emphasis_mark():
    """Gradio's `info` takes `*` as emphasis and drops it (the attention help read "_flash_3 FlashAttention-3;
    sage SageAttention" with the words between two stars in italics): no control's help holds one."""
    from lab.text import plain_markdown

    controls = {}
    ui.make_field_controls(CTX, DEFAULT_VALUES, "attention", AttentionConfig, "backend", controls)
    info = controls["attention.backend"].info
    assert "_flash_3 and _flash_varlen_3" in info and "ending in _hub" in info and "*" not in info
    assert plain_markdown("sage* and *_hub") == "sage\u2217 and \u2217_hub"


def test_the_capabilities_panel_folds_into_sections_without_emoji():
    sections = text.capabilities_sections(CTX.capabilities)
    titles = [title for title, _ in sections]
    assert any(title.startswith("Attention backends: ") and " of " in title and title.endswith(" here")
               for title in titles), titles
    everything = " ".join(body for _, body in sections)
    assert not any(ord(ch) > 0x2FFF for ch in everything), "an emoji shows as an empty box without an emoji font"
    assert "| `native` | yes |" in everything and "| no |" in everything


def test_sweep_rows_say_identical_and_progress_counts_points():
    from lab import sweep_panel

    row = {"id": "a", "label": "attention _native_flash", "status": "ok", "speedup": 1.0, "speedup_low": 0.98,
           "speedup_high": 1.02, "verdict": "equivalent", "work_fraction": 1.0, "ssim_worst": 1.0,
           "psnr_worst": 99.0}
    cells = sweep_panel.table_rows([row], set())[0]
    assert len(cells) == len(sweep_panel.TABLE_HEADERS) and "identical" in cells[4] and "99" not in cells[4]
    assert "equivalent" in cells[2]
    seen = []
    sweep_panel._progress_of(lambda value, desc, unit: seen.append((value, desc, unit)))("point 1/10", 0, 10)
    assert seen == [((0, 10), "point 1/10", "points")]


def test_the_summary_plans_each_sides_gpu_memory_before_running():
    """Without a GPU the summary plans for an RTX 4090 (OPTIM_PLAN_GPU names another) and says so; FLUX.1-dev as
    loaded does not fit it, NF4 on the transformer and T5 does."""
    summary = text.settings_summary(CTX, values())
    assert re.search(r"GPU memory, planned for GeForce RTX 4090 24 GB \(no GPU here.*: baseline \d+ MB, optimized \d+ MB "
                     r"of 24\.0 GiB", summary), summary
    flux = values(run__model="black-forest-labs/FLUX.1-dev", run__width=1024, run__height=1024)
    summary = text.settings_summary(CTX, flux)
    assert re.search(r"baseline 3\d\.\d GiB <span class='bad'>\(does not fit\)</span>", summary), summary
    nf4 = {**flux, "quantization.backend": "bitsandbytes_4bit",
           "quantization.components": ["transformer", "text_encoder_2"]}
    assert re.search(r"optimized 1\d\.\d GiB of 24\.0 GiB", text.settings_summary(CTX, nf4))
    assert "Will be refused" not in text.settings_summary(CTX, nf4)  # no GPU here: the CPU runs it


def test_a_side_that_cannot_fit_this_gpu_is_refused_before_loading(monkeypatch):
    """FLUX.1-dev, before anything loads: on a 24 GB GPU the baseline (the model as loaded, 31.4 GiB of weights)
    is refused whatever the other side does, saying so; on a card just large enough for the baseline, an
    optimized side that needs more (the math attention path's score matrix) is refused with what to try; on an
    80 GB GPU both pass the check."""
    from dataclasses import replace

    from optim.config import parse_optim, parse_run

    class OnGpu:  # this server's context, on a GPU of `memory` GiB
        cuda, zero_gpu = True, False

        def __init__(self, memory: float) -> None:
            self.device = replace(CTX.device, cuda=True, device="cuda", name="NVIDIA test", memory_gb=memory)

        def __getattr__(self, name: str):
            return getattr(CTX, name)

        def resolve(self, model: str) -> None:
            return None

    loaded = []
    monkeypatch.setattr(run_panel, "compare", lambda *a, **k: loaded.append(a) or "compared")
    run = parse_run({"model": "black-forest-labs/FLUX.1-dev", "width": 1024, "height": 1024, "steps": 4})
    offload = make_preset("offload", parse_optim({"offload": {"mode": "model_cpu"}}))
    math = make_preset("math", parse_optim({"attention": {"backend": "_native_math"}}))
    with pytest.raises(ConfigError, match=r"will not fit: the baseline side needs about 3\d\.\d GiB .*this GPU "
                                          r"\(NVIDIA test\) has 24\.0; .* weights alone take 31\.\d GiB: compare on a "
                                          r"larger GPU"):
        run_panel.execute(OnGpu(23.99), run, offload)
    with pytest.raises(ConfigError, match=r"will not fit: the optimized side needs about 35\.\d GiB .*has 35\.6: "
                                          r"try \S+"):
        run_panel.execute(OnGpu(35.6), run, math)
    assert not loaded
    for preset in (offload, math):
        assert run_panel.execute(OnGpu(79.19), run, preset) == "compared"
