"""The GPU path, proven on a CPU: what would break on the first CUDA machine, simulated or shown by its mechanism.

A folder on PYTHONPATH (tests/support/simulated_cuda) makes CUDA look present in every process of a run and
records each call that would initialize CUDA, and any fork made after one (the child of such a fork fails at
its first CUDA call: "Cannot re-initialize CUDA in forked subprocess").
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIMULATION = Path(__file__).resolve().parent / "support" / "simulated_cuda"


def _cuda_build() -> bool:
    import torch

    return bool(torch.version.cuda or torch.version.hip)


# The simulation makes a CPU-only torch look like a CUDA build; on a real CUDA build (the GPU machine) it would
# pretend about a GPU that is really there, so those tests run on CPU machines only (the GPU suite covers it).
simulation = pytest.mark.skipif(_cuda_build(), reason="the CUDA simulation needs a CPU-only torch")


def _run_simulated(code: str, tmp_path: Path, *, extra_path: tuple[str, ...] = (),
                   **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / "cuda.log"
    # Added in front of what is there (a target-folder install of missing packages must stay importable).
    path = [str(SIMULATION), *extra_path, str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "OPTIM_SIMULATED_CUDA_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    environment.pop("OPTIM_WORKER_START", None)
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    lines = log.read_text().splitlines() if log.exists() else []
    return done, lines


@simulation
def test_importing_the_worker_preload_initializes_cuda_where_cuda_is_present(tmp_path):
    """Why a process must not fork after the imports on a CUDA machine: diffusers' import chain reaches
    bitsandbytes, which asks for the device capability at import."""
    done, lines = _run_simulated("import optim.worker_preload", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any("init torch.cuda.get_device_capability" in line for line in lines), lines


@simulation
def test_a_cuda_machine_spawns_its_workers(tmp_path):
    done, _ = _run_simulated("from optim.launch import start_method; print(start_method())", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "spawn"


def test_start_method_follows_the_torch_build_and_the_override():
    from optim.errors import ConfigError
    from optim.launch import start_method

    assert start_method({}) == ("spawn" if _cuda_build() else "fork")  # from the torch build alone
    assert start_method({"OPTIM_WORKER_START": "spawn"}) == "spawn"
    with pytest.raises(ConfigError, match="OPTIM_WORKER_START"):
        start_method({"OPTIM_WORKER_START": "thread"})


@simulation
def test_a_whole_comparison_on_a_cuda_machine_never_forks_after_cuda_initialization(tmp_path):
    done, lines = _run_simulated(
        """
        from optim.config import parse_run
        from optim.engine import compare
        from optim.presets import load_preset
        from optim.launch import launcher

        run = parse_run({"device": "cpu", "steps": 2, "width": 64, "height": 64, "timed_runs": 1})
        report = compare(run, load_preset("baseline")).to_report()
        print("method", launcher.method, "diff", report["quality"]["max_abs_diff"])
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "method spawn diff 0" in done.stdout
    assert any(" init " in line for line in lines), "the simulation was not active"
    assert not [line for line in lines if "FORK" in line], lines


PLANTED = """
import torch
torch.cuda.is_available()  # planted: what torchao's import does; on torch 2.11+cu130 it poisons later forks
"""

FORCED_FORK_COMPARISON = """
from optim.config import parse_run
from optim.engine import compare
from optim.errors import OptimError
from optim.presets import load_preset
import optim.launch as launch

launch.PRELOAD = ["plant_cuda", *launch.PRELOAD]  # imported by the zygote before it forks anything
run = parse_run({"device": "cpu", "steps": 2, "width": 64, "height": 64, "timed_runs": 1})
try:
    compare(run, load_preset("baseline"))
    print("RAN")
except OptimError as error:
    print("REFUSED", error)
"""


@simulation
def test_a_cuda_call_before_the_zygote_forks_is_refused_not_forked(tmp_path):
    """The regression the simulation exists for: something the zygote imports calls `torch.cuda.is_available()`
    (no more than that), and the fork path is forced. The zygote names the call and refuses to fork; nothing is
    forked after CUDA initialization, and no broken side runs."""
    (tmp_path / "plant").mkdir()
    (tmp_path / "plant" / "plant_cuda.py").write_text(PLANTED)
    done, lines = _run_simulated(FORCED_FORK_COMPARISON, tmp_path, extra_path=(str(tmp_path / "plant"),),
                                 OPTIM_WORKER_START="fork")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout and "torch.cuda.is_available was called" in done.stdout, done.stdout
    assert any("init torch.cuda.is_available" in line for line in lines), lines
    assert not [line for line in lines if "FORK" in line], lines
    # The default start path spawns on such a machine: the same comparison runs.
    done, lines = _run_simulated(FORCED_FORK_COMPARISON, tmp_path, extra_path=(str(tmp_path / "plant"),))
    assert done.returncode == 0 and "RAN" in done.stdout, (done.stdout, done.stderr[-3000:])
    assert not [line for line in lines if "FORK" in line], lines


# ------------------------------------------------------------------------- combinations that cannot work on CUDA

from optim import compat  # noqa: E402
from optim.config import parse_optim  # noqa: E402
from optim.errors import IncompatibleError  # noqa: E402
from optim.model_types import ModelInfo, ResolvedRun  # noqa: E402

FLUX_MODEL = ModelInfo(pipeline="FluxPipeline", transformer="FluxTransformer2DModel", guidance="true_cfg",
                       attention_head_dim=32, components={"transformer": "diffusers", "vae": "diffusers",
                                                          "text_encoder": "transformers", "text_encoder_2": "transformers"})


def _cuda_run(**changes) -> ResolvedRun:
    settings = dict(model="embedded", prompt="a red circle", negative_prompt=None, seed=0, steps=4, width=64,
                    height=64, guidance_scale=3.0, max_sequence_length=16, dtype="bfloat16", device="cuda",
                    warmup_runs=1, timed_runs=1)
    settings.update(changes)
    return ResolvedRun(**settings)


def test_model_offload_with_a_full_graph_is_refused_and_auto_allows_graph_breaks():
    from optim.techniques.compile import resolve_fullgraph

    with pytest.raises(IncompatibleError, match="model_cpu offload moves weights in accelerate hooks"):
        compat.check(parse_optim({"offload": {"mode": "model_cpu"}, "compile": {"mode": "full", "fullgraph": True}}),
                     _cuda_run(), FLUX_MODEL)
    auto = parse_optim({"offload": {"mode": "model_cpu"}, "compile": {"mode": "full"}})
    compat.check(auto, _cuda_run(), FLUX_MODEL)
    assert resolve_fullgraph(auto) is False
    from optim.presets import load_preset

    row3 = load_preset("flux-table-quantization-compile-offload").optim
    assert row3.compile.fullgraph is None and resolve_fullgraph(row3) is False


def test_accelerate_offload_hooks_cannot_be_traced_into_one_graph():
    """The mechanism, on CPU: accelerate's CpuOffload.pre_forward is wrapped in torch.compiler.disable, so a
    fullgraph compile of an offloaded transformer fails in dynamo."""
    import torch
    from accelerate import cpu_offload_with_hook
    from torch._dynamo.exc import Unsupported

    from optim.models import load_pipeline, resolve_model

    pipe = load_pipeline(resolve_model("embedded"), dtype="float32")
    cpu_offload_with_hook(pipe.transformer, execution_device=torch.device("cpu"))
    pipe.transformer.compile(fullgraph=True)
    try:
        with pytest.raises(Unsupported):
            pipe("a red circle on a blue background", num_inference_steps=1, height=32, width=32,
                 max_sequence_length=16, output_type="np")
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
@pytest.mark.parametrize("other", [{"cache": {"method": "first_block_cache"}}, {"offload": {"mode": "model_cpu"}},
                                   {"offload": {"mode": "group"}}])
def test_cuda_graph_modes_are_refused_with_caches_and_offload(mode, other):
    optim = parse_optim({**other, "compile": {"mode": "full", "inductor_mode": mode}})
    with pytest.raises(IncompatibleError, match="CUDA graphs"):
        compat.check(optim, _cuda_run(), FLUX_MODEL)
    without_graphs = parse_optim({**other, "compile": {"mode": "full", "inductor_mode": "max-autotune-no-cudagraphs"}})
    compat.check(without_graphs, _cuda_run(), FLUX_MODEL)


def test_cuda_graph_outputs_are_copied_when_the_pipeline_calls_the_transformer_twice_a_step():
    """A CUDA graph replays into the same output memory: simulated by a function that always returns one buffer.
    True CFG keeps the first call's output while making the second; the copy keeps it intact."""
    import torch

    from optim.techniques.compile import clone_outputs, uses_cuda_graphs

    assert uses_cuda_graphs("reduce-overhead") and uses_cuda_graphs("max-autotune")
    assert not uses_cuda_graphs("max-autotune-no-cudagraphs") and not uses_cuda_graphs("default")
    buffer = torch.zeros(3)

    def replay(value: float):
        buffer.fill_(value)
        return (buffer,)

    conditional = replay(1.0)[0]
    replay(2.0)
    assert conditional[0].item() == 2.0  # what a graph replay does to a kept output
    safe = clone_outputs(replay)
    conditional = safe(1.0)[0]
    safe(2.0)
    assert conditional[0].item() == 1.0


# ----------------------------------------------------------------------------------------- synthetic models


def _small_synthetic():
    from optim.models import ModelDefaults
    from optim.synthetic import FLUX_TOKENIZERS, SyntheticModel, flux_parts

    transformer = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                       num_attention_heads=2, joint_attention_dim=256, pooled_projection_dim=32,
                       guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    clip = dict(vocab_size=1000, hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu")
    t5 = dict(vocab_size=1000, d_model=256, d_kv=32, d_ff=2048, num_layers=10, num_decoder_layers=0, num_heads=8,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              is_encoder_decoder=False, use_cache=False, dropout_rate=0.0)
    vae = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
               latent_channels=4, norm_num_groups=4, sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
               scaling_factor=1.0, shift_factor=0.0)
    return SyntheticModel(description="a small FLUX for tests", defaults=ModelDefaults(steps=2, width=32, height=32),
                          pipeline="FluxPipeline", parts=flux_parts(transformer, clip=clip, t5=t5, vae=vae),
                          tokenizers=FLUX_TOKENIZERS)


@pytest.fixture
def small_synthetic(monkeypatch, tmp_path):
    from optim import synthetic

    monkeypatch.setenv("OPTIM_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(synthetic.SYNTHETIC_MODELS, "small-test", _small_synthetic())
    from optim.models import resolve_model

    return resolve_model("synthetic:small-test")


@pytest.mark.parametrize("build", ["disk", "memory"])
def test_a_synthetic_model_loads_like_a_real_one_with_buffers_and_tied_weights_intact(small_synthetic, build,
                                                                                      monkeypatch):
    """Written to a folder and loaded with from_pretrained, or built straight into memory (what a GPU does):
    either way the constructor-made buffers keep their values and T5's tied embedding stays tied."""
    import torch
    from safetensors import safe_open

    from optim.models import load_pipeline
    from optim.synthetic import BUILD_ENV, synthetic_model_path

    monkeypatch.setenv(BUILD_ENV, build)
    pipe = load_pipeline(small_synthetic, dtype="float32")
    clip_positions = pipe.text_encoder.embeddings.position_ids
    assert torch.equal(clip_positions.flatten(), torch.arange(77))  # to_empty used to leave garbage here
    t5 = pipe.text_encoder_2
    assert t5.encoder.embed_tokens.weight.data_ptr() == t5.shared.weight.data_ptr()  # the tie survives
    folder = synthetic_model_path("small-test")
    for path in folder.glob("*/*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                assert tensor.get_dtype() in ("BF16", "I64"), (path, name, tensor.get_dtype())
    image = pipe("a red circle", num_inference_steps=1, height=32, width=32, max_sequence_length=16,
                 output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_writing_a_synthetic_model_holds_one_shard_at_a_time_never_an_fp32_copy(small_synthetic, tmp_path):
    from optim import memory
    from optim.synthetic import SYNTHETIC_MODELS, weights_bytes, write_model

    model = SYNTHETIC_MODELS["small-test"]
    total_mb = weights_bytes(model) / 2**20
    memory.trim_heap()
    memory.reset_host_peak()
    before = memory.rss_mb()
    write_model(model, tmp_path / "written", shard_bytes=4 * 2**20)
    grown = memory.host_peak_mb() - before
    assert total_mb > 30, total_mb
    assert grown < 0.5 * total_mb, (grown, total_mb)  # fp32 staging of everything would be 2x total
    assert len(list((tmp_path / "written" / "text_encoder_2").glob("model-*-of-*.safetensors"))) > 3


def test_a_synthetic_model_quantizes_at_load_like_a_real_one(small_synthetic):
    from optim.config import Quanto
    from optim.models import load_pipeline, model_components
    from optim.techniques.quantization import build_quantization_config

    quant = Quanto(backend="quanto", components=("transformer",))
    config = build_quantization_config(quant, model_components(small_synthetic))
    pipe = load_pipeline(small_synthetic, dtype="float32", quantization_config=config)
    kinds = {type(m.weight).__name__ for m in pipe.transformer.modules() if hasattr(m, "weight") and m.weight is not None}
    assert any("QBytesTensor" in kind or "QTensor" in kind for kind in kinds), kinds


def test_synthetic_models_are_described_without_writing_them(small_synthetic, tmp_path):
    model = compat.describe_model(small_synthetic)
    assert model.components["text_encoder_2"] == "transformers" and model.attention_head_dim == 16
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------- quanto and group offload


def test_moving_a_quanto_weight_the_way_group_offload_does_leaves_its_data_behind():
    import torch
    from optimum.quanto import freeze, qint8, quantize

    module = torch.nn.Sequential(torch.nn.Linear(8, 8))
    quantize(module, weights=qint8)
    freeze(module)
    weight = module[0].weight
    inner = weight._data
    moved = weight.data.to("cpu", copy=True)  # diffusers: moved = source.to(onload_device); tensor.data = moved
    weight.data = moved
    assert weight._data.data_ptr() == inner.data_ptr() and weight._data is not moved._data
    with pytest.raises(IncompatibleError, match="quanto"):
        compat.check(parse_optim({"quantization": {"backend": "quanto"}, "offload": {"mode": "group"}}),
                     _cuda_run(), FLUX_MODEL)


# ------------------------------------------------------------------------------------------- attention


def test_attention_needs_are_read_from_diffusers_own_constraints():
    from optim.techniques.attention import backend_needs

    assert backend_needs("_sage_qk_int8_pv_fp8_cuda").min_compute_capability == (9, 0)
    assert backend_needs("_sage_qk_int8_pv_fp8_cuda_sm90").min_compute_capability == (9, 0)
    assert backend_needs("_sage_qk_int8_pv_fp16_cuda").min_compute_capability == (8, 0)
    assert backend_needs("flash").dtypes == ("bfloat16", "float16")
    assert backend_needs("_native_cudnn").dtypes == ("bfloat16", "float16")
    assert backend_needs("sage_blackwell_hub").head_dims == (64, 128)
    assert backend_needs("native") == backend_needs("_native_math") and backend_needs("native").dtypes is None


def test_fp8_sage_needs_hopper_and_fp16_sage_needs_ampere(monkeypatch):
    import dataclasses

    from optim import capabilities
    from optim.techniques import attention

    monkeypatch.setattr(attention, "backend_requirement", lambda backend: None)  # as if sageattention were there
    ada = dataclasses.replace(capabilities.device_info(), cuda=True, compute_capability="8.9")
    turing = dataclasses.replace(capabilities.device_info(), cuda=True, compute_capability="7.5")
    assert "9.0" in capabilities.attention_reason("_sage_qk_int8_pv_fp8_cuda", ada)
    assert capabilities.attention_reason("_sage_qk_int8_pv_fp16_cuda", ada) is None
    assert "8.0" in capabilities.attention_reason("_sage_qk_int8_pv_fp16_triton", turing)
    assert "Ampere" in capabilities.attention_reason("flash", turing)


def test_half_precision_backends_refuse_float32_before_loading(monkeypatch):
    from optim.capabilities import Capabilities

    monkeypatch.setattr(Capabilities, "reason", lambda self, path, value: None)  # as if installed on a GPU
    for backend in ("flash", "sage", "_native_flash", "_native_cudnn"):
        with pytest.raises(IncompatibleError, match="bfloat16 or float16 only; this run uses float32"):
            compat.check(parse_optim({"attention": {"backend": backend}}), _cuda_run(dtype="float32"), FLUX_MODEL)
        compat.check(parse_optim({"attention": {"backend": backend}}), _cuda_run(dtype="bfloat16"), FLUX_MODEL)
    cpu_run = _cuda_run(dtype="float32", device="cpu")
    with pytest.raises(IncompatibleError, match="with the dispatcher checks on, diffusers accepts bfloat16 or float16"):
        compat.check(parse_optim({"attention": {"backend": "_native_flash", "checks": True}}), cpu_run, FLUX_MODEL)
    compat.check(parse_optim({"attention": {"backend": "_native_flash"}}), cpu_run, FLUX_MODEL)  # CPU kernel: fp32 ok
    with pytest.raises(IncompatibleError, match="head dimensions 64, 128"):
        compat.check(parse_optim({"attention": {"backend": "sage_blackwell_hub"}}), _cuda_run(), FLUX_MODEL)


def test_a_hub_kernel_that_cannot_be_fetched_is_a_clear_error():
    import types

    from optim.config import AttentionConfig
    from optim.errors import UnavailableError
    from optim.techniques import Applied
    from optim.techniques.attention import apply_attention

    def fail(name):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the kernel")

    pipe = types.SimpleNamespace(transformer=types.SimpleNamespace(set_attention_backend=fail))
    with pytest.raises(UnavailableError, match="could not fetch its kernel from the Hugging Face Hub"):
        apply_attention(pipe, AttentionConfig(backend="_flash_3_hub"), Applied())


# --------------------------------------------------------------------------------------------- offload


def test_streamed_group_offload_takes_one_block_per_group_as_diffusers_does():
    from optim.errors import ConfigError

    with pytest.raises(ConfigError, match="num_blocks_per_group must be 1 with use_stream=true"):
        parse_optim({"offload": {"mode": "group", "use_stream": True, "num_blocks_per_group": 4}})
    parse_optim({"offload": {"mode": "group", "use_stream": True}})
