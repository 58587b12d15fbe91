"""The engine end to end on the embedded model: an honest harness, isolation, caches that skip work."""

from __future__ import annotations

import json

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
    report = write_report(comparison, tmp_path)
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
    assert report["speedup"] == pytest.approx(report["baseline"]["latency_s"]["median"] / report["optimized"]["latency_s"]["median"])
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


def attention_state_default():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return (str(_AttentionBackendRegistry._active_backend), _AttentionBackendRegistry._checks_enabled)


def test_baseline_is_reused_for_the_same_settings():
    cache = BaselineCache()
    first = compare(_run(), load_preset("baseline"), baseline_cache=cache)
    second = compare(_run(), load_preset("first-block-cache"), baseline_cache=cache)
    third = compare(_run(seed=1), load_preset("first-block-cache"), baseline_cache=cache)
    assert not first.baseline_reused and second.baseline_reused and not third.baseline_reused
    assert second.baseline is first.baseline


def test_progress_reports_phases_and_steps():
    seen = []
    compare(_run(), load_preset("baseline"), progress=lambda phase, done, total: seen.append((phase, done, total)))
    phases = [phase for phase, _, _ in seen]
    assert phases[0] == "baseline: loading"
    assert "optimized: timed run 1/1" in phases
    assert ("optimized: timed run 1/1", 6, 6) in seen
