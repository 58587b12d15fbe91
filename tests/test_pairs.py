"""Every pair of CPU-capable techniques on the embedded model either works, or is rejected before any model loads.

Never a failure halfway through a run. One representative setting per technique; pairs from the same family
cannot be combined in one config (one cache, one quantization ...) and are skipped by construction.
"""

from __future__ import annotations

import itertools

import pytest

from optim.config import parse_optim, parse_run
from optim.engine import BaselineCache, compare, prepare
from optim.errors import IncompatibleError, UnavailableError

# name -> (family, settings)
TECHNIQUES: dict[str, tuple[str, dict]] = {
    "attention-math+checks": ("attention", {"attention": {"backend": "_native_math", "checks": True}}),
    "attention-flex": ("attention", {"attention": {"backend": "flex"}}),
    "first-block-cache": ("cache", {"cache": {"method": "first_block_cache", "threshold": 0.2}}),
    "pab": ("cache", {"cache": {"method": "pyramid_attention_broadcast", "spatial_attention_timestep_skip_range": [100, 950]}}),
    "faster-cache": ("cache", {"cache": {"method": "faster_cache"}}),
    "mag-cache": ("cache", {"cache": {"method": "mag_cache", "mag_ratios": "flux", "threshold": 0.2}}),
    "taylorseer": ("cache", {"cache": {"method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 1, "taylor_factors_dtype": "float32"}}),
    "torchao-int8": ("quantization", {"quantization": {"backend": "torchao"}}),
    "quanto-int8": ("quantization", {"quantization": {"backend": "quanto"}}),
    "bnb8-text-encoder": ("quantization", {"quantization": {"backend": "bitsandbytes_8bit", "components": ["text_encoder_2"]}}),
    "group-offload-disk": ("offload", {"offload": {"mode": "group", "offload_to_disk": True}}),
    "group-offload-leaf": ("offload", {"offload": {"mode": "group", "offload_type": "leaf_level"}}),
    "vae-slicing-tiling": ("vae", {"vae": {"slicing": True, "tiling": True}}),
    "compile-regional": ("compile", {"compile": {"mode": "regional"}}),
    "compile-full": ("compile", {"compile": {"mode": "full"}}),
}

PAIRS = [
    (a, b)
    for a, b in itertools.combinations(TECHNIQUES, 2)
    if TECHNIQUES[a][0] != TECHNIQUES[b][0]
]
RUN = {"steps": 4, "width": 64, "height": 64, "warmup_runs": 1, "timed_runs": 1}
# Every pair shares the run settings, so the (deterministic) baseline is measured once for the module.
BASELINES = BaselineCache()


@pytest.fixture(autouse=True)
def _warm_compile_cache(monkeypatch):
    # Cold compiles are measured elsewhere; here a warm inductor cache keeps ~30 compile pairs fast.
    monkeypatch.setenv("OPTIM_COLD_COMPILE", "0")


@pytest.mark.parametrize(("first", "second"), PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_pair_works_or_is_rejected_up_front(first, second):
    settings = {**TECHNIQUES[first][1], **TECHNIQUES[second][1]}
    optim = parse_optim(settings)
    run = parse_run(RUN)
    try:
        prepare(run, optim)
    except (IncompatibleError, UnavailableError) as error:
        # Rejected before loading: the message must name what to change.
        assert "use" in str(error) or "turn" in str(error) or "choose" in str(error) or "leave" in str(error).lower()
        with pytest.raises(type(error)):
            compare(run, optim, isolation="inline")
        return
    comparison = compare(run, optim, isolation="inline", baseline_cache=BASELINES)
    report = comparison.to_report()
    assert report["optimized"]["applied"], "something must have been applied"
    assert report["quality"]["ssim"] > 0.5
