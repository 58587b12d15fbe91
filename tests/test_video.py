"""Video end to end, and the models a user can pick for every family: frames out of a pipeline, per-frame and
temporal quality, MP4 + lossless frames on disk, the report and report.md, the app's video views, the tiny and
embedded-video models, the full-size synthetic builds (written small here), the frame limit, and the CLI on
every tiny family (`python -m optim compare --model tiny:KEY`).

Cost: about a minute; the CLI runs share one worker start (in-process `optim.cli.main`, each side in its own
worker process as usual), one `python -m optim` subprocess checks a refusal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from optim import families as F
from optim.config import parse_optim, parse_run
from optim.errors import ConfigError, ModelError, RunError
from optim.report_model import Report

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
KEYS = list(F.FAMILIES)
SKIPPING_MAG_CACHE = {"method": "mag_cache", "mag_ratios": [1.0, 1.0], "threshold": 2.0, "retention_ratio": 0.0}


# ------------------------------------------------------------------------------------------------ frames


def test_to_uint8_gives_an_image_or_a_videos_frames():
    from optim.generation import to_uint8

    assert to_uint8(np.full((1, 8, 6, 3), 0.5)).shape == (8, 6, 3)
    frames = to_uint8(np.linspace(0, 1, 2 * 9 * 8 * 6 * 3).reshape(2, 9, 8, 6, 3))
    assert frames.shape == (9, 8, 6, 3) and frames.dtype == np.uint8 and frames[0, 0, 0, 0] == 0
    assert to_uint8([[np.zeros((8, 6, 3))] * 5]).shape == (5, 8, 6, 3)  # a list of videos of frames
    with pytest.raises(RunError, match="output video contains NaN"):
        to_uint8(np.full((1, 3, 4, 4, 3), np.nan))


def test_video_quality_frame_by_frame_and_in_time():
    from optim.metrics import diff_heatmap, image_quality

    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (5, 16, 16, 3), dtype=np.uint8)
    other = base.copy()
    other[2] += 10  # one frame brighter by 10 levels: its PSNR is 10*log10(255^2/100)
    quality = image_quality(base, other)
    video = quality["video"]
    assert video["frames"] == 5 and video["worst_frame"] == 2
    assert video["psnr_db_per_frame"][:2] == [None, None] and video["psnr_db_per_frame"][3:] == [None, None]
    assert video["psnr_db_worst"] == pytest.approx(10 * np.log10(255**2 / 100))
    assert video["psnr_db_mean"] == video["psnr_db_worst"]  # the mean counts the frames that differ
    assert quality["psnr_db"] == pytest.approx(10 * np.log10(255**2 / 20))  # pooled: 100 over 5 frames
    assert quality["max_abs_diff"] == 10 and quality["changed_pixels"] == pytest.approx(0.2)
    # The change into frame 2 and out of it differs by 10 everywhere; the others not at all.
    assert video["temporal_diff_per_transition"] == [0.0, 10.0, 10.0, 0.0]
    assert video["temporal_diff_mean"] == 5.0 and video["temporal_diff_max"] == 10.0
    assert video["ssim_per_frame"][0] == 1.0 and video["ssim_worst"] < 1.0
    heatmap, scale = diff_heatmap(base, other)
    assert heatmap.shape == (5, 16, 16, 3) and scale == 10
    assert (heatmap[0] == heatmap[0, 0, 0]).all() and heatmap[2].mean() > heatmap[0].mean()  # one scale
    same = image_quality(base, base)
    assert same["psnr_db"] is None and same["video"]["temporal_diff_mean"] == 0.0


def test_frames_are_kept_losslessly_and_as_mp4(tmp_path):
    from optim.video import (
        frame_sheet,
        read_frames_png,
        read_mp4,
        sheet_layout,
        split_sheet,
        write_frames_png,
        write_mp4,
    )

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (7, 16, 24, 3), dtype=np.uint8)
    assert sheet_layout(7) == (3, 3) and sheet_layout(49) == (7, 7) and sheet_layout(81) == (9, 9)
    assert np.array_equal(split_sheet(frame_sheet(frames), 7), frames)
    write_frames_png(frames, tmp_path / "frames.png")
    assert np.array_equal(read_frames_png(tmp_path / "frames.png", 7), frames)
    flat = np.full((9, 30, 46, 3), 120, np.uint8)  # even sides for H.264 come from padding, not resizing
    write_mp4(flat, tmp_path / "clip.mp4", fps=16)
    back, fps = read_mp4(tmp_path / "clip.mp4")
    assert back.shape == (9, 30, 46, 3) and fps == 16.0 and np.abs(back.astype(int) - 120).max() <= 2
    assert (tmp_path / "clip.mp4").read_bytes()[4:8] == b"ftyp"


# ------------------------------------------------------------------------------------------------ models


def test_tiny_models_resolve_with_their_defaults():
    from optim.models import TINY_NOTE, model_defaults, resolve_model, resolve_run

    for key in KEYS:
        ref = resolve_model(f"tiny:{key}")
        assert ref.kind == "tiny" and Path(ref.location) == F.tiny_model_path(key)
        defaults = model_defaults(ref)
        assert (defaults.num_frames is not None) == F.FAMILIES[key].video
        assert defaults.steps == F.FAMILIES[key].tiny.steps
    run = resolve_run(parse_run({"model": "tiny:wan", "num_frames": 5}), resolve_model("tiny:wan"),
                      cuda_available=False)
    assert (run.num_frames, run.fps) == (5, 16)
    with pytest.raises(ModelError, match=TINY_NOTE):
        resolve_model("tiny:sdxl")


def test_embedded_video_model_resolves_once_it_is_there(tmp_path, monkeypatch):
    from optim import models

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setitem(models.EMBEDDED_MODELS, "embedded-video", empty)
    with pytest.raises(ModelError, match="not in this copy yet.*tiny:cogvideox"):
        models.resolve_model("embedded-video")
    folder = tmp_path / "tiny-cogvideox"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "CogVideoXPipeline"}))
    (folder / "lab_defaults.json").write_text(json.dumps(
        {"prompt": "a red circle moving left on a blue background", "negative_prompt": "", "steps": 8, "width": 64,
         "height": 64, "guidance_scale": 1.0, "max_sequence_length": 16, "num_frames": 9, "fps": 8}))
    monkeypatch.setitem(models.EMBEDDED_MODELS, "embedded-video", folder)
    ref = models.resolve_model("embedded-video")
    assert ref.kind == "embedded" and models.model_defaults(ref).num_frames == 9


def test_popular_video_models_carry_frames_fps_and_size():
    from optim.models import POPULAR_MODELS

    assert POPULAR_MODELS["THUDM/CogVideoX-5b"].num_frames == 49
    assert (POPULAR_MODELS["THUDM/CogVideoX-5b"].width, POPULAR_MODELS["THUDM/CogVideoX-5b"].height) == (720, 480)
    wan = POPULAR_MODELS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]
    assert (wan.num_frames, wan.fps, wan.width, wan.height) == (81, 16, 832, 480)
    assert POPULAR_MODELS["Wan-AI/Wan2.1-T2V-14B-Diffusers"].width == 1280
    assert POPULAR_MODELS["black-forest-labs/FLUX.1-dev"].num_frames is None


def test_call_arguments_follow_the_family():
    from optim.generation import call_kwargs
    from optim.models import resolve_model, resolve_run

    def kwargs(key, **run):
        ref = resolve_model(f"tiny:{key}")
        resolved = resolve_run(parse_run({"model": f"tiny:{key}", **run}), ref, cuda_available=False)
        return call_kwargs(F.build_tiny_pipeline(key), resolved)

    wan, warnings = kwargs("wan", num_frames=5, fps=24)
    assert wan["num_frames"] == 5 and "fps" not in wan and not warnings  # fps is the MP4's
    assert wan["guidance_scale"] == 5.0 and wan["negative_prompt"] == "blurry, low quality"
    qwen, _ = kwargs("qwen-image")
    assert qwen["true_cfg_scale"] == 4.0 and "guidance_scale" not in qwen
    flux, warnings = kwargs("flux", num_frames=9, fps=8)
    assert "num_frames" not in flux and len(warnings) == 2 and all("makes images" in w for w in warnings)
    _, warnings = kwargs("cogvideox", num_frames=13)
    assert warnings == ["num_frames=13: CogVideoXPipeline makes 16 frames for that (CogVideoX: ask for 8k+1 frames, "
                        "e.g. 9, 17, 49; Wan: 4k+1, e.g. 9, 81)"]


@pytest.mark.parametrize("key, asked", [("cogvideox", 5), ("cogvideox", 9), ("cogvideox", 13), ("wan", 6), ("wan", 5)])
def test_frames_made_is_what_the_pipeline_returns(key, asked):
    out = F.build_tiny_pipeline(key)(prompt="a red fox", num_inference_steps=1, width=32, height=32,
                                     num_frames=asked, output_type="np", max_sequence_length=16).frames
    assert out.shape[1] == F.frames_made(key, asked)


def test_frames_times_pixels_are_capped():
    from optim.limits import Limits, check_run

    public = Limits.from_env({"OPTIM_PUBLIC": "1"})
    check_run(parse_run({"model": "tiny:cogvideox"}), public)
    with pytest.raises(ConfigError, match="run.num_frames x run.width x run.height: 81x"):
        check_run(parse_run({"model": "tiny:wan", "num_frames": 81, "width": 832, "height": 480}), public)
    assert Limits.from_env({"OPTIM_MAX_FRAME_PIXELS": "1000"}).max_frame_pixels == 1000


@pytest.mark.parametrize("name", ["qwen-image", "cogvideox-5b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_full_size_synthetic_builds_describe_and_size(name):
    from optim.synthetic import SYNTHETIC_MODELS, weights_bytes

    model = SYNTHETIC_MODELS[name]
    full = F.FULL_SIZE_MODELS[name]
    info = model.describe(f"synthetic:{name}")
    assert info.family == full.family and info.video == F.FAMILIES[full.family].video
    assert info.pipeline == F.FAMILIES[full.family].pipeline_class
    assert model.defaults.num_frames == full.settings.num_frames
    transformer_gb = full.published_params_b * 2
    assert transformer_gb < weights_bytes(model) / 1e9 < transformer_gb + 20  # + text encoder and VAE, bf16


@pytest.mark.parametrize("name", ["qwen-image", "cogvideox-5b", "wan2.1-t2v-1.3b"])
def test_synthetic_folders_load_and_run_like_real_ones(name, tmp_path):
    """The full-size writer on the tiny dimensions: the folder loads with from_pretrained and makes frames."""
    import dataclasses

    from optim.generation import pipeline_output, to_uint8
    from optim.models import ModelRef, load_pipeline
    from optim.synthetic import from_full_size, write_model

    full = F.FULL_SIZE_MODELS[name]
    tiny = F.TINY_CONFIGS[full.family]
    encoders = {}
    for component, (class_name, _) in full.text_encoders.items():
        config = dict(tiny[component])
        if "text_config" in config:
            config["text_config"] = {**config["text_config"], "vocab_size": 1000}
        else:
            config["vocab_size"] = 1000
        encoders[component] = (class_name, config)
    small = dataclasses.replace(full, transformer=tiny["transformer"], vae=tiny["vae"], text_encoders=encoders)
    write_model(from_full_size(small), tmp_path)
    pipe = load_pipeline(ModelRef(name, "local", str(tmp_path)), dtype="float32")  # the lab's own loading path
    pipe.set_progress_bar_config(disable=True)
    fam = F.FAMILIES[full.family]
    extra = {"num_frames": 9} if fam.video else {}
    out = to_uint8(pipeline_output(pipe("a red fox", num_inference_steps=2, width=32, height=32, output_type="np",
                                        max_sequence_length=16, **extra)))
    assert out.shape == ((9, 32, 32, 3) if fam.video else (32, 32, 3))


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def preset_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("preset") / "skip.json"
    path.write_text(json.dumps({"schema_version": 1, "name": "mag-skip", "description": "MagCache skipping step 2",
                                "optim": {"cache": SKIPPING_MAG_CACHE}}))
    return path


@pytest.mark.parametrize("key", KEYS)
def test_compare_on_every_tiny_family_through_the_cli(key, preset_file, tmp_path, capsys):
    """`python -m optim compare --model tiny:KEY`: a baseline and a cache preset, report.json, images or videos,
    quality; SD3 (no cache support at all) is refused up front with the reason and status 2."""
    fam = F.FAMILIES[key]
    args = ["compare", "--model", f"tiny:{key}", "--preset", str(preset_file), "--steps", "2", "--width", "32",
            "--height", "32", "--runs", "1", "--quiet", "--out", str(tmp_path)]
    if key == "sd3":
        done = subprocess.run([sys.executable, "-m", "optim", *args], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert "no CacheMixin" in lines[-1] and "cannot work on StableDiffusion3Pipeline" in lines[-1]
        assert not (tmp_path / "report.json").exists()
        return
    from optim.cli import main

    assert main(args) == 0
    assert f"tiny:{key}" in capsys.readouterr().out
    data = json.loads((tmp_path / "report.json").read_text())
    report = Report.model_validate(data)
    assert report.run["model"] == f"tiny:{key}" and report.optimized.work_fraction < 1.0
    assert report.quality.ssim <= 1.0 and report.quality.max_abs_diff > 0
    markdown = (tmp_path / "report.md").read_text()
    for name in ("baseline.png", "optimized.png", "diff.png", "work.png"):
        assert (tmp_path / name).is_file() and name in report.files
    if not fam.video:
        assert "video" not in data and "video" not in data["quality"]  # image reports: as before
        assert "## Images" in markdown and "## Video" not in markdown
        return
    from optim.video import read_frames_png, read_mp4

    assert report.video.frames == 9 and report.video.fps == fam.tiny.fps and report.video.width == 32
    video = report.quality.video
    assert len(video.psnr_db_per_frame) == 9 and len(video.temporal_diff_per_transition) == 8
    assert video.temporal_diff_mean is not None and video.ssim_worst <= video.ssim_mean
    for side in ("baseline", "optimized", "diff"):
        frames, fps = read_mp4(tmp_path / f"{side}.mp4")
        assert frames.shape == (9, 32, 32, 3) and fps == fam.tiny.fps
        assert read_frames_png(tmp_path / f"{side}.png", 9).shape == (9, 32, 32, 3)
    assert (tmp_path / "frames.png").is_file() and "frames.png" in report.files
    assert "## Video" in markdown and "temporal diff" in markdown and "| 8 |" in markdown


# ------------------------------------------------------------------------------------------------ the app


@pytest.fixture(scope="module")
def video_comparison():
    from optim.engine import compare

    return compare(parse_run({"model": "tiny:cogvideox", "steps": 2, "timed_runs": 1}),
                   parse_optim({"cache": SKIPPING_MAG_CACHE}), isolation="inline")


def test_the_app_shows_a_video_comparison(video_comparison, tmp_path):
    import gradio as gr

    from lab import results, text

    files = results.save_report_files(SimpleNamespace(reports_dir=tmp_path), video_comparison)
    assert {Path(f).name for f in files} >= {"baseline.mp4", "optimized.mp4", "baseline.png", "frames.png"}
    with gr.Blocks():
        panel = results.build_results()
    entry, history = results.add_to_history([], video_comparison, files)
    values = results.render(entry)
    assert len(values) == len(panel.views) == results.VIEW_COUNT
    view = dict(zip(["headline", "slider", "heatmap", "caption"], values[:4]))
    worst = entry["report"].quality.video.worst_frame
    assert np.array_equal(view["slider"][0], video_comparison.baseline.image[worst])
    assert "worst frame" in view["headline"] and "× 9 frames" in view["headline"]
    tabs, summary, baseline_video, optimized_video, slider = values[12:17]
    assert tabs["selected"] == "tab-video" and "in sync" in summary
    assert baseline_video.endswith("baseline.mp4") and optimized_video.endswith("optimized.mp4")
    assert slider["maximum"] == 8 and slider["value"] == worst and slider["visible"] is True
    assert values[-1] is entry  # the entry the frame slider reads
    frame = results.frame_images(entry, 3)
    k = results.display_scale(video_comparison.baseline.image[3])
    assert k == 5 and frame[0].shape == (160, 160, 3)  # 32 px frames shown 5x, pixel by pixel
    assert np.array_equal(frame[0][::k, ::k], video_comparison.baseline.image[3])
    assert np.array_equal(frame[2][::k, ::k], video_comparison.heatmap[3]) and "Frame 3" in frame[3]
    # Older video entries drop their frames from memory and read them back, exactly, from the lossless sheets.
    for _ in range(results.FRAMES_IN_MEMORY):
        entry2, history = results.add_to_history(history, video_comparison, files)
    assert history[0]["baseline"] is None and history[-1]["baseline"] is not None
    assert np.array_equal(results.frame_images(history[0], 5)[1][::k, ::k], video_comparison.optimized.image[5])
    assert len(results.render(history[0])) == results.VIEW_COUNT
    assert text.video_caption(entry["report"], 4).startswith("**Frame 4** of 9: PSNR")


def test_model_notes_and_the_families_table():
    from lab import text
    from optim.models import resolve_model

    ctx = SimpleNamespace(resolve=resolve_model, cuda=False)
    note = text.model_note(ctx, "tiny:wan")
    assert "random weights: proves the lab's mechanics, not image quality" in note and "WanPipeline" in note
    assert "videos are noise" in text.model_note(ctx, "synthetic:wan2.1-t2v-1.3b")
    assert "49 frames" in text.model_note(ctx, "THUDM/CogVideoX-5b")
    table = text.families_markdown()
    assert all(f"`{key}`" in table for key in KEYS) and "_repeated_blocks" in table and "CacheMixin" in table


def test_capabilities_list_the_families_and_keep_the_option_paths():
    from optim.capabilities import detect

    caps = detect()
    assert list(caps.families) == KEYS
    assert caps.family_reason("cogvideox", "compile.regional") and caps.family_reason("wan", "compile.regional") is None
    assert "SD3Transformer2DModel has no CacheMixin" in caps.family_reason("sd3", "cache.first_block_cache")
    assert set(caps.to_json()) == {"device", "options"}  # the existing JSON keeps its shape
    assert "cogvideox:" in caps.families_text()
