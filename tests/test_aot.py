"""Compile mode 'aot' (torch.export + AOTInductor, packages cached on disk: optim/techniques/aot.py).

A cold build, then a load of the same package in a fresh process (each process reports which it did); the image
equals the uncompiled one; every block runs with its own weights; a family without repeated blocks compiles the
whole transformer; the combinations that cannot work are refused before loading, with their reason; on ZeroGPU
aot is available and `spaces`' helpers are used (a stand-in made of the same torch calls). Nothing here asserts
on a speed: build and load times are only checked to be reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from conftest import ModuleBaselines

from optim.config import parse_optim, parse_run
from optim.engine import prepare
from optim.errors import IncompatibleError

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ModuleBaselines()
TOLERANCE = 3  # max abs difference in 0-255 levels, as tests/test_techniques.py allows compile

SIDE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from optim.config import OptimConfig, parse_optim, parse_run
    from optim.engine import prepare
    from optim.measure import SideJob, run_side

    optim = parse_optim({"compile": {"mode": "aot"}})
    ref, run = prepare(parse_run({"steps": 2, "width": 64, "height": 64, "warmup_runs": 1, "timed_runs": 1}), optim)
    side = run_side(SideJob("optimized", ref, run, optim))
    out = {"aot": side.details["aot"], "compile_s": side.compile_s, "applied": side.applied}
    if sys.argv[1] == "with-baseline":
        base = run_side(SideJob("baseline", ref, run, OptimConfig()))
        diff = np.abs(base.image.astype(int) - side.image.astype(int)).max()
        out["max_abs_diff"] = int(diff)
    print("RESULT " + json.dumps(out))
""")


def _side_in_fresh_process(cache: Path, *args: str) -> dict:
    env = {**os.environ, "OPTIM_AOT_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SIDE_SCRIPT, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_cold_build_then_load_in_a_fresh_process(tmp_path):
    cache = tmp_path / "aot"
    cold = _side_in_fresh_process(cache, "with-baseline")
    assert cold["aot"]["status"] == "built"
    assert cold["aot"]["build_s"] > 0 and cold["compile_s"] is not None
    assert {p["target"] for p in cold["aot"]["packages"]} == {"FluxTransformerBlock", "FluxSingleTransformerBlock"}
    assert all(p["status"] == "built" and p["modules"] >= 2 for p in cold["aot"]["packages"])
    assert any("package built in" in step for step in cold["applied"])
    assert cold["max_abs_diff"] <= TOLERANCE, "the AoT image must equal the uncompiled one"
    assert len(list(cache.glob("*/package.pt2"))) == 2 and len(list(cache.glob("*/key.json"))) == 2
    key = json.loads(next(cache.glob("FluxTransformerBlock-*/key.json")).read_text())
    assert {"model_fingerprint", "inputs", "dtype", "device", "torch", "diffusers", "graph"} <= set(key)

    warm = _side_in_fresh_process(cache, "alone")
    assert warm["aot"]["status"] == "loaded" and warm["aot"]["build_s"] == 0
    assert all(p["status"] == "loaded" and "build_s" not in p for p in warm["aot"]["packages"])
    assert [p["key"] for p in warm["aot"]["packages"]] == [p["key"] for p in cold["aot"]["packages"]]
    assert any("package loaded from the disk cache" in step for step in warm["applied"])


def test_a_family_without_repeated_blocks_compiles_the_whole_transformer(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIM_AOT_CACHE", str(tmp_path))
    monkeypatch.setenv("OPTIM_COLD_COMPILE", "0")
    run = parse_run({"model": "tiny:sd3", "steps": 2, "width": 32, "height": 32, "warmup_runs": 1, "timed_runs": 1})
    report = BASELINES.report(parse_optim({"compile": {"mode": "aot"}}), run)
    aot = report["optimized"]["aot"]
    assert aot["status"] == "built"
    assert [p["target"] for p in aot["packages"]] == ["SD3Transformer2DModel"]
    assert report["quality"]["max_abs_diff"] <= TOLERANCE


# ---------------------------------------------------------------------------------------------------- refusals

REFUSED = {
    "first-block-cache": ({"cache": {"method": "first_block_cache", "threshold": 0.2}}, "torch.export traces those hooks"),
    "mag-cache": ({"cache": {"method": "mag_cache", "mag_ratios": "flux"}}, "cannot work with the mag_cache cache"),
    "pab": ({"cache": {"method": "pyramid_attention_broadcast"}}, "cannot work with the pyramid_attention_broadcast"),
    "taylorseer": ({"cache": {"method": "taylorseer"}}, "never skipped a step"),
    "cache-dit": ({"cache": {"method": "cache_dit_dbcache"}}, "cannot work with the cache_dit_dbcache cache"),
    "group-offload": ({"offload": {"mode": "group"}}, "cannot work with group offload"),
    "layerwise-casting": ({"quantization": {"backend": "layerwise_casting"}}, "Couldn't swap Linear.weight"),
    "quanto": ({"quantization": {"backend": "quanto"}}, "cannot bind quanto-quantized weights"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_cannot_be_exported_is_refused_before_loading(name):
    settings, reason = REFUSED[name]
    with pytest.raises(IncompatibleError) as raised:
        prepare(parse_run({"steps": 2, "width": 64, "height": 64}), parse_optim({**settings, "compile": {"mode": "aot"}}))
    assert reason in str(raised.value) and "compile mode 'aot'" in str(raised.value)


@pytest.mark.parametrize(("compile_", "reason"), [
    ({"fullgraph": False}, "always captures one whole graph"),
    ({"dynamic": True}, "one package per input shape"),
    ({"inductor_mode": "reduce-overhead"}, "records CUDA graphs"),
])
def test_settings_aot_cannot_honour_are_refused(compile_, reason):
    with pytest.raises(ValueError, match=reason):
        parse_optim({"compile": {"mode": "aot", **compile_}})


def test_what_works_with_aot_is_not_refused():
    for settings in ({"attention": {"backend": "flex"}}, {"quantization": {"backend": "torchao"}},
                     {"vae": {"slicing": True, "tiling": True}}, {"compile": {"fullgraph": True}}):
        optim = parse_optim({**settings, "compile": {"mode": "aot", **settings.get("compile", {})}})
        prepare(parse_run({"steps": 2, "width": 64, "height": 64}), optim)


# ---------------------------------------------------------------------------------------------------- ZeroGPU


def test_on_zero_gpu_aot_is_available_and_just_in_time_compile_is_not():
    from optim import capabilities

    info = dataclasses.replace(capabilities.device_info(), zero_gpu=True)
    modes = {o.value: o for o in capabilities.compile_modes(info)}
    assert modes["aot"].available and modes["aot"].reason is None
    assert not modes["regional"].available and not modes["full"].available
    inductor = {o.value: o for o in capabilities.inductor_modes(info)}
    assert inductor["default"].available and "aot" in inductor["default"].note


def _tiny_pipe():
    import torch

    class Block(torch.nn.Module):
        def __init__(self, seed: int) -> None:
            super().__init__()
            torch.manual_seed(seed)
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, hidden_states, scale=None):
            return torch.nn.functional.gelu(self.linear(hidden_states)) * scale

    class Transformer(torch.nn.Module):
        _repeated_blocks = ["Block"]

        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(1), Block(2), Block(3)])

        def forward(self, x):
            for block in self.blocks:
                x = block(x, scale=torch.full((1,), 0.5))
            return x

    return types.SimpleNamespace(transformer=Transformer().eval())


def _fake_spaces(calls: list[str]) -> types.ModuleType:
    """spaces' AoT helpers made of the same torch calls (spaces 0.51: aoti_capture patches forward to raise and
    catches it; aoti_compile returns an object holding the package archive in memory)."""
    import torch

    spaces = types.ModuleType("spaces")

    @contextlib.contextmanager
    def aoti_capture(module, call_method="forward"):
        class Captured(Exception):
            pass

        call = types.SimpleNamespace(args=(), kwargs={})

        def capture(*args, **kwargs):
            call.args, call.kwargs = args, kwargs
            raise Captured

        calls.append("aoti_capture")
        setattr(module, call_method, capture)
        try:
            yield call
        except Captured:
            pass
        finally:
            delattr(module, call_method)

    def aoti_compile(program, inductor_configs=None):
        calls.append("aoti_compile")
        archive = io.BytesIO()
        torch._inductor.aoti_compile_and_package(program, package_path=archive, inductor_configs=inductor_configs)
        return types.SimpleNamespace(archive_file=archive)

    def aoti_apply(compiled, module, call_method="forward"):
        raise AssertionError("aoti_apply would run one block's weights in every block: the lab must not call it")

    spaces.aoti_capture, spaces.aoti_compile, spaces.aoti_apply = aoti_capture, aoti_compile, aoti_apply
    return spaces


@pytest.mark.parametrize("zero_gpu", [False, True], ids=["torch", "spaces-on-zerogpu"])
def test_every_block_runs_with_its_own_weights_and_the_undo_restores_eager(tmp_path, monkeypatch, zero_gpu):
    import torch

    from optim.techniques import Applied
    from optim.techniques.aot import apply_aot

    monkeypatch.setenv("OPTIM_AOT_CACHE", str(tmp_path))
    calls: list[str] = []
    if zero_gpu:
        monkeypatch.setenv("SPACES_ZERO_GPU", "true")
        monkeypatch.setitem(sys.modules, "spaces", _fake_spaces(calls))
    pipe = _tiny_pipe()
    x = torch.randn(2, 8)
    with torch.no_grad():
        eager = pipe.transformer(x)
        applied = Applied()
        apply_aot(pipe, "default", applied)
        compiled = pipe.transformer(x)
        again = pipe.transformer(torch.cat([x, x]))  # another shape: another package
    torch.testing.assert_close(compiled, eager)  # block 0's weights in blocks 1 and 2 would not be close
    torch.testing.assert_close(again, torch.cat([eager, eager]))
    report = applied.details["aot"]
    assert report["toolchain"] == ("spaces" if zero_gpu else "torch")
    assert [(p["status"], p["modules"]) for p in report["packages"]] == [("built", 3), ("built", 3)]
    if zero_gpu:
        assert calls.count("aoti_compile") == 2 and calls.count("aoti_capture") == 2
    applied.undo_all()
    assert all("forward" not in block.__dict__ for block in pipe.transformer.blocks)
    with torch.no_grad():
        torch.testing.assert_close(pipe.transformer(x), eager)
