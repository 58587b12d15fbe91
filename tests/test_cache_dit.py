"""cache-dit, the second cache provider (optim/techniques/cache_dit.py): its DBCache and step masks skip the
transformer work they say they skip (cache-dit's own statistics against the lab's count of the work computed),
on the embedded model and on every tiny family cache-dit has an adapter for; disabling leaves nothing behind (the
baseline after it is bit-identical, also on a side reconfigured in place, as sweeps do); and without cache-dit,
or on a pipeline it has no adapter for, the methods are refused with the reason before anything loads.

Inline (one process), few steps: the timings mean nothing here and are not checked.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from conftest import ModuleBaselines

from optim import families as F
from optim.config import OptimConfig, parse_optim, parse_run
from optim.engine import prepare
from optim.errors import IncompatibleError, UnavailableError
from optim.measure import Item, Side, SideJob, run_side

pytest.importorskip("cache_dit", reason="cache-dit is installed by requirements-dev.txt")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUN = {"steps": 12, "warmup_runs": 1, "timed_runs": 1}
BASELINES = ModuleBaselines()
# A schedule that must reuse the cache on steps 1 and 3 of 4, on any model.
EVERY_OTHER = {"method": "cache_dit_steps_mask", "policy": "custom", "compute_bins": [1, 1], "cache_bins": [1, 1],
               "calibrator": "none"}


def _report(settings: dict, **run_changes) -> dict:
    return BASELINES.report(parse_optim(settings), parse_run({**RUN, **run_changes}))


def test_dbcache_skips_the_steps_cache_dit_counts_and_keeps_the_image_close():
    report = _report({"cache": {"method": "cache_dit_dbcache", "residual_diff_threshold": 0.3,
                                "max_warmup_steps": 2}})
    optimized = report["optimized"]
    stats = optimized["cache_dit"]
    assert stats["cached_steps"], "DBCache at 0.3 should reuse the cache on some steps"
    assert stats["agrees"], (stats["cached_steps"], stats["cfg_cached_steps"], stats["lab_reduced_steps"])
    assert optimized["work_fraction"] < 0.9
    # Fn=1, Bn=0: a step served from the cache still computes the first block, so its work is above zero.
    assert 0 < min(optimized["work_per_step"]) < 1
    assert all(step >= 2 for step in stats["lab_reduced_steps"]), "the warm-up steps always compute"
    assert report["quality"]["psnr_db"] > 25
    assert optimized["applied"][0].startswith("cache: cache-dit DBCache F1B0, residual threshold 0.3")
    # The work chart marks cache-dit's cached steps over the lab's bars, and the metrics table says they agree.
    from optim.charts import work_chart
    from optim.report import summary_rows
    from optim.report_model import Report

    typed = Report.model_validate(report)
    assert work_chart(typed).axes[0].get_title().endswith("cache-dit's count agrees")
    row = next(r for r in summary_rows(typed) if r[0].startswith("cache-dit cached steps"))
    assert row[2].startswith(f"{len(stats['cached_steps'])} of {RUN['steps']}") and "agrees with" in row[2]


def test_separate_guidance_branches_get_a_cache_each_and_one_call_a_step_gets_one():
    two = _report({"cache": EVERY_OTHER}, steps=4)["optimized"]
    one = _report({"cache": EVERY_OTHER}, steps=4, guidance_scale=1.0)["optimized"]
    assert two["cache_dit"]["cached_steps"] == two["cache_dit"]["cfg_cached_steps"] == [1, 3]
    assert one["cache_dit"]["cached_steps"] == [1, 3] and one["cache_dit"]["cfg_cached_steps"] == []
    assert two["cache_dit"]["agrees"] and one["cache_dit"]["agrees"]
    assert "a cache per guidance branch" in two["applied"][0]
    assert "one transformer call a step" in one["applied"][0]


@pytest.mark.parametrize("policy", ["slow", "fast"])
def test_named_masks_cache_the_steps_of_their_schedule(policy):
    from optim.techniques.cache_dit import steps_mask

    cache = parse_optim({"cache": {"method": "cache_dit_steps_mask", "policy": policy}}).cache
    mask = steps_mask(cache, RUN["steps"])
    assert len(mask) == RUN["steps"] and 0 in mask
    stats = _report({"cache": {"method": "cache_dit_steps_mask", "policy": policy}})["optimized"]["cache_dit"]
    assert stats["cached_steps"] == [step for step, bit in enumerate(mask) if bit == 0]
    assert stats["agrees"]


def test_a_custom_mask_shorter_than_the_run_is_refused_with_the_fix():
    with pytest.raises(IncompatibleError, match="cover 4 steps; the run has 12"):
        prepare(parse_run(RUN), parse_optim({"cache": EVERY_OTHER}))


def test_a_named_mask_cache_dit_cannot_scale_is_refused_before_loading():
    """Found by the load test at 2 steps: cache-dit asserts mid-run; the lab refuses it before anything loads."""
    with pytest.raises(IncompatibleError, match="mask policy 'medium' cannot schedule 2 steps.*use policy 'custom'"):
        prepare(parse_run({**RUN, "steps": 2}), parse_optim({"cache": {"method": "cache_dit_steps_mask"}}))
    prepare(parse_run({**RUN, "steps": 4}), parse_optim({"cache": {"method": "cache_dit_steps_mask"}}))


def test_disabling_restores_the_baseline_bit_for_bit_also_on_a_side_reconfigured_in_place():
    """The sweep path: one loaded side goes from cache-dit to no cache, to a diffusers cache and back."""
    spec = parse_run({**RUN, "steps": 4})
    ref, run = prepare(spec, OptimConfig())
    baseline = run_side(SideJob("baseline", ref, run, OptimConfig()))
    side = Side(SideJob("optimized", ref, run, parse_optim({"cache": EVERY_OTHER}), items=(Item(run.prompt, run.seed),)))
    try:
        side.prepare()
        assert not np.array_equal(side.probes[0].image, baseline.image)
        side.reconfigure(OptimConfig())
        assert np.array_equal(side.probes[0].image, baseline.image), "cache-dit left a trace"
        assert side.probes[0].step_work == baseline.step_work, "work still skipped after disabling"
        side.reconfigure(parse_optim({"cache": {"method": "first_block_cache", "threshold": 0.2}}))
        side.reconfigure(parse_optim({"cache": EVERY_OTHER}))
        assert side.applied.details["cache_dit"]["cached_steps"] == [1, 3]
        side.reconfigure(OptimConfig())
        assert np.array_equal(side.probes[0].image, baseline.image)
    finally:
        side.close()
    again = run_side(SideJob("baseline", ref, run, OptimConfig()))
    assert np.array_equal(again.image, baseline.image)


def test_declared_adapters_are_cache_dits_registry():
    import cache_dit

    _, names = cache_dit.supported_pipelines()
    for key, fam in F.FAMILIES.items():
        assert fam.cache_dit_adapter in names, (key, fam.cache_dit_adapter)
        assert fam.pipeline_class.startswith(fam.cache_dit_adapter)


@pytest.mark.parametrize("key", [key for key, fam in F.FAMILIES.items() if fam.cache_dit_adapter])
def test_every_family_with_an_adapter_skips_the_masked_steps(key):
    """The family-matrix cells for cache-dit: a mask caching steps 1 and 3 of 4 on each tiny build."""
    fam = F.FAMILIES[key]
    frames = {"num_frames": 9} if fam.video else {}
    spec = parse_run({"model": f"tiny:{key}", "steps": 4, "width": 32, "height": 32, "warmup_runs": 1,
                      "timed_runs": 1, **frames})
    optim = parse_optim({"cache": EVERY_OTHER})
    ref, run = prepare(spec, optim)
    result = run_side(SideJob("optimized", ref, run, optim))
    stats = result.details["cache_dit"]
    assert stats["cached_steps"] == [1, 3], stats
    reduced = [step for step, work in enumerate(result.step_work) if work < 0.999 * max(result.step_work)]
    assert reduced == [1, 3], result.step_work


def test_a_family_without_an_adapter_is_refused_with_cache_dits_reason(monkeypatch):
    monkeypatch.setitem(F.FAMILIES, "sd3", replace(F.FAMILIES["sd3"], cache_dit_adapter=None))
    spec = parse_run({"model": "tiny:sd3", "steps": 2, "width": 32, "height": 32})
    with pytest.raises(IncompatibleError, match="cache-dit has no block adapter for StableDiffusion3Pipeline"):
        prepare(spec, parse_optim({"cache": {"method": "cache_dit_dbcache"}}))


def test_without_cache_dit_the_methods_are_unavailable_with_the_install_command(monkeypatch):
    import importlib.util

    from optim import capabilities

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cache_dit" else real(name, *a))
    capabilities.detect.cache_clear()
    try:
        caps = capabilities.detect()
        assert "pip install cache-dit==1.5.3" in caps.reason("cache.method", "cache_dit_dbcache")
        assert caps.reason("cache.method", "mag_cache") is None
        with pytest.raises(UnavailableError, match="cache 'cache_dit_steps_mask' is not available here: cache-dit"):
            prepare(parse_run(RUN), parse_optim({"cache": {"method": "cache_dit_steps_mask"}}))
    finally:
        monkeypatch.undo()
        capabilities.detect.cache_clear()
