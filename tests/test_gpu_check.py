"""The prepared GPU check cannot rot between GPU loans: its dry run (the same code path, on the tiny synthetic
FLUX, against a 60 s deadline) runs here, its wheel list comes from the project's own pins, and the in-memory
build and quantization that let it fit in 8 minutes do what the loaders do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402
import gpu_wheels  # noqa: E402


def test_the_dry_run_goes_through_every_case_and_writes_the_record(tmp_path):
    done = subprocess.run(["bash", "scripts/gpu-check", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable})
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    record = json.loads((tmp_path / "gpu-record.json").read_text())
    outcomes = {o["case"]: o for o in record["outcomes"]}
    assert list(outcomes) == ["baseline", *[case.name for case in gpu_check.CASES]]  # every case, in order
    assert outcomes["baseline"]["status"] == "ok"
    for name, outcome in outcomes.items():
        assert outcome["status"] in ("ok", "refused", "skipped"), outcome
        if outcome["status"] == "ok" and name != "baseline":
            report = json.loads((tmp_path / name / "report.json").read_text())  # written as soon as it finished
            assert report["run"]["model"] == "synthetic:flux-tiny" and report["timing"]["runs_per_side"] == 2
        if outcome["status"] == "skipped":
            assert "s left before the deadline" in outcome["detail"]
    # CUDA-only cases are refused with their reason on a CPU, not crashed.
    assert outcomes["attention-cudnn"]["status"] == "refused" and "CUDA" in outcomes["attention-cudnn"]["detail"]
    assert outcomes["model-cpu-offload"]["status"] == "refused"
    assert any(o["status"] == "ok" for name, o in outcomes.items() if name != "baseline")
    text = (tmp_path / "gpu-record.md").read_text()
    assert "| attention-flash |" in text and "Published for comparison" in text and "32.602 s" in text
    assert (tmp_path / "capabilities.txt").read_text().strip()
    assert record["deadline_s"] == gpu_check.DRY_DEADLINE_S


def test_the_case_budgets_fit_eight_minutes_on_the_gpu():
    """docs/GPU.md's budget: the baseline and every case but the optional last within the 8-minute deadline
    at the published per-image time, with the install's minute before it."""
    install_s = 30  # a venv and 16 MiB of local wheels
    needed = (install_s + gpu_check.BASELINE_FIXED_S + gpu_check.BASELINE_IMAGES * gpu_check.SECONDS_PER_IMAGE
              + sum(case.budget_s(gpu_check.SECONDS_PER_IMAGE) for case in gpu_check.CASES[:-1]))
    assert needed <= gpu_check.MAX_DEADLINE_S, needed


def test_the_wheel_list_takes_the_projects_own_pins():
    specs = dict(spec.split("==") for spec in gpu_wheels.requirements())
    pins = gpu_wheels.pinned_versions()
    for name in ("diffusers", "torchao", "optimum-quanto", "bitsandbytes"):
        assert specs[name] == pins[name], name
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-inspection"} <= set(specs)
    done = subprocess.run(["bash", "scripts/gpu-wheels", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0 and "diffusers==" in done.stdout, done.stderr


def test_bitsandbytes_is_trimmed_to_the_cuda_13_and_cpu_libraries(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.0.0-py3-none-manylinux_2_24_x86_64.whl"
    names = ["bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda118.so",
             "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes/libbitsandbytes_cuda132.so"]
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in names:
            archive.writestr(name, b"x" * 1000)
        archive.writestr("bitsandbytes-0.0.0.dist-info/RECORD", "\n".join(f"{n},," for n in names) + "\n")
    before, after = gpu_wheels.trim_bitsandbytes(wheel)
    assert after < before
    with zipfile.ZipFile(wheel) as archive:
        kept = set(archive.namelist())
        record = archive.read("bitsandbytes-0.0.0.dist-info/RECORD").decode()
    assert kept == {"bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so",
                    "bitsandbytes/libbitsandbytes_cuda130.so", "bitsandbytes-0.0.0.dist-info/RECORD"}
    assert "cuda118" not in record and "cuda130.so,sha256=" in record


# ----------------------------------------------------------------------------- what the loaders would have done


def _tiny_t5(tmp_path: Path):
    from transformers import T5Config, T5EncoderModel

    from optim.synthetic import FLUX_TINY_T5, T5_TOKEN_IDS

    model = T5EncoderModel(T5Config(**FLUX_TINY_T5, **T5_TOKEN_IDS)).eval()
    model.save_pretrained(tmp_path / "t5")
    return model


def test_in_memory_bitsandbytes_quantizes_a_text_encoder_as_from_pretrained_does(tmp_path):
    """transformers' bitsandbytes loader runs on a CPU for a text encoder: its result and the in-memory one
    convert the same layers (T5's `wo` stays unquantized, as its `_keep_in_fp32_modules` says) into the same
    4-bit codes. (On a CPU transformers keeps each block's scale in bfloat16 where bitsandbytes itself keeps
    float32, so the scales agree to bfloat16's precision and the outputs closely, not bit for bit.)"""
    import bitsandbytes as bnb
    import torch
    from transformers import BitsAndBytesConfig, T5EncoderModel

    from optim.techniques.quantization import _bitsandbytes_in_memory

    memory = _tiny_t5(tmp_path)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    loaded = T5EncoderModel.from_pretrained(tmp_path / "t5", quantization_config=config, dtype=torch.float32).eval()
    _bitsandbytes_in_memory(memory, config, "transformers")

    def converted(model):
        return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}

    ours, theirs = converted(memory), converted(loaded)
    assert set(ours) == set(theirs) and ours
    assert not any(name.endswith(".wo") for name in ours)
    for name in ours:
        assert torch.equal(ours[name].weight.data, theirs[name].weight.data), name  # the same 4-bit codes
        a, b = ours[name].weight.quant_state.absmax, theirs[name].weight.quant_state.absmax
        assert torch.allclose(a.float().flatten().sort().values, b.float().flatten().sort().values, rtol=1e-2), name
    ids = torch.tensor([[5, 9, 11, 3, 1]])
    with torch.no_grad():
        ours_out, theirs_out = memory(ids).last_hidden_state, loaded(ids).last_hidden_state
    assert (ours_out - theirs_out).abs().max() < 0.05 * theirs_out.abs().max()


def test_in_memory_bitsandbytes_on_a_diffusers_transformer_stores_nf4_as_documented():
    """diffusers' loader quantizes a transformer on a GPU only; its layout is documented: every nn.Linear becomes a
    Linear4bit holding two 4-bit values per byte, plus one float32 absmax per block of 64 values."""
    import bitsandbytes as bnb
    import torch

    from optim.config import BitsAndBytes4Bit
    from optim.synthetic import SYNTHETIC_MODELS, build_pipeline
    from optim.techniques.quantization import quantize_in_memory

    model = SYNTHETIC_MODELS["flux-tiny"]
    pipe = build_pipeline(model, place="cpu", fill_device="cpu", dtype="float32")
    linears = {name: m.weight.numel() for name, m in pipe.transformer.named_modules() if type(m) is torch.nn.Linear}
    quantize_in_memory(pipe, BitsAndBytes4Bit(backend="bitsandbytes_4bit", components=("transformer",)),
                       model.components())
    quantized = {name: m for name, m in pipe.transformer.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert set(quantized) == set(linears)  # diffusers converts every Linear of a Flux transformer
    for name, module in quantized.items():
        assert module.weight.numel() * module.weight.element_size() == linears[name] // 2, name
        assert module.weight.quant_state.absmax.numel() == linears[name] // 64, name


def test_in_memory_torchao_matches_from_pretrained(tmp_path):
    import torch
    from diffusers import FluxTransformer2DModel, TorchAoConfig
    from torchao.quantization import Int8WeightOnlyConfig

    from optim.config import TorchAo
    from optim.synthetic import SYNTHETIC_MODELS, build_pipeline
    from optim.techniques.quantization import module_bytes, quantize_in_memory

    model = SYNTHETIC_MODELS["flux-tiny"]
    pipe = build_pipeline(model, place="cpu", fill_device="cpu", dtype="float32")
    pipe.transformer.save_pretrained(tmp_path / "transformer")
    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "transformer", torch_dtype=torch.float32,
                                                    quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    quantize_in_memory(pipe, TorchAo(backend="torchao", quant_type="int8_weight_only", components=("transformer",)),
                       model.components())
    assert module_bytes(pipe.transformer) == module_bytes(loaded)
    inputs = {"hidden_states": torch.randn(1, 16, 16), "encoder_hidden_states": torch.randn(1, 8, 128),
              "pooled_projections": torch.randn(1, 64), "timestep": torch.tensor([0.5]),
              "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3), "guidance": torch.tensor([3.5])}
    with torch.no_grad():
        assert torch.equal(pipe.transformer(**inputs).sample, loaded(**inputs).sample)


def test_a_synthetic_model_built_in_memory_gives_both_sides_the_same_weights():
    """Each side builds its own copy: the same seed must give the same weights (an A/A comparison is
    bit-identical), with constructor-made buffers kept and T5's embedding tied as the loader ties it."""
    import torch

    from optim.synthetic import SYNTHETIC_MODELS, build_pipeline

    model = SYNTHETIC_MODELS["flux-tiny"]
    first = build_pipeline(model, place="cpu", fill_device="cpu", dtype="bfloat16")
    second = build_pipeline(model, place="cpu", fill_device="cpu", dtype="bfloat16")
    for component in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        a, b = getattr(first, component).state_dict(), getattr(second, component).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), component
    assert next(first.transformer.parameters()).dtype == torch.bfloat16
    assert torch.equal(first.text_encoder.embeddings.position_ids.flatten(), torch.arange(77))
    t5 = first.text_encoder_2
    assert t5.shared.weight.data_ptr() == t5.encoder.embed_tokens.weight.data_ptr()
