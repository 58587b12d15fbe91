"""What this machine can run: every option, available or not, and why not. The one place for version and
feature checks (which packages, which GPU, ZeroGPU or not).

    >>> caps = detect()
    >>> caps.reason("offload.mode", "model_cpu")          # doctest: +SKIP  (on a CPU-only machine)
    'diffusers onloads weights to an accelerator: it needs a CUDA GPU'

Options are listed per setting, by its path in the config (`attention.backend`, `cache.method`,
`quantization.torchao.quant_type`, `offload.use_stream` ...), so the UI can mark any choice generically. Which
values need a CUDA GPU is a fact of the setting (`optim.config.facts`); what is installed, which GPU this is and
the attention backends' own requirements (diffusers' checks, `optim.techniques.attention`) are checked here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from optim import config as C

# The seed's table: backend -> family. Names diffusers registers beyond it get a family by prefix.
SEED_BACKENDS: dict[str, str] = {
    "native": "PyTorch native",
    "flex": "FlexAttention",
    "_native_cudnn": "PyTorch native",
    "_native_efficient": "PyTorch native",
    "_native_flash": "PyTorch native",
    "_native_math": "PyTorch native",
    "_native_npu": "PyTorch native",
    "_native_xla": "PyTorch native",
    "flash": "FlashAttention",
    "flash_varlen": "FlashAttention",
    "_flash_3": "FlashAttention",
    "_flash_varlen_3": "FlashAttention",
    "_flash_3_hub": "FlashAttention",
    "sage": "SageAttention",
    "sage_varlen": "SageAttention",
    "_sage_qk_int8_pv_fp8_cuda": "SageAttention",
    "_sage_qk_int8_pv_fp8_cuda_sm90": "SageAttention",
    "_sage_qk_int8_pv_fp16_cuda": "SageAttention",
    "_sage_qk_int8_pv_fp16_triton": "SageAttention",
    "xformers": "xFormers",
}

GPU_EXTRAS_HINT = "on a CUDA machine: requirements-gpu.txt and docs/GPU.md say how to install it"


@dataclass(frozen=True)
class DeviceInfo:
    """The machine: its accelerator (if any), CPU, memory and library versions."""

    cuda: bool
    device: str  # "cuda" or "cpu"
    name: str | None
    memory_gb: float | None
    compute_capability: str | None
    cpu: str
    cpu_count: int | None
    ram_gb: float | None
    python: str
    torch: str
    diffusers: str | None
    transformers: str | None
    cuda_version: str | None
    zero_gpu: bool
    compiler: str | None

    @property
    def sm(self) -> float:
        return float(self.compute_capability or 0.0)


@dataclass(frozen=True)
class Option:
    """One value of one setting: can it run here, and if not, why not (or a caveat when it can)."""

    value: Any
    available: bool
    reason: str | None = None
    note: str | None = None
    label: str | None = None
    family: str | None = None  # attention backends only


@dataclass(frozen=True)
class Capabilities:
    """Every choice of every setting, as this machine can run it; and, per pipeline family, which techniques work
    on it at all (`families`: the same on every machine, from `optim.families.technique_support`)."""

    device: DeviceInfo
    options: dict[str, tuple[Option, ...]] = field(default_factory=dict)
    families: dict[str, tuple[Option, ...]] = field(default_factory=dict)

    def family_reason(self, family: str, technique: str) -> str | None:
        """Why `technique` (e.g. "cache.faster_cache", "compile.regional") cannot work on pipeline family `family`
        (None: it can)."""
        option = next((o for o in self.families.get(family, ()) if o.value == technique), None)
        return option.reason if option is not None else None

    def families_json(self) -> dict[str, Any]:
        return {key: [asdict(o) for o in options] for key, options in self.families.items()}

    def families_text(self) -> str:
        """The families section of `python -m optim capabilities`: per family, each technique, and why not."""
        lines = ["Pipeline families (which techniques work on each, whatever the machine):"]
        for key, options in self.families.items():
            lines.append(f"\n{key}:")
            for option in options:
                mark = "yes" if option.available else "no "
                lines.append(f"  {mark}  {option.value}  ({option.reason or option.note})")
        return "\n".join(lines)

    def option(self, path: str, value: Any) -> Option | None:
        return next((o for o in self.options.get(path, ()) if o.value == value), None)

    def reason(self, path: str, value: Any) -> str | None:
        """Why `value` of setting `path` cannot run here (None: it can, or it is not a listed choice)."""
        option = self.option(path, value)
        return option.reason if option is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"device": asdict(self.device),
                "options": {path: [asdict(o) for o in options] for path, options in self.options.items()}}


def family(backend: str) -> str:
    if backend in SEED_BACKENDS:
        return SEED_BACKENDS[backend]
    name = backend.lstrip("_")
    if name.startswith("sage"):
        return "SageAttention"
    if name.startswith(("flash", "aiter")):
        return "FlashAttention"
    return "other"


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def installed(module: str) -> bool:
    """Whether a module can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def on_zero_gpu() -> bool:
    """Hugging Face ZeroGPU Spaces set SPACES_ZERO_GPU."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """What a side ran on: the GPU's name, or the CPU's."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return cpu_name()


@lru_cache(maxsize=1)
def device_info() -> DeviceInfo:
    import torch

    cuda = torch.cuda.is_available()
    name, memory, capability = cpu_name(), None, None
    if cuda:
        properties = torch.cuda.get_device_properties(0)
        name = properties.name
        memory = round(properties.total_memory / 1024**3, 1)
        capability = f"{properties.major}.{properties.minor}"
    return DeviceInfo(
        cuda=cuda,
        device="cuda" if cuda else "cpu",
        name=name,
        memory_gb=memory,
        compute_capability=capability,
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        ram_gb=_ram_gb(),
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=version("diffusers"),
        transformers=version("transformers"),
        cuda_version=torch.version.cuda,
        zero_gpu=on_zero_gpu(),
        compiler=shutil.which("gcc") or shutil.which("cc") or shutil.which("clang"),
    )


def _ram_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1024**3, 1)
    except ImportError:
        return None


def _choices(cls: type, name: str) -> list[Any]:
    from typing import Literal, get_args, get_origin

    annotation = cls.model_fields[name].annotation
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    if annotation is bool or annotation == (bool | None):
        return [True]
    return []


def _generic(path: str, cls: type, name: str, info: DeviceInfo) -> tuple[Option, ...]:
    """Each choice of a setting, unavailable where its facts say it needs CUDA and there is none."""
    facts = C.facts(cls, name)
    return tuple(
        Option(value, available=not (facts.cuda_reason(value) and not info.cuda),
               reason=None if info.cuda else facts.cuda_reason(value), label=facts.labels.get(C.json_key(value)))
        for value in _choices(cls, name)
    )


# ------------------------------------------------------------------------------------------------ attention


def attention_reason(backend: str, info: DeviceInfo) -> str | None:
    """None if this backend can run here, else why not."""
    from optim.techniques.attention import backend_needs, backend_requirement

    cuda = info.cuda
    sm = info.sm
    if backend in ("native", "_native_math"):
        return None
    if backend == "flex":
        return backend_requirement(backend)
    if backend in ("_native_flash",):
        return None if not cuda or sm >= 8.0 else "PyTorch's flash kernel needs an Ampere or newer GPU"
    if backend in ("_native_efficient", "_native_cudnn"):
        return None if cuda else "needs CUDA: PyTorch has no CPU kernel for it ('No viable backend')"
    if backend == "_native_npu":
        return "needs an Ascend NPU and torch_npu"
    if backend == "_native_xla":
        return "needs an XLA device (TPU) and torch_xla"
    if backend.endswith("_hub"):
        if backend.startswith("aiter"):
            return "needs an AMD ROCm GPU, the kernels package and the Hugging Face Hub"
        missing = backend_requirement(backend)
        needs = "needs the Hugging Face Hub (the kernels package downloads the kernel at run time)"
        if os.environ.get("HF_HUB_OFFLINE"):
            return needs + "; the Hub is offline here"
        if missing:
            return f"{needs} and the kernels package, which is not installed"
        if not cuda:
            return "needs CUDA"
        if backend == "sage_blackwell_hub" and not (10.0 <= sm < 11.0 or 12.0 <= sm < 13.0):
            return "SageAttention 3 is built for Blackwell GPUs only (sm100, sm120); use 'sage' elsewhere"
        if backend == "flash_4_hub" and not 8.0 <= sm < 13.0:
            return "FlashAttention-4 needs an Ampere to Blackwell GPU (sm80-sm12x)"
        return None
    missing = backend_requirement(backend)
    needs = backend_needs(backend)
    package = {"flash": "flash-attn", "sage": "sageattention", "xformers": "xformers"}
    if backend.startswith(("_flash_3", "_flash_varlen_3")):
        if cuda and sm < 9.0:
            return "FlashAttention-3 needs a Hopper GPU (sm90); use 'flash'"
        if missing:
            return ("FlashAttention-3 (the flash_attn_3 package) is not installed: build it from source on a Hopper "
                    "GPU (docs/GPU.md)")
    for prefix, dist in package.items():
        if backend.lstrip("_").startswith(prefix) and missing:
            return f"{dist} is not installed ({GPU_EXTRAS_HINT}); it needs CUDA"
    if missing:
        return missing
    if not cuda:
        return "needs CUDA"
    if needs.min_compute_capability is not None:
        major, minor = needs.min_compute_capability
        if sm < major + minor / 10:
            return f"needs a GPU of compute capability {major}.{minor} or newer (diffusers' check); this one is {sm}"
    if backend in ("flash", "flash_varlen") and sm < 8.0:
        return "FlashAttention-2 needs an Ampere or newer GPU (sm80+)"
    return None


def attention_backends(info: DeviceInfo) -> tuple[Option, ...]:
    from optim.techniques.attention import registered_backends

    names = list(dict.fromkeys([*SEED_BACKENDS, *C.ATTENTION_BACKENDS, *registered_backends()]))
    return tuple(Option(name, attention_reason(name, info) is None, attention_reason(name, info), family=family(name))
                 for name in names)


# --------------------------------------------------------------------------------------------------- caches

NOT_OFFERED_CACHES = {
    "sea_cache": "not offered: diffusers' SeaCache targets other architectures and skipped nothing on FLUX",
    "text_kv_cache": "not offered: diffusers' TextKVCache targets models with separate text key/value projections",
}


def cache_methods(info: DeviceInfo) -> tuple[Option, ...]:
    from optim.techniques.cache_dit import cache_dit_available

    def why(method: str) -> str | None:
        return cache_dit_available() if method in C.CACHE_DIT_METHODS else None

    offered = tuple(Option(method, why(method) is None, why(method), label=C.variant_facts(cls)[0],
                           note=C.variant_facts(cls)[1]) for method, cls in C.CACHE_VARIANTS.items())
    return offered + tuple(Option(name, False, reason) for name, reason in NOT_OFFERED_CACHES.items())


# ---------------------------------------------------------------------------------------------- quantization


def quantization_backends(info: DeviceInfo) -> tuple[Option, ...]:
    packages = {"bitsandbytes_4bit": ("bitsandbytes", "bitsandbytes"), "bitsandbytes_8bit": ("bitsandbytes",
                "bitsandbytes"), "torchao": ("torchao", "torchao"), "quanto": ("optimum.quanto", "optimum-quanto")}
    out = []
    for backend, cls in C.QUANTIZATION_VARIANTS.items():
        label, _ = C.variant_facts(cls)
        module, package = packages.get(backend, (None, None))
        if module and not installed(module):
            out.append(Option(backend, False, f"{package} is not installed", label=label))
        elif backend.startswith("bitsandbytes") and not info.cuda:
            # Partly available: text encoders only (optim.compat checks the components).
            out.append(Option(backend, True, note="on this CPU: text encoders only (" + C.BNB_ON_DIFFUSERS + ")",
                              label=label))
        else:
            out.append(Option(backend, True, label=label))
    return tuple(out)


def torchao_types(info: DeviceInfo) -> tuple[Option, ...]:
    out = []
    for option in _generic("quantization.torchao.quant_type", C.TorchAo, "quant_type", info):
        reason = None if installed("torchao") else "torchao is not installed"
        if reason is None and option.value == "float8_dynamic" and not (info.cuda and info.sm >= 8.9):
            reason = C.facts(C.TorchAo, "quant_type").cuda_reason("float8_dynamic")
        out.append(Option(option.value, reason is None, reason))
    return tuple(out)


def quanto_weights(info: DeviceInfo) -> tuple[Option, ...]:
    reason = None if installed("optimum.quanto") else "optimum-quanto is not installed"
    return tuple(Option(w, reason is None, reason) for w in _choices(C.Quanto, "weights"))


# ---------------------------------------------------------------------------------------------------- compile


def compile_modes(info: DeviceInfo) -> tuple[Option, ...]:
    jit = just_in_time_compile_reason(info)
    aot = aot_compile_reason(info)
    facts = C.facts(C.CompileConfig, "mode")
    reasons = {mode: None if mode == "off" else aot if mode == "aot" else jit
               for mode in _choices(C.CompileConfig, "mode")}
    return tuple(Option(mode, reason is None, reason, label=facts.labels.get(mode)) for mode, reason in reasons.items())


def inductor_modes(info: DeviceInfo) -> tuple[Option, ...]:
    jit = just_in_time_compile_reason(info)
    aot = aot_compile_reason(info)
    out = []
    for o in _generic("compile.inductor_mode", C.CompileConfig, "inductor_mode", info):
        if info.zero_gpu and o.value in ("default", "max-autotune-no-cudagraphs") and aot is None:
            # ahead of time only (no CUDA graphs in AOTInductor packages)
            out.append(Option(o.value, o.available, o.reason, note="ZeroGPU: with compile mode 'aot' only"))
        else:
            out.append(Option(o.value, o.available and jit is None, jit or o.reason))
    return tuple(out)


def aot_compile_reason(info: DeviceInfo) -> str | None:
    """Why compile mode `aot` (torch.export + AOTInductor) cannot run here. It works on ZeroGPU: it compiles
    ahead of time into a package (`optim.techniques.aot`), the way ZeroGPU supports."""
    if not info.cuda and not info.compiler:
        return "AOTInductor on CPU compiles C++: it needs a C compiler (gcc), which is not installed"
    return None


def spaces_aoti() -> Any | None:
    """The `spaces` module where its AoT helpers are to be used (`optim.techniques.aot.spaces_toolchain`): on a
    ZeroGPU Space, when `spaces` imports and has `aoti_capture`, `aoti_compile` and `aoti_apply`. Else None (the
    same torch calls are used)."""
    import sys

    if not on_zero_gpu():
        return None
    spaces = sys.modules.get("spaces")
    if spaces is None and installed("spaces"):
        try:
            import spaces
        except Exception:  # noqa: BLE001 - a broken install means the torch calls, not a failed run
            return None
    if spaces is None or not all(hasattr(spaces, name) for name in ("aoti_capture", "aoti_compile", "aoti_apply")):
        return None
    return spaces


def just_in_time_compile_reason(info: DeviceInfo) -> str | None:
    if info.zero_gpu:
        return "ZeroGPU does not support just-in-time torch.compile (use ahead-of-time compilation)"
    if not info.cuda and not info.compiler:
        return "torch.compile on CPU needs a C compiler (gcc), which is not installed"
    return None


def offload_modes(info: DeviceInfo) -> tuple[Option, ...]:
    group_note = None if info.cuda else "on a CPU only offload_to_disk saves memory"
    return tuple(Option(o.value, o.available, o.reason, note=group_note if o.value == "group" else None,
                        label=o.label) for o in _generic("offload.mode", C.OffloadConfig, "mode", info))


def family_support() -> dict[str, tuple[Option, ...]]:
    """Per pipeline family (`optim.families`), every technique: supported (the note says how) or not (why not)."""
    from optim.families import FAMILIES, TECHNIQUE_LABELS, technique_support

    return {
        key: tuple(Option(technique, support.supported, None if support.supported else support.reason,
                          note=support.reason if support.supported else None, label=TECHNIQUE_LABELS[technique])
                   for technique, support in technique_support(key).items())
        for key in FAMILIES
    }


def quality_metrics() -> tuple[Option, ...]:
    """The quality metrics of comparisons, sweeps and tuner floors. Learned ones need weights the lab does not ship
    and never downloads while it runs: LPIPS is computed where its weights are on the machine
    (`optim.perceptual.lpips_status` says where they are, or would have to be)."""
    from optim.perceptual import lpips_status

    lpips_here, where = lpips_status()
    return (
        Option("psnr", True, note="scikit-image: mean and worst over the prompts (frames for video)"),
        Option("ssim", True, note="scikit-image: mean and worst over the prompts (frames for video)"),
        Option("ms_ssim", True, note="multi-scale SSIM (no weights needed): up to 5 scales, as many as the image "
                                     "size allows"),
        Option("lpips", lpips_here, None if lpips_here else where, note=where if lpips_here else None),
        Option("adherence", True, note="the embedded models only: their own judge of colours and shape"),
        Option("clip_score", False, reason="needs a CLIP model's weights, which the lab does not ship; it never "
                                           "downloads at run time, and this version does not compute it"),
    )


@lru_cache(maxsize=1)
def detect() -> Capabilities:
    """Everything (cached: the answer does not change while the process runs)."""
    info = device_info()
    return Capabilities(device=info, families=family_support(), options={
        "attention.backend": attention_backends(info),
        "cache.method": cache_methods(info),
        "quantization.backend": quantization_backends(info),
        "quantization.torchao.quant_type": torchao_types(info),
        "quantization.quanto.weights": quanto_weights(info),
        "offload.mode": offload_modes(info),
        "offload.use_stream": _generic("offload.use_stream", C.OffloadConfig, "use_stream", info),
        "compile.mode": compile_modes(info),
        "compile.inductor_mode": inductor_modes(info),
        "quality.metric": quality_metrics(),
    })


SECTION_TITLES = {
    "attention.backend": "Attention backends",
    "cache.method": "Cache methods",
    "quantization.backend": "Quantization",
    "quantization.torchao.quant_type": "torchao types",
    "quantization.quanto.weights": "quanto weights",
    "offload.mode": "Offload",
    "offload.use_stream": "Group offload on CUDA streams",
    "compile.mode": "torch.compile",
    "compile.inductor_mode": "Inductor modes",
    "quality.metric": "Quality metrics",
}
