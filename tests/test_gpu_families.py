"""The full-size synthetic builds of every family on a GPU: Qwen-Image (20B), CogVideoX-5b, Wan 2.1 T2V 1.3B and
14B, with their published dimensions and random bf16 weights (`optim.synthetic`, from `optim.families`'
FULL_SIZE_MODELS). Run them on their own, on a machine with an NVIDIA GPU:

    python -m pytest -m gpu_families tests/test_gpu_families.py

They are opt-in, with their own marker: `python -m pytest -m gpu` does not run them. Each model is built straight
into GPU memory (`optim.synthetic.build_pipeline`: no disk; Qwen-Image's 20B parameters are about 58 GB in bf16,
CogVideoX-5b 21 GB, Wan 1.3B 15 GB, Wan 14B 40 GB; a test is skipped when the GPU is too small, with the
reason). Runs are short (few steps, fewer frames, smaller frames than the model cards') so that
the four fit in minutes, not hours: they prove each family loads, runs with a cache on CUDA and reports
per-frame quality for videos, not the cards' speeds.

In the default (CPU) suite every test here is skipped: `python -m pytest` hides the GPU.
"""

from __future__ import annotations

import pytest

from optim.capabilities import device_info
from optim.config import parse_optim, parse_run
from optim.engine import compare
from optim.synthetic import SYNTHETIC_MODELS

pytestmark = pytest.mark.gpu_families

# (synthetic model, GPU memory it needs in GB, a short run: steps, size, frames, the cache the family supports)
CASES = {
    "qwen-image": (80, {"steps": 4, "width": 512, "height": 512}, {"method": "first_block_cache", "threshold": 0.2}),
    "cogvideox-5b": (40, {"steps": 4, "width": 480, "height": 320, "num_frames": 17},
                     {"method": "first_block_cache", "threshold": 0.2}),
    "wan2.1-t2v-1.3b": (24, {"steps": 4, "width": 480, "height": 320, "num_frames": 17},
                        {"method": "first_block_cache", "threshold": 0.2}),
    "wan2.1-t2v-14b": (80, {"steps": 4, "width": 480, "height": 320, "num_frames": 17},
                       {"method": "first_block_cache", "threshold": 0.2}),
}


def _needs(name: str, memory_gb: float) -> None:
    """The GPU must hold the model (built in its memory, no disk: `optim.synthetic.build_pipeline`)."""
    info = device_info()
    if not info.cuda or (info.memory_gb or 0) < memory_gb:
        pytest.skip(f"synthetic:{name} needs a CUDA GPU with {memory_gb} GB or more")


@pytest.mark.parametrize("name", list(CASES))
def test_full_size_synthetic_family_runs_a_cache_on_cuda(name):
    memory_gb, run, cache = CASES[name]
    _needs(name, memory_gb)
    model = SYNTHETIC_MODELS[name]
    spec = parse_run({"model": f"synthetic:{name}", **run, "timed_runs": 2, "dtype": "bfloat16", "device": "cuda"})
    report = compare(spec, parse_optim({"cache": cache})).to_report()
    assert report["environment"]["device"] == "cuda"
    assert report["optimized"]["applied"][0].startswith("cache: first_block_cache")
    assert report["baseline"]["peak_memory_mb"] > 1000  # a real model's weights, on the GPU
    assert 0.0 < report["optimized"]["work_fraction"] <= 1.0
    if model.video:
        assert report["video"]["frames"] == run["num_frames"] and report["video"]["width"] == run["width"]
        video = report["quality"]["video"]
        assert len(video["psnr_db_per_frame"]) == run["num_frames"]
        assert len(video["temporal_diff_per_transition"]) == run["num_frames"] - 1
    else:
        assert "video" not in report


@pytest.mark.parametrize("name", ["cogvideox-5b", "wan2.1-t2v-1.3b"])
def test_full_size_video_with_group_offload_uses_less_gpu_memory(name):
    """Block-level group offload on CUDA streams keeps the transformer's blocks in CPU memory between uses."""
    memory_gb, run, _ = CASES[name]
    _needs(name, memory_gb)
    spec = parse_run({"model": f"synthetic:{name}", **run, "steps": 2, "timed_runs": 1, "dtype": "bfloat16",
                      "device": "cuda"})
    report = compare(spec, parse_optim({"offload": {"mode": "group", "use_stream": True}})).to_report()
    assert report["optimized"]["peak_memory_mb"] < 0.8 * report["baseline"]["peak_memory_mb"]
    assert report["quality"]["video"]["ssim_mean"] > 0.9  # offloading moves weights, it changes no result
