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


# The memory cap is on the side's address space (RLIMIT_AS), counted from the worker's size at its start. Measured
# on the 2-core CI machine (VmPeak growth of a side, 5 runs each): loading the embedded model and a 64x64 run peak
# at 209-225 MB; a 1024x1024 run at 431-623 MB (the VAE decode). A 320 MB cap leaves about 95 MB above the load and
# 110 MB below the smallest 1024x1024 peak, so the side always loads and always runs out of memory in its first
# (eager probe) run, wherever the last allocation happens to fail (PyTorch's allocator, oneDNN, the C++ runtime).
ALLOCATION_FAILURE = {"width": 1024, "height": 1024, "steps": 1}
MEMORY_CAP_MB = 320
OUT_OF_MEMORY_ADVICE = "Try: lower the size or steps, quantize, or offload (model_cpu or group) to fit in memory"


def test_a_real_allocation_failure_on_cpu_is_out_of_memory():
    """A memory cap on the side's process turns a too-large request into a clean out-of-memory error."""
    with pytest.raises(RunError) as raised:
        compare(_run(**ALLOCATION_FAILURE), load_preset("baseline"), memory_limit_mb=MEMORY_CAP_MB)
    message = str(raised.value)
    assert message.startswith("out of memory (baseline side, while warm-up"), message
    assert OUT_OF_MEMORY_ADVICE in message, message
    assert not _workers()
    _assert_next_comparison_works()


def test_a_side_that_fails_to_prepare_leaves_the_warm_baseline_warm():
    """The optimized side runs out of memory while it prepares (a memory cap; the warm baseline was loaded without
    one): the baseline did nothing wrong, so it stays loaded for the next comparison (a GPU check's next case)."""
    from optim.engine import BaselineCache

    cache = BaselineCache()
    try:
        compare(_run(**ALLOCATION_FAILURE), load_preset("baseline"), baseline_cache=cache)
        assert len(cache) == 1
        with pytest.raises(RunError, match="out of memory"):
            compare(_run(**ALLOCATION_FAILURE), load_preset("first-block-cache"), baseline_cache=cache,
                    memory_limit_mb=MEMORY_CAP_MB)
        assert len(cache) == 1, "the warm baseline was closed with the side that failed"
        again = compare(_run(**ALLOCATION_FAILURE), load_preset("baseline"), baseline_cache=cache)
        assert again.baseline_reused and again.quality["max_abs_diff"] == 0
    finally:
        cache.clear()


def _job(memory_limit_mb=None, device="cpu"):
    from dataclasses import replace

    ref = resolve_model("embedded")
    run = replace(resolve_run(_run(), ref, cuda_available=False), device=device)
    return SideJob("optimized", ref, run, load_preset("first-block-cache").optim, memory_limit_mb)


def _cuda_out_of_memory():
    import torch

    return torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.06 GiB "
        "is free.")


@pytest.mark.parametrize(("error", "job"), [
    # oneDNN under the address-space cap: its failed allocation is reported as a failed primitive
    (RuntimeError("could not create a primitive"), dict(memory_limit_mb=MEMORY_CAP_MB)),
    (RuntimeError("std::bad_alloc"), dict(memory_limit_mb=MEMORY_CAP_MB)),
    (RuntimeError("std::bad_alloc"), dict()),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 8388608 bytes. Error code 12 (Cannot allocate memory)"), dict()),
    (MemoryError(), dict()),
    (_cuda_out_of_memory(), dict(device="cuda")),
], ids=["onednn-capped", "bad_alloc-capped", "bad_alloc", "cpu-allocator", "MemoryError", "cuda"])
def test_allocation_failures_are_explained_as_out_of_memory(error, job):
    from optim.measure import explain_failure

    explained = explain_failure(error, phase="timed runs", job=_job(**job))
    message = str(explained)
    assert isinstance(explained, RunError)
    assert message.startswith("out of memory (optimized side, while timed runs, settings "), message
    assert "first_block_cache" in message, "the message names the settings"
    assert message.endswith(OUT_OF_MEMORY_ADVICE), message


def test_a_failed_onednn_primitive_without_a_memory_cap_is_not_called_out_of_memory():
    """Without a cap (or on CUDA, where none is applied) the same oneDNN message is an unsupported operation."""
    from optim.measure import explain_failure

    for job in (_job(), _job(device="cuda")):
        message = str(explain_failure(RuntimeError("could not create a primitive"), phase="timed runs", job=job))
        assert not message.startswith("out of memory"), message
        assert message.startswith("RuntimeError (optimized side, while timed runs"), message
        assert "Try turning off cache one at a time" in message, message


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
    """The reference baseline, measured in a fresh process that has run nothing before (a worker: the zygote's
    fork never ran a pipeline), so a lasting leak of an earlier test in this process cannot be in the reference.
    This process computes with the workers' thread count, so its own baselines can be bit-identical to it."""
    from optim.machine import configure_threads
    from optim.measure import SideResult
    from optim.worker import RemoteSide

    configure_threads()
    ref = resolve_model("embedded")
    run = resolve_run(_run(width=64, height=64), ref, cuda_available=False)
    side = RemoteSide(SideJob("baseline", ref, run, OptimConfig()))
    try:
        setup = side.prepare()
        timings = [side.timed("timed run 1/1")]
        return SideResult.build("baseline", setup, timings, side.finish())
    finally:
        side.close()


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_every_cpu_preset_leaves_no_trace(name, monkeypatch, baseline_before_any_preset):
    """The preset, then the baseline, inline in this process (which has run other tests' pipelines before) ->
    the image of a baseline measured in a fresh process, default global state."""
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
    changed = int(np.abs(before.image.astype(int) - after.image.astype(int)).max())
    assert changed == 0, f"after {name}, the baseline's image differs from a fresh process's by up to {changed}/255"
    assert state() == before_state


def test_a_sides_peak_memory_is_not_inflated_by_the_other_side():
    """Each side runs in its own process: the baseline's peak is the same whatever ran before it."""
    alone = compare(_run(), load_preset("baseline")).baseline.peak_memory_mb
    heavy = compare(_run(width=512, height=512), load_preset("quantize-torchao-int8"))
    assert heavy.optimized.peak_memory_mb > 0
    after = compare(_run(), load_preset("baseline")).baseline.peak_memory_mb
    assert abs(after - alone) <= max(0.15 * alone, 15), (alone, after)
