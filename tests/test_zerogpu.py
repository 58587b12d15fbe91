"""The ZeroGPU path (lab/zerogpu.py) against a stand-in for `spaces` that behaves as spaces 0.51 does where it
matters (spaces/zero/wrappers.py): the GPU function runs in one GPU process that is reused between calls (here:
this process, so anything a call leaves behind is seen by the next), and an exception other than `gr.Error`
raised inside comes back as `gr.Error("ZeroGPU worker error", <class name>)`.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from lab import run_panel, sharing
from lab.context import ServerContext
from lab.zerogpu import max_duration

FAST = {"run.steps": 4, "run.width": 64, "run.height": 64, "run.timed_runs": 1}


class FakeSpaces:
    def __init__(self) -> None:
        self.calls = 0
        self.durations: list[int] = []

    def GPU(self, duration=None):  # noqa: N802 - the real decorator's name
        def decorate(task):
            def handler(*args, **kwargs):
                self.calls += 1
                self.durations.append(duration(*args, **kwargs) if callable(duration) else duration)
                try:
                    return task(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as error:  # what spaces does with any other exception
                    raise gr.Error(type(error).__name__, title="ZeroGPU worker error") from None
            return handler
        return decorate


def _forget_capabilities() -> None:
    from optim import capabilities

    capabilities.detect.cache_clear()
    capabilities.device_info.cache_clear()


@pytest.fixture
def zero_gpu(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    _forget_capabilities()  # what this machine can run is read again: ZeroGPU has no just-in-time compile
    spaces = FakeSpaces()
    ctx = ServerContext.create(spaces=spaces)
    assert ctx.zero_gpu and ctx.isolation == "inline"
    assert ctx.capabilities.reason("compile.mode", "regional")
    yield ctx, spaces
    ctx.close()
    monkeypatch.delenv("SPACES_ZERO_GPU")
    _forget_capabilities()


def _values(ctx, preset: str, **changes):
    values = sharing.values_for(ctx, ctx.shipped[preset], sharing.current_run(sharing.default_values(ctx)))
    values.update(FAST)
    values.update(changes)
    return values


def test_an_engine_error_inside_the_gpu_function_reaches_the_user_with_its_message(zero_gpu, monkeypatch):
    ctx, spaces = zero_gpu
    monkeypatch.setenv("OPTIM_FAULT_INJECTION", "1")
    values = _values(ctx, "first-block-cache", **{"run.prompt": "a red circle [fault:raise@optimized]"})
    headline = run_panel.run_comparison(ctx, values, [])[0]  # shown where the result goes
    assert "Not run" in headline and "injected fault: a kernel failed at run time" in headline
    assert "ZeroGPU worker error" not in headline and spaces.calls == 1


@pytest.mark.parametrize("changes", [
    {"offload.mode": "model_cpu"},  # needs a GPU: this machine has none
    {"cache.method": "first_block_cache", "compile.mode": "regional", "compile.fullgraph": "on"},  # cannot work
    {"run.model": "synthetic:flux-dev"},
])
def test_refusals_are_made_before_entering_the_gpu_function(zero_gpu, changes):
    ctx, spaces = zero_gpu
    assert "Not run" in run_panel.run_comparison(ctx, _values(ctx, "baseline", **changes), [])[0]
    assert spaces.calls == 0, "a refusal must not spend GPU quota"


def test_consecutive_calls_in_the_reused_gpu_process_leave_nothing_behind(zero_gpu):
    """What could leak between calls in ZeroGPU's long-lived GPU process: the attention dispatcher, dynamo's
    settings, the inductor cache folder, the cache hooks. The baseline after two optimized runs is bit-identical
    to the first one and the process-wide state is back to its defaults."""
    import os

    import torch._dynamo
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry as registry

    ctx, spaces = zero_gpu

    def state():
        return (str(registry._active_backend), registry._checks_enabled, torch._dynamo.config.cache_size_limit,
                os.environ.get("TORCHINDUCTOR_CACHE_DIR"))

    before = state()
    first = run_panel.run_comparison(ctx, _values(ctx, "baseline"), [])
    after_first = state()
    run_panel.run_comparison(ctx, _values(ctx, "attention-native-flash"), [])
    run_panel.run_comparison(ctx, _values(ctx, "mag-cache"), [])
    last = run_panel.run_comparison(ctx, _values(ctx, "baseline"), [])
    assert spaces.calls == 4 and all(20 <= seconds <= max_duration() for seconds in spaces.durations)
    first_pair, last_pair = first[1], last[1]
    assert np.array_equal(first_pair[0], last_pair[0]) and np.array_equal(first_pair[1], last_pair[1])
    assert state() == after_first == before
    environment = last[10]["environment"]
    assert environment["isolation"] == "inline" and "reused between calls" in environment["isolation_note"]


# The GPU time asked for: the request's own estimate (lab.zerogpu.estimate_gpu_seconds), bounded.

def _work(**changes):
    from lab.zerogpu import GpuWork

    return GpuWork(**{"model_kind": "hub", "steps": 28, "width": 1024, "height": 1024, "timed_runs": 2, **changes})


@pytest.mark.parametrize("field, low, high", [
    ("steps", 8, 28), ("width", 512, 1024), ("height", 512, 1024), ("frames", 1, 49), ("timed_runs", 1, 6),
    ("warmup_runs", 1, 3), ("extra_calls", 0, 1), ("model_kind", "embedded", "hub"),
])
def test_the_estimate_grows_with_the_work_asked_for(field, low, high):
    from lab.zerogpu import estimate_gpu_seconds

    assert estimate_gpu_seconds(_work(**{field: low})) < estimate_gpu_seconds(_work(**{field: high}))
    assert estimate_gpu_seconds(_work(**{field: high})) == estimate_gpu_seconds(_work(**{field: high}))  # pure


@pytest.mark.parametrize("kind", ["embedded", "hub"])
@pytest.mark.parametrize("mode", ["regional", "full", "aot"])
def test_a_cold_compile_costs_more_than_a_warm_one_and_both_more_than_none(kind, mode):
    from lab.zerogpu import estimate_gpu_seconds

    off = estimate_gpu_seconds(_work(model_kind=kind, steps=4, width=256, height=256))
    warm = estimate_gpu_seconds(_work(model_kind=kind, steps=4, width=256, height=256, compile_mode=mode,
                                      compile_warm=True))
    cold = estimate_gpu_seconds(_work(model_kind=kind, steps=4, width=256, height=256, compile_mode=mode))
    assert off < warm < cold


def test_the_request_becomes_its_work_with_the_models_defaults(zero_gpu, monkeypatch):
    from lab import fields
    from lab.zerogpu import AUTO_TIMED_RUNS, gpu_work

    ctx, _ = zero_gpu
    preset, run = fields.settings_from_values(_values(ctx, "mag-cache", **{"run.timed_runs": "auto"}), ctx.shipped)
    work = gpu_work(ctx, run, preset)
    assert (work.model_kind, work.steps, work.width, work.frames) == ("embedded", 4, 64, 1)
    assert work.timed_runs == AUTO_TIMED_RUNS and work.extra_calls == 1  # MagCache calibrates first
    def compiled(mode):
        return preset.model_copy(update={"optim": preset.optim.model_copy(update={
            "compile": preset.optim.compile.model_copy(update={"mode": mode})})})

    regional, aot = compiled("regional"), compiled("aot")
    assert gpu_work(ctx, run, regional).compile_mode == "regional" and not gpu_work(ctx, run, regional).compile_warm
    monkeypatch.setenv("OPTIM_COLD_COMPILE", "0")  # inductor's cache kept: a just-in-time compile is warm ...
    assert gpu_work(ctx, run, regional).compile_warm
    assert not gpu_work(ctx, run, aot).compile_warm  # ... an ahead-of-time one is cold unless told it is warm
    assert gpu_work(ctx, run, aot, compile_warm=True).compile_warm


def test_the_duration_given_to_spaces_is_the_requests_estimate(zero_gpu):
    from lab import fields
    from lab.zerogpu import estimate_gpu_seconds, gpu_work

    ctx, spaces = zero_gpu
    for changes in ({"run.steps": 4}, {"run.steps": 8, "run.width": 128, "run.height": 128, "run.timed_runs": 2}):
        values = _values(ctx, "baseline", **changes)
        preset, run = fields.settings_from_values(values, ctx.shipped)
        assert "Not run" not in run_panel.run_comparison(ctx, values, [])[0]
        assert spaces.durations[-1] == estimate_gpu_seconds(gpu_work(ctx, run, preset))
    assert spaces.calls == 2


def test_a_request_over_the_bound_is_refused_before_the_gpu_function_runs(zero_gpu, monkeypatch):
    """Refused before `spaces.GPU` is entered (no quota spent), on the page and through the API, with the estimate,
    the bound and what to lower."""
    from lab import api, fields
    from lab.zerogpu import MAX_DURATION_ENV, estimate_gpu_seconds, gpu_work

    ctx, spaces = zero_gpu
    monkeypatch.setenv(MAX_DURATION_ENV, "40")
    values = _values(ctx, "baseline", **{"run.steps": 50, "run.width": 1024, "run.height": 1024, "run.timed_runs": 6})
    preset, run = fields.settings_from_values(values, ctx.shipped)
    estimate = estimate_gpu_seconds(gpu_work(ctx, run, preset))
    assert estimate > 40
    headline = run_panel.run_comparison(ctx, values, [])[0]
    assert "Not run" in headline and f"estimated at {estimate} s" in headline and "limit of 40 s" in headline
    assert MAX_DURATION_ENV in headline and "run.steps (50; at most" in headline and "run.timed_runs" in headline
    with pytest.raises(gr.Error, match=f"estimated at {estimate} s"):
        api.api_compare(ctx, "baseline", steps=50, width=1024, height=1024, timed_runs=6)
    assert spaces.calls == 0, "a refused request must not spend GPU quota"
    monkeypatch.setenv(MAX_DURATION_ENV, str(estimate))  # at the bound: runs, and asks for exactly its estimate
    small = _values(ctx, "baseline", **{"run.steps": 4})
    assert "Not run" not in run_panel.run_comparison(ctx, small, [])[0] and spaces.calls == 1


def test_the_bound_comes_from_the_environment():
    from lab.zerogpu import DEFAULT_MAX_DURATION_S, max_duration
    from optim.errors import ConfigError

    assert max_duration({}) == DEFAULT_MAX_DURATION_S == 120 and max_duration({"OPTIM_ZEROGPU_MAX_DURATION": "600"})
    for bad in ("soon", "5"):
        with pytest.raises(ConfigError, match="OPTIM_ZEROGPU_MAX_DURATION"):
            max_duration({"OPTIM_ZEROGPU_MAX_DURATION": bad})


def test_on_zerogpu_ahead_of_time_compile_is_offered_where_just_in_time_is_not(zero_gpu):
    """The Compile tab says which: just-in-time modes are unavailable with their reason, `aot` works."""
    from lab.layout import build_demo

    ctx, _ = zero_gpu
    assert ctx.capabilities.reason("compile.mode", "regional") and ctx.capabilities.reason("compile.mode", "aot") is None
    demo = build_demo(ctx)
    notes = [str(block.value) for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert any(note.startswith("**Just-in-time compile is unavailable here:**") and "(`aot`) works" in note
               for note in notes), notes


def test_a_side_that_cannot_fit_the_lent_gpu_is_refused_before_the_gpu_function_runs(zero_gpu):
    """The planner's card on ZeroGPU is the GPU it lends (large: half an RTX Pro 6000, 48 GB): the summary plans
    for it, and a model that cannot fit (Qwen-Image: 56 GiB of bf16 weights) is refused before any quota is spent,
    saying why; FLUX.1-dev (33 GiB) passes the check."""
    from lab import fields, text
    from optim.errors import OptimError

    ctx, spaces = zero_gpu
    card, where = text.planning_card(ctx)
    assert card.name == "zerogpu" and card.memory_gib == pytest.approx(47.79) and "ZeroGPU" in where
    values = _values(ctx, "first-block-cache", **{"run.model": "Qwen/Qwen-Image", "run.steps": 4,
                                                  "run.width": 1024, "run.height": 1024, "run.timed_runs": 1})
    summary = text.settings_summary(ctx, values)
    assert "ZeroGPU GPU (large: half an RTX Pro 6000, 48 GB)" in summary
    assert "Will be refused:</b> the baseline side needs about 5" in summary and "weights alone take" in summary
    preset, run = fields.settings_from_values(values, ctx.shipped)
    with pytest.raises(OptimError, match=r"will not fit: the baseline side needs about 5\d\.\d GiB .* has 47\.8; "):
        run_panel.execute(ctx, run, preset)
    assert spaces.calls == 0
    flux = _values(ctx, "first-block-cache", **{"run.model": "black-forest-labs/FLUX.1-dev", "run.steps": 4,
                                                "run.width": 1024, "run.height": 1024})
    assert "Will be refused" not in text.settings_summary(ctx, flux)
