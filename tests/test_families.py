"""Pipeline families (`optim/families/`, one module per family): tiny builds run, are deterministic and round-trip offline; the recorded
guidance, cache, VAE and compile facts hold on the installed diffusers; full-size configs have the published sizes.

Every tiny pipeline is built once per module (`tiny`), so the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import pytest
import torch

from optim import families as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

KEYS = list(F.FAMILIES)
METHODS = [m.value for m in F.CacheMethod]
FBC, PAB, FASTER, MAG, TAYLOR = METHODS


@pytest.fixture(scope="module")
def tiny():
    """key -> the tiny pipeline (seed 0), built on first use and shared by the module's tests."""
    built: dict[str, object] = {}

    def get(key: str):
        if key not in built:
            built[key] = F.build_tiny_pipeline(key)
        return built[key]

    return get


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """OPTIM_TINY_CACHE pointed at a fresh folder for this module."""
    root = tmp_path_factory.mktemp("tiny-cache")
    previous = os.environ.get("OPTIM_TINY_CACHE")
    os.environ["OPTIM_TINY_CACHE"] = str(root)
    yield root
    if previous is None:
        del os.environ["OPTIM_TINY_CACHE"]
    else:
        os.environ["OPTIM_TINY_CACHE"] = previous


def state(pipe) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)
            for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------ descriptors


@pytest.mark.parametrize("key", KEYS)
def test_descriptor_matches_installed_diffusers(key, tiny):
    fam, pipe = F.FAMILIES[key], tiny(key)
    assert type(pipe).__name__ == fam.pipeline_class
    assert type(pipe.transformer).__name__ == fam.transformer_class
    assert type(pipe.vae).__name__ == fam.vae.vae_class
    assert fam.guidance_argument in inspect.signature(type(pipe).__call__).parameters
    assert ("num_frames" in inspect.signature(type(pipe).__call__).parameters) == fam.video
    # compile_repeated_blocks needs the class attribute (modeling_utils.py); without it, it raises.
    assert tuple(getattr(type(pipe.transformer), "_repeated_blocks", ()) or ()) == fam.repeated_blocks
    if not fam.repeated_blocks:
        with pytest.raises(ValueError, match="_repeated_blocks"):
            pipe.transformer.compile_repeated_blocks()
    assert hasattr(pipe.transformer, "enable_cache") == fam.has_cache_mixin


@pytest.mark.parametrize("key", KEYS)
def test_vae_options(key, tiny):
    fam, vae = F.FAMILIES[key], tiny(key).vae
    tiling = tuple(p for p in inspect.signature(vae.enable_tiling).parameters if p != "self")
    assert tiling == fam.vae.tiling_arguments
    assert hasattr(vae, "use_slicing") == fam.vae.slicing
    assert hasattr(vae, "use_tiling") == fam.vae.tiling
    # No temporal tile size anywhere: the video VAEs chunk time internally, tiling is spatial only.
    assert not any("frame" in p for p in tiling)


@pytest.mark.parametrize("key", KEYS)
def test_guidance_style_is_what_the_pipeline_does(key, tiny):
    """Transformer calls per step, their batch size, and the cache_context names, on a 2-step run."""
    fam, pipe = F.FAMILIES[key], tiny(key)
    transformer = pipe.transformer
    batches: list[int] = []
    contexts: set[str] = set()
    original = getattr(transformer, "cache_context", None)

    def recording_context(name, **kwargs):
        contexts.add(name)
        return original(name, **kwargs)

    handle = transformer.register_forward_pre_hook(
        lambda _m, _a, kw: batches.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    if fam.has_cache_mixin:
        transformer.cache_context = recording_context  # shadows the method on this instance only
    try:
        F.run_tiny(pipe, key)
    finally:
        handle.remove()
        transformer.__dict__.pop("cache_context", None)
    expected = {F.Guidance.BATCHED_CFG: [2, 2], F.Guidance.SEPARATE_CFG: [1, 1, 1, 1], F.Guidance.DISTILLED: [1, 1]}
    assert batches == expected[fam.guidance]
    assert contexts == set(fam.cache_contexts)


# ------------------------------------------------------------------------------------------------ tiny builds


@pytest.mark.parametrize("key", KEYS)
def test_tiny_build_is_deterministic(key, tiny):
    first, again, other = state(tiny(key)), state(F.build_tiny_pipeline(key)), state(F.build_tiny_pipeline(key, 1))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


@pytest.mark.parametrize("key", KEYS)
def test_tiny_two_step_run(key, tiny):
    fam = F.FAMILIES[key]
    out = F.run_tiny(tiny(key), key, steps=2, size=32)
    expected = (1, fam.tiny.num_frames, 32, 32, 3) if fam.video else (1, 32, 32, 3)
    assert out.shape == expected
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.0


@pytest.mark.parametrize("key", KEYS)
def test_tiny_is_small_with_blocks_to_skip(key, tiny):
    pipe = tiny(key)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert sum(p.numel() for m in modules for p in m.parameters()) < 1_000_000
    block_lists = [m for m in pipe.transformer.children() if isinstance(m, torch.nn.ModuleList)]
    assert block_lists and all(len(blocks) >= 2 for blocks in block_lists)


def test_tokenizers_know_the_vocabulary_as_whole_words():
    clip, t5, qwen = F.build_clip_tokenizer(), F.build_t5_tokenizer(), F.build_qwen2_tokenizer()
    for word in F.VOCABULARY:
        assert clip.tokenize(word) == [word + "</w>"]
        assert t5.tokenize(word) == ["\u2581" + word]
        assert qwen.tokenize(" " + word) == ["\u0120" + word]
    # Anything else still tokenizes, by characters.
    assert clip.tokenize("zebra") and t5.tokenize("zebra") and qwen.tokenize("zebra")


def test_qwen_template_prefix_is_what_the_pipeline_drops(tiny):
    pipe = tiny("qwen-image")
    prefix, suffix = pipe.prompt_template_encode.split("{}")
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34
    # After dropping 34 tokens, the prompt's own tokens come first.
    ids = pipe.tokenizer(pipe.prompt_template_encode.format("a red fox")).input_ids
    assert pipe.tokenizer.convert_ids_to_tokens(ids[34:37]) == ["a", "\u0120red", "\u0120fox"]


@pytest.mark.parametrize("key", KEYS)
def test_save_and_load_offline(key, tiny, tiny_cache):
    from diffusers import DiffusionPipeline

    path = F.tiny_model_path(key)
    assert path.parent == tiny_cache and path.name.startswith(f"{key}-")
    assert F.tiny_model_path(key) == path  # built once
    assert not [p for p in tiny_cache.iterdir() if p.name.startswith(".")]  # no scratch folder left
    assert list(path.rglob("*.safetensors")) and not list(path.rglob("*.bin"))
    fam = F.FAMILIES[key]
    defaults = json.loads((path / "lab_defaults.json").read_text())
    video_keys = {"num_frames", "fps"} if fam.video else set()
    assert set(defaults) == {"prompt", "negative_prompt", "steps", "width", "height", "guidance_scale",
                             "max_sequence_length"} | video_keys
    assert "random weights" in (path / "README.md").read_text()

    loaded = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    built = tiny(key)
    assert type(loaded) is type(built)
    a, b = state(built), state(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    expected = F.run_tiny(built, key)
    # Weights loaded from safetensors sit at unaligned addresses, which changes the CPU kernels' summation
    # order (differences ~1e-6); realigned (copied), the output is bit-identical.
    np.testing.assert_allclose(F.run_tiny(loaded, key), expected, atol=1e-5)
    for module in loaded.components.values():
        if isinstance(module, torch.nn.Module):
            for parameter in module.parameters():
                parameter.data = parameter.data.clone()
    assert np.array_equal(F.run_tiny(loaded, key), expected)


def test_fingerprint_changes_with_the_configs(monkeypatch):
    before = F.tiny_fingerprint("wan")
    monkeypatch.setitem(F.TINY_CONFIGS["wan"], "transformer", {**F.TINY_CONFIGS["wan"]["transformer"], "num_layers": 3})
    assert F.tiny_fingerprint("wan") != before


def test_family_of_pipeline():
    assert F.family_of_pipeline("WanPipeline") is F.FAMILIES["wan"]
    assert F.family_of_pipeline("StableDiffusionXLPipeline") is None


def test_unknown_names_fail_with_the_known_ones():
    with pytest.raises(ValueError, match="known: flux, qwen-image, sd3, cogvideox, wan"):
        F.build_tiny_pipeline("sdxl")
    with pytest.raises(ValueError, match="wan2.1-t2v-14b"):
        F.build_full_size_on_meta("wan2.2")


# ------------------------------------------------------------------------------------------------ caches

# What the probe shows for the methods marked unsupported (the reason strings say why).
UNSUPPORTED_OUTCOME = {
    ("qwen-image", PAB): "The size of tensor a",  # uncond call got the cond call's output: text lengths differ
    ("qwen-image", FASTER): "The size of tensor a",
    ("wan", PAB): "runs",  # same shapes (Wan pads text): runs, silently mixing branches
    ("wan", FASTER): "runs",
    ("sd3", FBC): "No cache context is set",
    ("sd3", TAYLOR): "No cache context is set",
    ("sd3", PAB): "runs",
    ("sd3", FASTER): "runs",
    ("sd3", MAG): "runs",
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", KEYS)
def test_cache_support_is_what_the_cache_does(key, method, tiny):
    fam, pipe = F.FAMILIES[key], tiny(key)
    support = F.CACHE_SUPPORT[key][method]
    probe = F.probe_cache(pipe, key, method, direct=not fam.has_cache_mixin)
    if support.supported:
        assert (probe.enabled, probe.ran, probe.error) == (True, True, None)
        assert probe.hooks > 0 and probe.changed and probe.restored
        return
    outcome = UNSUPPORTED_OUTCOME[(key, method)]
    if outcome == "runs":
        assert probe.ran and probe.changed and probe.restored
    else:
        assert not probe.ran and outcome in probe.error
    assert F.run_tiny(pipe, key) is not None  # the pipeline still works after a failed cached run


@pytest.mark.parametrize("key", KEYS)
def test_pab_matches(key, tiny):
    transformer = tiny(key).transformer
    blocks = sum(len(m) for m in transformer.children() if isinstance(m, torch.nn.ModuleList))
    expected = {kind: n * blocks for kind, n in F.PAB_MATCHES_PER_BLOCK[key].items()}
    expected["spatial"] += len(getattr(transformer.config, "dual_attention_layers", ()) or ())
    assert F.count_pab_matches(transformer) == expected
    assert F.count_hooks(transformer, PAB) == 0  # removed again


@pytest.mark.parametrize("key, shared", [("flux", None), ("cogvideox", None), ("wan", True), ("qwen-image", True)])
def test_pab_state_is_shared_across_guidance_branches(key, shared, tiny):
    overrides = {"negative_prompt": "a blue fox in the snow"} if key == "qwen-image" else {}  # same token count
    assert F.pab_shares_branches(tiny(key), key, **overrides) is shared


@pytest.mark.parametrize("key", ["qwen-image", "wan"])
def test_faster_cache_needs_a_batched_branch_to_approximate(key, tiny):
    probe = F.probe_cache(tiny(key), key, FASTER, is_guidance_distilled=False)
    assert not probe.ran and probe.error.startswith("IndexError")


@pytest.mark.parametrize("key", ["cogvideox", "wan"])
def test_taylorseer_default_patterns_hook_nothing_on_attn1_models(key, tiny):
    probe = F.probe_cache(tiny(key), key, TAYLOR, use_lite_mode=False)
    assert probe.ran and probe.hooks == 0 and not probe.changed


# ------------------------------------------------------------------------------------------------ full size


@pytest.mark.parametrize("name", list(F.FULL_SIZE_MODELS))
def test_full_size_transformer_has_the_published_size(name):
    model = F.FULL_SIZE_MODELS[name]
    transformer = F.build_full_size_on_meta(name)
    assert all(p.device.type == "meta" for p in transformer.parameters())
    assert type(transformer).__name__ == F.FAMILIES[model.family].transformer_class
    values = F.count_checkpoint_values(transformer)
    assert values == pytest.approx(model.published_params_b * 1e9, rel=0.03)


@pytest.mark.parametrize("name", list(F.FULL_SIZE_MODELS))
def test_full_size_settings_fit_the_pipeline(name):
    model = F.FULL_SIZE_MODELS[name]
    fam, run = F.FAMILIES[model.family], model.settings
    assert run.width % 16 == 0 and run.height % 16 == 0
    if fam.video:
        assert (run.num_frames - 1) % 4 == 0 and run.fps > 0  # 4x temporal compression
    else:
        assert run.num_frames is None and run.fps is None
    assert model.name in fam.full_size
    assert F.full_size_model(model.family).name == fam.full_size[0]
