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
    assert spaces.calls == 4 and all(30 <= seconds <= 300 for seconds in spaces.durations)
    first_pair, last_pair = first[1], last[1]
    assert np.array_equal(first_pair[0], last_pair[0]) and np.array_equal(first_pair[1], last_pair[1])
    assert state() == after_first == before
    environment = last[10]["environment"]
    assert environment["isolation"] == "inline" and "reused between calls" in environment["isolation_note"]
