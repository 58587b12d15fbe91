"""The memory planner (optim/plan/): its weight bytes are exactly what the quantizers produce (torchao, quanto and
bitsandbytes really run on the tiny build of every family on this CPU; bitsandbytes through the loaders' own
layer replacement, as the GPU check does), layerwise casting is a real technique verified on the embedded model,
and `optim plan` answers the seed's question for FLUX.1-dev on an RTX 4090 offline, in seconds.

The working-memory model is checked against published figures and measured peaks by
benchmarks/plan_check.py (a record, not a test: its figures depend on the machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from optim import families as F
from optim.config import parse_optim
from optim.errors import ConfigError, IncompatibleError
from optim.models import load_pipeline, model_components, resolve_model
from optim.plan import plan, predict
from optim.plan.cards import CARDS, parse_card
from optim.plan.weights import SCHEMES, component_weights, model_parts
from optim.synthetic import build_on_meta
from optim.techniques.quantization import build_quantization_config, module_bytes, quantize_in_memory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def _quantized(model: str, scheme: str, dtype: str):
    """The model loaded through the lab's own path with `scheme` on every transformer and text encoder."""
    ref = resolve_model(model)
    parts, _ = model_parts(ref)
    libraries = model_components(ref)
    settings = SCHEMES[scheme].settings
    if settings["backend"] == "none":
        return load_pipeline(ref, dtype=dtype, device="cpu"), parts, []
    if settings["backend"] == "layerwise_casting":
        components = [c for c in parts if c == "transformer"]
    else:
        components = [c for c in parts if c == "transformer" or c.startswith("text_encoder")]
    quant = parse_optim({"quantization": {**settings, "components": components}}).quantization
    if settings["backend"].startswith("bitsandbytes"):  # diffusers refuses to quantize on a CPU: in memory
        pipe = load_pipeline(ref, dtype=dtype, device="cpu")
        quantize_in_memory(pipe, quant, libraries)
    elif settings["backend"] == "layerwise_casting":
        from optim.techniques.quantization import apply_layerwise_casting

        pipe = load_pipeline(ref, dtype=dtype, device="cpu")
        apply_layerwise_casting(pipe, quant, compute_dtype=dtype)
    else:
        pipe = load_pipeline(ref, dtype=dtype, quantization_config=build_quantization_config(quant, libraries),
                             quantization=quant, device="cpu")
    return pipe, parts, components


def _check_exact(model: str, scheme: str, dtype: str) -> None:
    pipe, parts, components = _quantized(model, scheme, dtype)
    for component, part in parts.items():
        stored = SCHEMES[scheme] if component in components else SCHEMES["none"]
        predicted = component_weights(build_on_meta(part), component, part.library, stored, dtype).bytes
        assert predicted == module_bytes(getattr(pipe, component)), (model, scheme, component)


@pytest.mark.parametrize("scheme", [key for key in SCHEMES if key != "none"])
def test_every_scheme_is_exact_on_tiny_flux(scheme):
    _check_exact("tiny:flux", scheme, "bfloat16")


@pytest.mark.parametrize("key", [key for key in F.FAMILIES if key != "flux"])
@pytest.mark.parametrize("scheme", ["torchao_int8", "quanto_int4", "bnb_nf4_dq", "layerwise_fp8"])
def test_schemes_are_exact_on_every_family(key, scheme):
    """Wan keeps modules in float32 and its quanto path quantizes them anyway; Qwen-Image's text encoder has
    non-persistent buffers; SD3 and CogVideoX batch their guidance: each rule is met somewhere here."""
    _check_exact(f"tiny:{key}", scheme, "bfloat16")


@pytest.mark.parametrize("model, dtype", [("embedded", "float32"), ("tiny:flux", "float16")])
def test_the_run_dtype_decides_what_stays_float32(model, dtype):
    """At float16, transformers keeps T5's `wo` in float32 (and bitsandbytes keeps it out); at float32 nothing
    changes but the scales."""
    for scheme in ("none", "bnb_int8", "quanto_int8"):
        _check_exact(model, scheme, dtype)


def test_the_layerwise_layers_are_diffusers_own():
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    from optim.plan.weights import LAYERWISE_LAYERS

    assert LAYERWISE_LAYERS == tuple(layer.__name__ for layer in _GO_LC_SUPPORTED_PYTORCH_LAYERS)


def test_layerwise_casting_on_the_embedded_model_stores_a_quarter_of_float32():
    """The technique itself: each cast layer's weight is float8 (one byte a value: a quarter of its float32 bytes,
    measured from the loaded model), the rest stays float32, and the image changes only slightly."""
    from conftest import ModuleBaselines

    from optim.config import parse_run

    reference = load_pipeline(resolve_model("embedded"), dtype="float32", device="cpu")
    pipe, _, _ = _quantized("embedded", "layerwise_fp8", "float32")
    cast = 0
    for (_name, before), (_, after) in zip(reference.transformer.named_modules(), pipe.transformer.named_modules()):
        weight = getattr(after, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype == torch.float8_e4m3fn:
            # One byte a value against float32's four: a quarter, measured from the two loaded models.
            assert weight.numel() * weight.element_size() * 4 == before.weight.numel() * before.weight.element_size()
            cast += 1
    assert cast >= 10, "the transformer's linear layers are cast"
    assert any(getattr(m, "weight", None) is not None and m.weight.dtype == torch.float32
               for m in pipe.transformer.modules() if "norm" in type(m).__name__.lower()), "norms stay float32"
    report = ModuleBaselines().report(parse_optim({"quantization": {"backend": "layerwise_casting"}}),
                                      parse_run({"steps": 6, "warmup_runs": 1, "timed_runs": 1}))
    sizes = report["optimized"]["quantization"]["transformer"]
    assert sizes["after_mb"] < 0.5 * sizes["before_mb"]
    assert report["quality"]["psnr_db"] is not None and report["quality"]["psnr_db"] > 30
    assert any("layerwise casting: float8_e4m3fn storage on transformer" in line
               for line in report["optimized"]["applied"])


def test_layerwise_casting_refuses_a_text_encoder_with_the_fix():
    from optim.config import parse_run
    from optim.engine import prepare

    with pytest.raises(IncompatibleError, match="layerwise casting is a diffusers model method.*text_encoder"):
        prepare(parse_run({"steps": 2}), parse_optim({"quantization": {"backend": "layerwise_casting",
                                                                       "components": ["text_encoder"]}}))


def test_the_seeds_question_flux_dev_on_an_rtx_4090():
    """bf16 without offload does not fit 24 GB; NF4 on the transformer and T5 does; the bf16 weights are the
    published parameter counts at two bytes each."""
    result = plan("black-forest-labs/FLUX.1-dev", "rtx-4090")
    loaded = next(o for o in result.options if o.settings == {"offload": {"mode": "none"}})
    assert not loaded.fits and loaded.peak_gib > 30
    nf4 = next(o for o in result.options if o.settings == {
        "offload": {"mode": "none"},
        "quantization": {"backend": "bitsandbytes_4bit", "quant_type": "nf4",
                         "components": ["transformer", "text_encoder_2"]}})
    assert nf4.fits and nf4.peak_gib < 16
    assert abs(result.parameters["transformer"] - 11.9e9) < 0.05e9
    assert result.weights["transformer"]["none"] == pytest.approx(2 * result.parameters["transformer"], rel=0.01)
    # Every option can be loaded into the controls: its settings parse.
    for option in result.fits[:50]:
        parse_optim(option.settings)
    # Offload moves the peak: model offload needs only the largest component with its working memory.
    offloaded = next(o for o in result.options if o.settings == {"offload": {"mode": "model_cpu"}})
    assert offloaded.peak_bytes < loaded.peak_bytes / 1.4 and offloaded.host_bytes > 0


def test_the_cli_answers_offline_with_every_term_in_json(tmp_path):
    done = subprocess.run([sys.executable, "-m", "optim", "plan", "--model", "black-forest-labs/FLUX.1-dev", "--gpu",
                           "rtx-4090", "--storage", "bnb_nf4"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "as loaded (weights in bfloat16, no offload)" in done.stdout and "does not fit" in done.stdout
    assert "bitsandbytes NF4 (transformer, text_encoder_2), no offload" in done.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "optim", "plan", "--model", "embedded", "--gpu", "4",
                                      "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300).stdout)
    option = data["options"][0]
    assert option["fits"] and option["terms"] and all(isinstance(v, int) for t in option["terms"].values()
                                                      for v in t.values())


def test_cards_and_sizes():
    assert parse_card("rtx-4090") is CARDS["rtx-4090"]
    assert parse_card("16GB").memory_gib == 16 and parse_card("12").memory_gib == 12
    with pytest.raises(ConfigError, match="known card"):
        parse_card("gtx-9000")


@pytest.mark.parametrize("key", list(F.FAMILIES))
def test_every_family_plans(key):
    result = plan(f"tiny:{key}", "1")
    assert result.fits, key
    assert np.isfinite([o.peak_bytes for o in result.options]).all()


def _option(result, offload: str, scheme: str | None = None, components=("transformer", "text_encoder_2")):
    want = {"offload": {"mode": offload}}
    if scheme:
        want["quantization"] = {**SCHEMES[scheme].settings, "components": list(components)}
    return next(o for o in result.options if o.settings == want)


def test_transformers_4_rules_keep_t5s_wo_in_float32():
    """Both keep T5's `wo` (its `_keep_in_fp32_modules`) out of NF4; transformers 4.x's bitsandbytes loaders also
    kept it in float32 at bf16: the T5 under those rules is bigger by exactly those layers' two extra bytes."""
    ref = resolve_model("black-forest-labs/FLUX.1-dev")
    parts, _ = model_parts(ref)
    t5 = build_on_meta(parts["text_encoder_2"])
    now = component_weights(t5, "text_encoder_2", "transformers", SCHEMES["bnb_nf4"], "bfloat16")
    then = component_weights(t5, "text_encoder_2", "transformers", SCHEMES["bnb_nf4"], "bfloat16",
                             rules="transformers-4")
    wo = [m for name, m in t5.named_modules() if name.endswith(".wo")]
    linears = [m for m in t5.modules() if isinstance(m, torch.nn.Linear)]
    assert wo and then.quantized_layers == now.quantized_layers == len(linears) - len(wo)
    assert then.bytes - now.bytes == sum(2 * m.weight.numel() for m in wo)
    # Only bitsandbytes followed that rule; torchao's loader did not.
    assert component_weights(t5, "text_encoder_2", "transformers", SCHEMES["torchao_int8"], "bfloat16",
                             rules="transformers-4").bytes == \
        component_weights(t5, "text_encoder_2", "transformers", SCHEMES["torchao_int8"], "bfloat16").bytes
    with pytest.raises(ConfigError, match="rules"):
        plan("embedded", "4", rules="transformers-3")


def test_loading_bitsandbytes_components_counts_before_offload_moves_them():
    """bitsandbytes quantizes on the GPU, so with model offload the quantized components are all there at load:
    the option needs their sum even though a generation holds one at a time."""
    result = plan("black-forest-labs/FLUX.1-dev", "rtx-4090", storage="bnb_nf4")
    option = _option(result, "model_cpu", "bnb_nf4")
    both = result.weights["transformer"]["bnb_nf4"] + result.weights["text_encoder_2"]["bnb_nf4"]
    assert option.load_peak_bytes == both > option.peak_bytes and option.need_bytes == both
    assert "while loading" in option.reason
    # torchao quantizes where the model is loaded (the host): nothing is on the GPU before the offload.
    torchao = _option(plan("black-forest-labs/FLUX.1-dev", "rtx-4090", storage="torchao_int8"), "model_cpu",
                      "torchao_int8")
    assert torchao.load_peak_bytes == 0
    # A card between the two figures: fits by the generation's peak, not by the load.
    between = plan("black-forest-labs/FLUX.1-dev", f"{(option.peak_bytes + both) / 2 / 2**30 + 0.5:.2f}",
                   storage="bnb_nf4")
    assert not _option(between, "model_cpu", "bnb_nf4").fits


def test_old_loaders_leave_bnb_8bit_on_the_gpu_under_model_offload():
    installed = _option(plan("black-forest-labs/FLUX.1-dev", "h100", storage="bnb_int8"), "model_cpu", "bnb_int8")
    old = _option(plan("black-forest-labs/FLUX.1-dev", "h100", storage="bnb_int8", rules="transformers-4"),
                  "model_cpu", "bnb_int8")
    assert old.peak_bytes - installed.peak_bytes > 4 * 2**30  # T5's 8-bit weights stay beside the transformer


def test_the_reserved_figure_bounds_the_peak_and_keeps_what_each_phase_freed():
    result = plan("black-forest-labs/FLUX.1-dev", "h100")
    for option in result.options:
        assert option.reserved_peak_bytes >= option.peak_bytes
    loaded = _option(result, "none")
    assert loaded.reserved_peak_bytes > loaded.peak_bytes  # the decoder's stages each keep their blocks


def test_predict_reads_one_sides_lab_settings():
    """`predict` maps the lab's sections onto the planner's combinations: the same figure as the plan's option."""
    from optim.config import parse_run

    run = parse_run({"model": "black-forest-labs/FLUX.1-dev"})
    result = plan("black-forest-labs/FLUX.1-dev", "rtx-4090")
    nf4 = {"backend": "bitsandbytes_4bit", "quant_type": "nf4", "components": ["transformer", "text_encoder_2"]}
    for settings in ({"offload": {"mode": "none"}}, {"offload": {"mode": "model_cpu"}, "quantization": nf4},
                     {"offload": {"mode": "group", "offload_type": "leaf_level"}}):
        want = next(o for o in result.options if o.settings == settings)
        got = predict(run, parse_optim(settings), "rtx-4090")
        assert (got.need_bytes, got.fits, got.label) == (want.need_bytes, want.fits, want.label)
    assert not predict(run, parse_optim({}), "rtx-4090").fits


def test_a_report_on_a_gpu_gives_each_sides_planned_peak_beside_the_measured_one():
    """Every comparison on CUDA checks the planner: report.json's `planned` of each side holds the prediction, the
    measured peak and the error between them, and the Details tab says it. The sides are measured here on the CPU
    and the comparison is told it ran on a 24 GB GPU: the numbers are not a GPU's, the wiring is what is checked.
    Off CUDA there is no `planned` (a CPU's RSS is not what the planner predicts)."""
    from dataclasses import replace

    from lab.text import details_markdown
    from optim.config import OptimConfig, parse_run
    from optim.engine import Comparison, prepare
    from optim.measure import SideJob, run_side
    from optim.plan import predict
    from optim.presets import make_preset
    from optim.report_model import Report

    optim = parse_optim({"vae": {"tiling": True}})
    ref, run = prepare(parse_run({"steps": 2, "warmup_runs": 1, "timed_runs": 1}), optim)
    sides = [run_side(SideJob(side, ref, run, o)) for side, o in (("baseline", OptimConfig()), ("optimized", optim))]
    on_cpu = Comparison.from_sides(run, make_preset("t", optim), *sides, environment={"device": "cpu"}).to_report()
    assert "planned" not in on_cpu["baseline"] and "planned" not in on_cpu["optimized"]

    on_gpu = replace(run, device="cuda")
    environment = {"device": "cuda", "gpu_memory_gb": 23.99, "isolation": "process", "device_name": "test"}
    report = Comparison.from_sides(on_gpu, make_preset("t", optim), *sides, environment=environment).to_report()
    for side, result, settings in zip(("baseline", "optimized"), sides, (OptimConfig(), optim)):
        planned = report[side]["planned"]
        expected = predict(on_gpu, settings, "24").peak_bytes / 2**20
        assert planned["predicted_peak_mb"] == pytest.approx(expected, abs=0.1)
        assert planned["measured_peak_mb"] == pytest.approx(result.peak_memory_mb, abs=0.1)
        assert planned["error"] == pytest.approx(expected / result.peak_memory_mb - 1, abs=1e-3)
        assert planned["fits"] is True
    text = details_markdown(Report.model_validate(report))
    assert "### GPU memory: planned and measured" in text and "baseline planned 0." in text
    assert "optimized planned" in text and "measured" in text
