"""The engine end to end on the embedded model: an honest harness, isolation, caches that skip work."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from conftest import FAST_RUN

from optim.config import OptimConfig, parse_optim, parse_run
from optim.engine import BaselineCache, compare
from optim.measure import SideJob, run_side
from optim.models import resolve_model, resolve_run
from optim.presets import load_preset
from optim.report import write_report


def _run(**changes):
    return parse_run({**FAST_RUN, **changes})


def test_baseline_preset_is_bit_identical_and_report_is_complete(tmp_path):
    comparison = compare(_run(timed_runs=2), load_preset("baseline"))
    report = write_report(comparison, tmp_path).to_json()
    assert report["quality"]["max_abs_diff"] == 0
    assert report["quality"]["psnr_db"] is None and report["quality"]["ssim"] == 1.0
    for side in ("baseline", "optimized"):
        data = report[side]
        assert set(data["latency_s"]) >= {"median", "min", "max", "runs"} and len(data["latency_s"]["runs"]) == 2
        assert data["latency_s"]["min"] <= data["latency_s"]["median"] <= data["latency_s"]["max"]
        assert len(data["per_step_s"]) == 6 and all(t > 0 for t in data["per_step_s"])
        assert data["peak_memory_mb"] > 0 and data["load_s"] > 0 and data["warmup_s"] > 0
        assert data["work_fraction"] == 1.0
    assert report["optimized"]["applied"] == []
    assert set(report["environment"]) >= {"device", "device_name", "python", "torch", "diffusers"}
    assert report["run"]["width"] == 128 and report["run"]["steps"] == 6
    assert report["preset"]["name"] == "baseline" and "cache" in report["preset"]["optim"]
    # The speedup is the geometric mean of the paired ratios (runs taken in turns) of each run's own time (wall
    # time less its run-queue wait, on a CPU), with its interval; wall time's ratio is reported beside it.
    assert report["timing"]["estimator"]["name"] == "own"
    for side in ("baseline", "optimized"):
        for run in report[side]["runs"]:
            assert run["time_s"] == pytest.approx(run["latency_s"] - run["wait_s"]) and run["wait_s"] >= 0
    pairs = zip(report["baseline"]["time_s"]["runs"], report["optimized"]["time_s"]["runs"])
    assert report["speedup"] == pytest.approx(math.exp(statistics.fmean(math.log(b / o) for b, o in pairs)))
    walls = zip(report["baseline"]["latency_s"]["runs"], report["optimized"]["latency_s"]["runs"])
    assert report["timing"]["speedup_wall"]["estimate"] == pytest.approx(
        math.exp(statistics.fmean(math.log(b / o) for b, o in walls)))
    assert len(report["timing"]["sequence"].split()) == 2
    low, high = report["speedup_interval"]
    assert low < report["speedup"] < high and report["timing"]["mode"] == "interleaved"
    assert report["verdict"] in ("faster", "slower", "equivalent", "inconclusive")
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["quality"] == report["quality"]
    for name in ("baseline.png", "optimized.png", "diff.png", "latency.png", "per_step.png", "memory.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_first_block_cache_skips_work_and_changes_the_image():
    comparison = compare(_run(steps=20), load_preset("first-block-cache"))
    report = comparison.to_report()
    assert report["optimized"]["work_fraction"] < 0.95, "the cache should skip some transformer work"
    assert min(report["optimized"]["work_per_step"]) < 1.0
    assert report["quality"]["max_abs_diff"] > 0
    assert report["quality"]["psnr_db"] is not None and report["quality"]["psnr_db"] > 20
    assert report["optimized"]["applied"] == ["cache: first_block_cache (threshold=0.1)"]


def test_same_side_twice_and_after_an_optimized_run_is_bit_identical():
    """Inline (one process): baseline, then an optimized side, then baseline again -> identical images and
    the attention dispatcher back to its default."""
    ref = resolve_model("embedded")
    run = resolve_run(_run(), ref, cuda_available=False)
    before = attention_state_default()
    first = run_side(SideJob("baseline", ref, run, OptimConfig()))
    second = run_side(SideJob("baseline", ref, run, OptimConfig()))
    optimized = run_side(
        SideJob("optimized", ref, run, parse_optim({"attention": {"backend": "_native_math", "checks": True}, "cache": {"method": "first_block_cache", "threshold": 0.2}}))
    )
    third = run_side(SideJob("baseline", ref, run, OptimConfig()))
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.image, third.image)
    assert optimized.applied[0] == "attention backend: _native_math"
    assert attention_state_default() == before


def test_a_prepared_side_freezes_its_loaded_heap_and_close_releases_it():
    """The collection before each timed run must not scan the loaded pipeline and libraries (half a million
    objects: 0.3 s, longer than an embedded run), and what was frozen must be freed again once the side closes."""
    import gc
    import weakref

    from optim.measure import Item, Side

    ref = resolve_model("embedded")
    run = resolve_run(_run(), ref, cuda_available=False)
    side = Side(SideJob("baseline", ref, run, OptimConfig(), items=(Item(run.prompt, run.seed),)))
    try:
        side.prepare()
        frozen = gc.get_freeze_count()
        assert frozen > 50_000, frozen  # the pipeline and the imported libraries
        side.timed("timed run", 0)
        assert len(gc.get_objects()) < frozen / 20  # what the collection before a timed run scans
        transformer = weakref.ref(side.pipe.transformer)
    finally:
        side.close()
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert transformer() is None, "a closed side's pipeline stayed alive"


def attention_state_default():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return (str(_AttentionBackendRegistry._active_backend), _AttentionBackendRegistry._checks_enabled)


def test_a_warm_baseline_is_reused_for_its_load_and_timed_again():
    """A server keeps the baseline's process loaded: the next comparison with the same settings skips its load
    but times it again, in turns with the new side (never a ratio against runs made earlier)."""
    cache = BaselineCache()
    try:
        first = compare(_run(timed_runs=2), load_preset("baseline"), baseline_cache=cache)
        assert len(cache) == 1
        second = compare(_run(timed_runs=2), load_preset("first-block-cache"), baseline_cache=cache)
        assert not first.baseline_reused and second.baseline_reused
        assert second.baseline.load_s == first.baseline.load_s  # the same loaded process
        assert second.baseline.latency_s != first.baseline.latency_s  # its runs were timed again
        assert "timed now" in second.to_report()["timing"]["baseline_reuse"] or \
            "taken now" in second.to_report()["timing"]["baseline_reuse"]
        assert np.array_equal(first.baseline.image, second.baseline.image)
        third = compare(_run(seed=1, timed_runs=2), load_preset("first-block-cache"), baseline_cache=cache)
        assert not third.baseline_reused and len(cache) == 1  # the old warm baseline was closed
    finally:
        cache.clear()


def test_progress_reports_phases_and_steps():
    seen = []
    compare(_run(), load_preset("baseline"), progress=lambda phase, done, total: seen.append((phase, done, total)))
    phases = [phase for phase, _, _ in seen]
    assert phases[0] == "baseline: loading"
    assert "optimized: timed run 1/1" in phases
    assert ("optimized: timed run 1/1", 6, 6) in seen


def test_sequential_timing_takes_blocks_and_says_why():
    comparison = compare(_run(timed_runs=4, timing="sequential"), load_preset("first-block-cache"))
    timing = comparison.to_report()["timing"]
    assert timing["mode"] == "sequential" and "asked for" in timing["reason"]
    assert "baseline again" in timing["order"] and timing["runs_per_side"] == 4
    assert "Welch" in timing["speedup"]["method"]
    inline = compare(_run(timed_runs=2), load_preset("baseline"), isolation="inline").to_report()["timing"]
    assert inline["mode"] == "sequential" and "share this process" in inline["reason"]


def test_auto_runs_stop_at_the_target_or_the_budget():
    report = compare(_run(timed_runs="auto", time_budget_s=1.0, target_precision=0.005),
                     load_preset("baseline")).to_report()
    timing = report["timing"]
    assert timing["auto"] and timing["runs_per_side"] >= 4
    assert "time budget spent" in timing["stopped_because"] or "target precision reached" in timing["stopped_because"]
    assert timing["timed_s"] >= 1.0 or timing["target_met"]
