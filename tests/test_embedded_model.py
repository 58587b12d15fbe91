"""The embedded tiny FLUX model: procedural data, deterministic build/training, and the shipped weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from embedded import architecture, dataset

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-flux"

# Prompts the shipped model draws correctly with its lab defaults and seed 0. Across the set every colour appears
# as shape and as background, and every shape, size and position word is used (test_checked_prompts_cover_the_
# vocabulary). Measured (dataset.shape_ious, seed 0), IoU with the caption's shape / margin over the best other shape:
CHECK_PROMPTS = [
    "a red circle on a blue background",  # 0.940 / 0.155
    "a yellow triangle on a black background",  # 0.901 / 0.377
    "a white square on a green background",  # 0.940 / 0.124
    "a green triangle on a white background",  # 0.940 / 0.301
    "a large white circle on a red background",  # 0.929 / 0.135
    "a small yellow triangle at the top left on a blue background",  # 0.796 / 0.130
    "a blue square at the top right on a white background",  # 0.964 / 0.135
    "a black circle at the bottom left on a yellow background",  # 0.928 / 0.116
    "a red square at the bottom right on a white background",  # 0.935 / 0.117
]

# What "draws the shape" means (dataset.shape_ious: the IoU of the pixels nearer the shape colour with each shape at
# the caption's size and position, best over the training jitter). A circle and a square of the same size overlap
# by about 0.8 even when drawn perfectly, so no IoU threshold alone tells them apart: the caption's shape must also
# match better than both other shapes, by a margin.
#   IoU >= 0.70: the shape is where and as large as the caption says (a shape one size off scores at most about
#     (0.22/0.294)^2 = 0.56 against the caption's size, 0.65 if drawn 8% larger itself; one in another corner
#     about 0). The checked prompts score
#     0.796-0.964; over 60 random prompts (python -m embedded.evaluate --prompts 60 --seeds 1 --shapes) the lowest
#     is 0.845.
#   margin >= 0.05: it is this shape, not another one. The checked prompts have 0.116-0.377, so the same image
#     under another shape word has a margin of -0.116 or less (a triangle's image under "circle" or "square" also
#     scores 0.52-0.67, under the IoU floor). The model's weak spot is small shapes in a corner, circles most:
#     over the 60 random prompts the margin is 0.020 at least, 0.062 at the 5th percentile; "a small green circle
#     at the top right on a black background" has 0.007, "a small blue circle at the top right on a yellow
#     background" 0.020. Such prompts are not among the checked ones.
MIN_SHAPE_IOU = 0.70
MIN_SHAPE_MARGIN = 0.05


def draws_shape(ious: dict[str, float], shape: str) -> bool:
    others = max(v for k, v in ious.items() if k != shape)
    return ious[shape] >= MIN_SHAPE_IOU and ious[shape] - others >= MIN_SHAPE_MARGIN


# ------------------------------------------------------------------------------------ dataset
def test_dataset_is_deterministic():
    a_img, a_cap = dataset.sample_dataset(24, seed=7)
    b_img, b_cap = dataset.sample_dataset(24, seed=7)
    c_img, _ = dataset.sample_dataset(24, seed=8)
    assert a_img.shape == (24, 128, 128, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    assert not np.array_equal(a_img, c_img)


def test_captions_follow_the_grammar():
    rng = np.random.default_rng(0)
    scenes = [dataset.sample_scene(rng) for _ in range(400)]
    plain = 0
    for s in scenes:
        assert s.colour != s.background
        cap = dataset.caption_scene(s)
        back = dataset.parse_caption(cap)
        assert (back.colour, back.shape, back.background, back.size, back.position) == (
            s.colour, s.shape, s.background, s.size, s.position)
        plain += cap == f"a {s.colour} {s.shape} on a {s.background} background"
    assert 0.4 < plain / len(scenes) < 0.6
    assert set(dataset.COLOURS) >= {"red", "green", "blue", "yellow", "white", "black"}
    assert set(dataset.SHAPES) == {"circle", "square", "triangle"}
    assert len(dataset.all_captions()) == len(set(dataset.all_captions()))
    with pytest.raises(ValueError):
        dataset.parse_caption("a purple dog on a sofa")


def test_expected_layout_matches_rendered_scenes():
    for cap in dataset.all_captions()[::29]:
        fg, bg, core, clear = dataset.expected_layout(cap)
        assert core.sum() > 0 and clear.sum() > 1000 and not (core & clear).any()
        # With jitter, the rendered shape still covers the core and leaves the clear area alone.
        scene = dataset.parse_caption(cap)
        for dx, dy, ds in [(0.03, -0.03, 0.08), (-0.03, 0.03, -0.08)]:
            jittered = dataset.Scene(scene.colour, scene.shape, scene.background, scene.size,
                                     scene.position, dx, dy, ds)
            img = dataset.render_scene(jittered)
            assert (img[core] == fg).all(), cap
            assert (img[clear] == bg).all(), cap
            judged = dataset.judge_image(cap, img)
            assert judged["shape_ok"] and judged["background_ok"]


# ------------------------------------------------------------------------------- architecture
def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_untrained_architecture_builds_identically(tmp_path):
    a, b = architecture.build_pipeline(0), architecture.build_pipeline(0)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        sa, sb = _state(getattr(a, name)), _state(getattr(b, name))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    a.save_pretrained(tmp_path / "a", safe_serialization=True)
    b.save_pretrained(tmp_path / "b", safe_serialization=True)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in files_a)
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_tokenizers_keep_vocabulary_words_whole():
    pipe = architecture.build_pipeline(0)
    caption = "a small yellow triangle at the bottom right on a white background"
    n_words = len(caption.split())
    t5 = pipe.tokenizer_2(caption).input_ids
    clip = pipe.tokenizer(caption).input_ids
    assert len(t5) == n_words + 1  # + </s>
    assert len(clip) == n_words + 2  # + start and end
    assert len(t5) <= architecture.MAX_SEQUENCE_LENGTH


# -------------------------------------------------------------------------------- training
def test_quick_training_is_reproducible(tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    runs = []
    for name, extra in [("one", []), ("two", ["--no-report"])]:
        out = tmp_path / name
        # A process of its own: training sets process-wide torch flags (deterministic algorithms, flushing
        # denormals) that must not leak into the other tests.
        subprocess.run([sys.executable, "-m", "embedded.train", "--out", str(out), "--quick", *extra],
                       cwd=Path(__file__).resolve().parent.parent, check=True, capture_output=True)
        runs.append(out)
    assert (runs[0] / "lab_defaults.json").exists() and (runs[0] / "loss.csv").exists()
    for part in ("transformer", "vae"):
        a = load_file(runs[0] / part / "diffusion_pytorch_model.safetensors")
        b = load_file(runs[1] / part / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    cfg_a = json.loads((runs[0] / "vae" / "config.json").read_text())
    cfg_b = json.loads((runs[1] / "vae" / "config.json").read_text())
    assert cfg_a["scaling_factor"] == cfg_b["scaling_factor"] and cfg_a["shift_factor"] == cfg_b["shift_factor"]
    # The quick run's weights differ from the untrained build: training did something.
    untrained = architecture.build_pipeline(0).transformer.state_dict()
    a = load_file(runs[0] / "transformer" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], untrained[k]) for k in a)


# ------------------------------------------------------------------------------ shipped model
@pytest.fixture(scope="module")
def shipped():
    from diffusers import DiffusionPipeline

    if not (MODEL / "model_index.json").exists():
        pytest.fail(f"{MODEL} is missing: run python -m embedded.train --out assets/tiny-flux")
    pipe = DiffusionPipeline.from_pretrained(str(MODEL))
    pipe.set_progress_bar_config(disable=True)
    defaults = json.loads((MODEL / "lab_defaults.json").read_text())
    return pipe, defaults


def test_shipped_model_files():
    files = {p.relative_to(MODEL).as_posix() for p in MODEL.rglob("*") if p.is_file()}
    for needed in ("model_index.json", "README.md", "samples.png", "loss_curve.png", "lab_defaults.json",
                   "transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                   "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"):
        assert needed in files, needed
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    weights = sum((MODEL / f).stat().st_size for f in files if f.endswith(".safetensors"))
    assert weights <= 40 * 2**20
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"


def test_shipped_lab_defaults(shipped):
    pipe, d = shipped
    assert type(pipe).__name__ == "FluxPipeline"
    assert (d["width"], d["height"], d["steps"], d["negative_prompt"]) == (128, 128, 20, "")
    assert d["guidance_scale"] >= 1.0
    assert d["max_sequence_length"] == architecture.MAX_SEQUENCE_LENGTH
    dataset.parse_caption(d["prompt"])
    assert pipe.transformer.config.guidance_embeds is False


def test_checked_prompts_cover_the_vocabulary():
    scenes = [dataset.parse_caption(p) for p in CHECK_PROMPTS]
    assert {s.colour for s in scenes} == set(dataset.COLOURS)
    assert {s.background for s in scenes} == set(dataset.COLOURS)
    assert {s.shape for s in scenes} == set(dataset.SHAPES)
    assert {s.size for s in scenes} == set(dataset.SIZES)  # small, large and the plain (medium) size
    assert {s.position for s in scenes} == set(dataset.POSITIONS)  # the four corners and the plain (centred) one


def test_the_shape_check_tells_the_three_shapes_apart():
    """On exact renders, each shape passes as itself and fails as either other shape."""
    for shape in dataset.SHAPES:
        scene = dataset.Scene("red", shape, "blue")
        ious = dataset.shape_ious(dataset.caption_scene(scene), dataset.render_scene(scene))
        assert ious[shape] >= 0.9, ious  # 0.95-1.0, not 1.0: the render is anti-aliased, the masks are thresholded
        assert [other for other in dataset.SHAPES if draws_shape(ious, other)] == [shape], ious


@pytest.mark.parametrize("prompt", CHECK_PROMPTS)
def test_shipped_model_draws_the_prompt(shipped, prompt):
    pipe, d = shipped
    image = pipe(prompt, negative_prompt=d["negative_prompt"], true_cfg_scale=d["guidance_scale"],
                 height=d["height"], width=d["width"], num_inference_steps=d["steps"],
                 max_sequence_length=d["max_sequence_length"],
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    assert image.size == (128, 128)
    judged = dataset.judge_image(prompt, image)
    assert judged["background_ok"], judged
    assert judged["shape_ok"], judged  # the shape's colour
    ious = dataset.shape_ious(prompt, image)
    shape = dataset.parse_caption(prompt).shape
    assert draws_shape(ious, shape), f"{prompt}: drawn shape's IoU with each shape {ious}"
