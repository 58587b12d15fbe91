"""Faults, cancellation and isolation: every failure ends in a clear message, frees what it held, leaves no
trace, and the next comparison works."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import psutil
import pytest

from optim import scratch
from optim.config import OptimConfig, parse_optim, parse_run
from optim.engine import compare
from optim.errors import Cancelled, ModelError, RunError, WorkerCrashed
from optim.measure import SideJob, run_side
from optim.models import EMBEDDED_PATH, resolve_model, resolve_run
from optim.presets import load_preset, shipped_presets

RUN = {"steps": 4, "warmup_runs": 1, "timed_runs": 1}


def _run(**changes):
    return parse_run({**RUN, **changes})


def _workers() -> list[psutil.Process]:
    """Side processes still alive (the zygote itself stays, by design)."""
    me = psutil.Process()
    alive = []
    for process in me.children(recursive=True):
        try:
            if "optim.zygote" not in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _assert_next_comparison_works():
    report = compare(_run(), load_preset("baseline")).to_report()
    assert report["quality"]["max_abs_diff"] == 0


@pytest.fixture
def faults_on(monkeypatch):
    monkeypatch.setenv("OPTIM_FAULT_INJECTION", "1")


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("crash", WorkerCrashed, "optimized side's process died before finishing: it crashed (SIGSEGV)"),
        ("oom", RunError, "out of memory (optimized side, while timed runs"),
        ("nan", RunError, "NaN or infinite values"),
        ("raise", RunError, "injected fault: a kernel failed at run time"),
    ],
)
def test_fault_gives_a_clear_message_and_the_next_comparison_works(faults_on, kind, error, message):
    with pytest.raises(error) as raised:
        compare(_run(prompt=f"a red circle on a blue background [fault:{kind}@optimized]"), load_preset("first-block-cache"))
    assert message in str(raised.value)
    assert "Try" in str(raised.value) or "try" in str(raised.value)
    assert not _workers(), "the failed side's process must be gone"
    _assert_next_comparison_works()


def test_faults_are_inert_without_the_switch(monkeypatch):
    monkeypatch.delenv("OPTIM_FAULT_INJECTION", raising=False)
    compare(_run(prompt="a red circle [fault:crash@optimized]"), load_preset("baseline"))


def test_a_real_allocation_failure_on_cpu_is_out_of_memory():
    """A memory cap on the side's process turns a too-large request into a clean out-of-memory error."""
    with pytest.raises(RunError, match="out of memory"):
        compare(_run(width=1024, height=1024, steps=2), load_preset("baseline"), memory_limit_mb=250)
    assert not _workers()
    _assert_next_comparison_works()


def test_a_backend_failing_at_run_time_is_reported_and_undone():
    """_native_efficient has no CPU kernel: it is accepted when set and fails in the first attention call."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    ref = resolve_model("embedded")
    run = resolve_run(_run(), ref, cuda_available=False)
    with pytest.raises(RunError, match="attention backend '_native_efficient' failed at run time"):
        run_side(SideJob("optimized", ref, run, parse_optim({"attention": {"backend": "_native_efficient"}})))
    assert str(_AttentionBackendRegistry._active_backend) == "AttentionBackendName.NATIVE"
    base = run_side(SideJob("baseline", ref, run, OptimConfig()))
    assert base.image.shape == (128, 128, 3)


def test_a_compile_failure_is_reported_and_undone():
    """A cache forced into one graph cannot compile (the up-front check is bypassed on purpose)."""
    import torch._dynamo

    ref = resolve_model("embedded")
    run = resolve_run(_run(width=64, height=64), ref, cuda_available=False)
    optim = parse_optim({"cache": {"method": "first_block_cache"}, "compile": {"mode": "regional", "fullgraph": True}})
    limit = torch._dynamo.config.cache_size_limit
    with pytest.raises(RunError, match="torch.compile failed .* fullgraph off"):
        run_side(SideJob("optimized", ref, run, optim))
    assert "optim-inductor-" not in os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    assert torch._dynamo.config.cache_size_limit == limit


def test_cancelling_stops_the_worker_and_the_next_comparison_works():
    stop = threading.Event()
    errors = []

    def progress(phase, done, total):
        if phase.startswith("optimized: warm-up"):
            stop.set()

    def target():
        try:
            compare(_run(steps=20, timed_runs=5), load_preset("first-block-cache"), progress=progress, should_stop=stop.is_set)
        except Exception as error:  # noqa: BLE001 - inspected below
            errors.append(error)

    thread = threading.Thread(target=target)
    started = time.perf_counter()
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Cancelled), errors
    assert time.perf_counter() - started < 60
    assert not _workers()
    _assert_next_comparison_works()


def test_cancelling_a_compiling_side_deletes_its_fresh_inductor_cache():
    """The killed process never runs its undo; the parent deletes the scratch folder named after it."""
    stop = threading.Event()
    seen = []

    def progress(phase, done, total):
        if phase == "optimized: compiling":
            seen.extend(scratch.folders_of("*", "inductor"))
            stop.set()

    before = set(scratch.folders_of("*", "inductor"))
    with pytest.raises(Cancelled):
        compare(_run(width=64, height=64), load_preset("compile-regional"), progress=progress, should_stop=stop.is_set)
    assert set(seen) - before, "the compiling side made a fresh cache folder"
    assert set(scratch.folders_of("*", "inductor")) <= before
    assert not _workers()


def test_cancelling_a_hung_side(faults_on):
    stop = threading.Event()
    timer = threading.Timer(3.0, stop.set)
    timer.start()
    with pytest.raises(Cancelled):
        compare(_run(prompt="a red circle [fault:hang@optimized]"), load_preset("baseline"), should_stop=stop.is_set)
    assert not _workers()


# --------------------------------------------------------------------------------------------- model loading


def test_unknown_model_and_hub_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="unknown model 'not a model'"):
        compare(_run(model="not a model"), load_preset("baseline"))
    with pytest.raises(ModelError, match="could not be loaded: the Hugging Face Hub cannot be reached"):
        compare(_run(model="black-forest-labs/FLUX.1-dev"), load_preset("baseline"))
    _assert_next_comparison_works()


def test_a_broken_model_folder_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(EMBEDDED_PATH, broken)
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match="could not be loaded"):
        compare(_run(model=str(broken)), load_preset("baseline"))
    assert not _workers()
    _assert_next_comparison_works()


# ---------------------------------------------------------------------------------------------- isolation

CPU_PRESETS = [name for name, preset in shipped_presets().items() if preset.hardware == "any" and name != "baseline"]


@pytest.fixture(scope="module")
def baseline_before_any_preset():
    """The baseline measured once, in this process, before any preset ran in it (it is deterministic)."""
    ref = resolve_model("embedded")
    run = resolve_run(_run(width=64, height=64), ref, cuda_available=False)
    return run_side(SideJob("baseline", ref, run, OptimConfig()))


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_every_cpu_preset_leaves_no_trace(name, monkeypatch, baseline_before_any_preset):
    """Inline, in one process: the baseline (measured once, before any preset), the preset, the baseline again
    -> identical images, default global state."""
    import torch._dynamo
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    monkeypatch.setenv("OPTIM_COLD_COMPILE", "0")
    ref = resolve_model("embedded")
    run = resolve_run(_run(width=64, height=64), ref, cuda_available=False)
    state = lambda: (  # noqa: E731
        str(_AttentionBackendRegistry._active_backend),
        _AttentionBackendRegistry._checks_enabled,
        torch._dynamo.config.cache_size_limit,
        torch._dynamo.config.capture_dynamic_output_shape_ops,
        "optim-inductor-" in os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""),
    )
    before_state = state()
    before = baseline_before_any_preset
    run_side(SideJob("optimized", ref, run, load_preset(name).optim))
    after = run_side(SideJob("baseline", ref, run, OptimConfig()))
    assert np.array_equal(before.image, after.image)
    assert state() == before_state


def test_a_sides_peak_memory_is_not_inflated_by_the_other_side():
    """Each side runs in its own process: the baseline's peak is the same whatever ran before it."""
    alone = compare(_run(), load_preset("baseline")).baseline.peak_memory_mb
    heavy = compare(_run(width=512, height=512), load_preset("quantize-torchao-int8"))
    assert heavy.optimized.peak_memory_mb > 0
    after = compare(_run(), load_preset("baseline")).baseline.peak_memory_mb
    assert abs(after - alone) <= max(0.15 * alone, 15), (alone, after)
