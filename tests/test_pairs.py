"""Every pair of CPU-capable techniques on the embedded model either works, with both techniques applied, or is
rejected before any model loads with the exact reason. Never a failure halfway through a run.

One representative setting per technique; pairs from the same family cannot be combined in one config (one
cache, one quantization ...) and are skipped by construction. torch.compile is paired with everything as
`regional` (the recommended mode); `full` is paired with what changes how the graph breaks (a cache, group
offload, attention checks) rather than with everything again.
"""

from __future__ import annotations

import itertools

import pytest
from conftest import ModuleBaselines

from optim.config import parse_optim, parse_run
from optim.engine import prepare
from optim.errors import IncompatibleError, UnavailableError

# name -> (family, settings, what its applied step starts with)
TECHNIQUES: dict[str, tuple[str, dict, str]] = {
    "attention-math+checks": ("attention", {"attention": {"backend": "_native_math", "checks": True}},
                              "attention backend: _native_math"),
    "attention-flex": ("attention", {"attention": {"backend": "flex"}}, "attention backend: flex"),
    "first-block-cache": ("cache", {"cache": {"method": "first_block_cache", "threshold": 0.2}},
                          "cache: first_block_cache"),
    "pab": ("cache", {"cache": {"method": "pyramid_attention_broadcast",
                                "spatial_attention_timestep_skip_range": [100, 950]}},
            "cache: pyramid_attention_broadcast"),
    "faster-cache": ("cache", {"cache": {"method": "faster_cache"}}, "cache: faster_cache"),
    "mag-cache": ("cache", {"cache": {"method": "mag_cache", "mag_ratios": "flux", "threshold": 0.2}},
                  "cache: mag_cache"),
    "taylorseer": ("cache", {"cache": {"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1,
                                       "taylor_factors_dtype": "float32"}}, "cache: taylorseer"),
    "torchao-int8": ("quantization", {"quantization": {"backend": "torchao"}}, "quantization: torchao"),
    "quanto-int8": ("quantization", {"quantization": {"backend": "quanto"}}, "quantization: quanto"),
    "bnb8-text-encoder": ("quantization", {"quantization": {"backend": "bitsandbytes_8bit",
                                                            "components": ["text_encoder_2"]}},
                          "quantization: bitsandbytes_8bit"),
    "group-offload-disk": ("offload", {"offload": {"mode": "group", "offload_to_disk": True}},
                           "offload: group offload"),
    "group-offload-leaf": ("offload", {"offload": {"mode": "group", "offload_type": "leaf_level"}},
                           "offload: group offload (leaf_level"),
    "vae-slicing-tiling": ("vae", {"vae": {"slicing": True, "tiling": True}}, "VAE slicing"),
    "compile-regional": ("compile", {"compile": {"mode": "regional"}}, "torch.compile: regional"),
}
FULL_COMPILE = ("compile-full", ("compile", {"compile": {"mode": "full"}}, "torch.compile: full"))

PAIRS = [(a, b) for a, b in itertools.combinations(TECHNIQUES, 2) if TECHNIQUES[a][0] != TECHNIQUES[b][0]]
PAIRS += [(name, FULL_COMPILE[0]) for name in ("first-block-cache", "group-offload-leaf", "attention-math+checks",
                                               "torchao-int8")]
ALL = {**TECHNIQUES, FULL_COMPILE[0]: FULL_COMPILE[1]}

# The pairs that cannot work, and the reason the user is given (before anything loads).
REJECTED = {
    ("torchao-int8", "group-offload-disk"): (IncompatibleError, "group offload to disk cannot store torchao-quantized "
                                                                "weights (safetensors cannot serialize their tensor "
                                                                "subclasses); turn offload_to_disk off"),
    ("quanto-int8", "group-offload-disk"): (IncompatibleError, "group offload to disk cannot store quanto-quantized "
                                                               "weights (safetensors cannot serialize their tensor "
                                                               "subclasses); turn offload_to_disk off"),
}
RUN = {"steps": 4, "width": 64, "height": 64, "warmup_runs": 1, "timed_runs": 1}
BASELINES = ModuleBaselines()


@pytest.fixture(autouse=True)
def _warm_compile_cache(monkeypatch):
    # Cold compiles are measured elsewhere; here a warm inductor cache keeps the compile pairs fast.
    monkeypatch.setenv("OPTIM_COLD_COMPILE", "0")


def test_the_rejection_list_names_real_pairs():
    assert set(REJECTED) <= set(PAIRS)


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_pair_works_or_is_rejected_up_front(first, second):
    optim = parse_optim({**ALL[first][1], **ALL[second][1]})
    run = parse_run(RUN)
    if (first, second) in REJECTED:
        kind, reason = REJECTED[(first, second)]
        with pytest.raises(kind) as raised:
            prepare(run, optim)
        assert reason in str(raised.value)
        return
    try:
        prepare(run, optim)
    except (IncompatibleError, UnavailableError) as error:
        pytest.fail(f"{first} + {second} was refused but is not in REJECTED: {error}")
    report = BASELINES.report(optim, run)
    applied = report["optimized"]["applied"]
    for name in (first, second):
        assert any(step.startswith(ALL[name][2]) for step in applied), f"{name} is missing from {applied}"
    assert report["quality"]["ssim"] > 0.5
