"""Weights, exact: the bytes of every parameter and buffer of each component, built on the meta device from its
config (a real model's published one, `optim.families`), under each storage scheme as the libraries really store
it. Checked against the quantizers' own output on the tiny build of every family (tests/test_plan.py).

How a quantized `nn.Linear` weight of n = in x out values is stored (measured on this CPU with the pinned
libraries; d = the run dtype's bytes):

* bitsandbytes 4-bit (nf4, fp4): n/2 packed bytes, a float32 absmax per 64 values, and the 16-value code
  (64 bytes); with double quantization the absmax is one byte per block, plus a float32 absmax per 256 blocks,
  a 256-value code (1 KB) and an offset;
* bitsandbytes 8-bit: n bytes and a float32 scale per row;
* torchao int8 (weight-only or dynamic): n bytes, a float32 scale and an int8 zero point per row; float8: n bytes
  and a float32 scale per row;
* quanto int8 and float8: n bytes and a scale per row in the run dtype; int4 and int2: rows packed two (four) to a
  byte (rows padded), with a scale and a shift per group of 128, 96, 64 or 32 inputs (the first that divides
  them; per row when none does, or with 128 inputs or fewer), in the run dtype; and two scalars per layer;
* layerwise casting (diffusers `enable_layerwise_casting`): every parameter of each cast layer in float8 (one
  byte), the skipped layers at the run dtype.

Which layers: every `nn.Linear` weight, except the modules each loader keeps out (diffusers: the config's skip
list and the model's `_keep_in_fp32_modules`, which it keeps in float32; transformers: its
`get_modules_to_not_convert`); layerwise casting skips diffusers' default patterns, the model's
`_skip_layerwise_casting_patterns` and `_keep_in_fp32_modules`. Everything else stays at the run dtype (float32
where the loader keeps it so), integer buffers at their own size.

Loader rules change between versions; `rules` names whose to follow: "installed" (the versions on this machine,
what the lab would run) or "transformers-4" (transformers 4.x, which published figures of 2025 were measured
with: its bitsandbytes loaders also kept a model's `_keep_in_fp32_modules` in float32 at bfloat16 (the quantizer's
`use_keep_in_fp32_modules`), so T5's `wo` layers stayed float32 and out of quantization; and with it
(transformers < 4.58) diffusers' model offload leaves bitsandbytes 8-bit components on the GPU, `optim.plan`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# diffusers.hooks._common._GO_LC_SUPPORTED_PYTORCH_LAYERS (0.42.1) by name: the layers layerwise casting casts
# (tests/test_plan.py checks this against diffusers' own tuple).
LAYERWISE_LAYERS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear",
                    "Embedding")


def _bnb4(in_f: int, out_f: int, d: int, double: bool) -> int:  # noqa: ARG001 - d: one signature for all
    n = in_f * out_f
    blocks = math.ceil(n / 64)
    stats = blocks + 4 * math.ceil(blocks / 256) + 1024 + 4 if double else 4 * blocks
    return math.ceil(n / 2) + stats + 64


def _quanto_group(in_f: int) -> int | None:
    """optimum.quanto's group size for int4/int2 (nn/qmodule.py): 128, 96, 64 or 32, the first that divides the
    inputs when there are more than 128 of them; otherwise none (one scale and shift per row)."""
    if in_f <= 128:
        return None
    size = 128
    while in_f % size and size > 32:
        size -= 32
    return size if in_f % size == 0 else None


def _quanto_packed(in_f: int, out_f: int, d: int, per_byte: int, library: str) -> int:
    group = _quanto_group(in_f)
    groups = in_f * out_f // group if group else out_f
    return math.ceil(out_f / per_byte) * in_f + 2 * d * groups + _quanto_scales(d, library)


def _quanto_scales(d: int, library: str) -> int:
    """Every quanto layer also registers two scalars (input_scale, output_scale) in its weight's dtype when it is
    made: the run dtype under diffusers' loader, float32 under transformers' (it builds the layers first)."""
    return 2 * (d if library == "diffusers" else 4)


@dataclass(frozen=True)
class Scheme:
    """One way to store a component's weights: how the lab sets it (`settings`, a quantization section) and the
    bytes of one quantized `nn.Linear` weight (`linear`), or layerwise casting's one byte per value."""

    key: str
    label: str
    settings: dict[str, Any]
    linear: Callable[[int, int, int, str], int] | None = None  # (in, out, dtype bytes, library) -> bytes
    layerwise: bool = False
    libraries: tuple[str, ...] = ("diffusers", "transformers")
    speed_rank: int = 0  # lower: less time spent dequantizing (the ranking's tie-break)
    gpu_only: bool = False  # bitsandbytes on a diffusers component quantizes on a CUDA GPU only


SCHEMES: dict[str, Scheme] = {s.key: s for s in (
    Scheme("none", "the run dtype", {"backend": "none"}),
    Scheme("layerwise_fp8", "layerwise casting, float8 e4m3 storage",
           {"backend": "layerwise_casting", "storage_dtype": "float8_e4m3fn"}, layerwise=True,
           libraries=("diffusers",), speed_rank=1),
    Scheme("torchao_int8", "torchao int8 weight-only", {"backend": "torchao", "quant_type": "int8_weight_only"},
           lambda i, o, d, lib: i * o + 5 * o, speed_rank=2),
    Scheme("torchao_fp8", "torchao float8 weight-only", {"backend": "torchao", "quant_type": "float8_weight_only"},
           lambda i, o, d, lib: i * o + 4 * o, speed_rank=2),
    Scheme("quanto_int8", "quanto int8", {"backend": "quanto", "weights": "int8"},
           lambda i, o, d, lib: i * o + d * o + _quanto_scales(d, lib), speed_rank=3),
    Scheme("quanto_fp8", "quanto float8", {"backend": "quanto", "weights": "float8"},
           lambda i, o, d, lib: i * o + d * o + _quanto_scales(d, lib), speed_rank=3),
    Scheme("bnb_int8", "bitsandbytes 8-bit", {"backend": "bitsandbytes_8bit"},
           lambda i, o, d, lib: i * o + 4 * o, speed_rank=4, gpu_only=True),
    Scheme("bnb_nf4", "bitsandbytes NF4", {"backend": "bitsandbytes_4bit", "quant_type": "nf4"},
           lambda i, o, d, lib: _bnb4(i, o, d, False), speed_rank=5, gpu_only=True),
    Scheme("bnb_nf4_dq", "bitsandbytes NF4, double quantization",
           {"backend": "bitsandbytes_4bit", "quant_type": "nf4", "double_quant": True},
           lambda i, o, d, lib: _bnb4(i, o, d, True), speed_rank=5, gpu_only=True),
    Scheme("bnb_fp4", "bitsandbytes FP4", {"backend": "bitsandbytes_4bit", "quant_type": "fp4"},
           lambda i, o, d, lib: _bnb4(i, o, d, False), speed_rank=5, gpu_only=True),
    Scheme("quanto_int4", "quanto int4", {"backend": "quanto", "weights": "int4"},
           lambda i, o, d, lib: _quanto_packed(i, o, d, 2, lib), speed_rank=6),
    Scheme("quanto_int2", "quanto int2", {"backend": "quanto", "weights": "int2"},
           lambda i, o, d, lib: _quanto_packed(i, o, d, 4, lib), speed_rank=7),
)}

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RULES = ("installed", "transformers-4")


# ------------------------------------------------------------------------------------------------ the parts


def model_parts(ref: Any) -> tuple[dict[str, Any], str | None]:
    """({component: optim.synthetic.Part}, family key) of a model: a synthetic or known full-size model's
    published configs, or a folder's own configs (the embedded models, tiny builds, local folders)."""
    from optim import families
    from optim.synthetic import SYNTHETIC_MODELS, from_full_size

    if ref.kind == "synthetic":
        model = SYNTHETIC_MODELS[ref.location]
        return dict(model.parts), model.family
    if ref.kind == "hub":
        for model in families.FULL_SIZE_MODELS.values():
            if model.hub_id == ref.name:
                return dict(from_full_size(model, tokenizers={}).parts), model.family
        from optim.errors import ModelError

        known = ", ".join(model.hub_id for model in families.FULL_SIZE_MODELS.values())
        raise ModelError(f"the planner knows the published configs of {known}; {ref.name} is not one of them "
                         "(give its local folder, or a synthetic model)")
    return _folder_parts(Path(ref.location))


def _folder_parts(folder: Path) -> tuple[dict[str, Any], str | None]:
    import transformers

    from optim import families
    from optim.synthetic import Part

    index = json.loads((folder / "model_index.json").read_text())
    parts = {}
    for component, entry in index.items():
        if component.startswith("_") or not isinstance(entry, list) or len(entry) != 2 or entry[0] is None:
            continue
        library, class_name = entry
        path = folder / component / "config.json"
        if library not in ("diffusers", "transformers") or not path.is_file():
            continue  # tokenizers and schedulers hold no weights
        config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        if library == "transformers":
            config_class = getattr(transformers, class_name).config_class.__name__
            config.pop("architectures", None)
            config.pop("transformers_version", None)
            parts[component] = Part(library, class_name, config, config_class)
        else:
            parts[component] = Part(library, class_name, config)
    family = families.family_of_pipeline(index.get("_class_name", ""))
    return parts, family.key if family is not None else None


# ------------------------------------------------------------------------------------------------ the rules


def _legacy_keeps(library: str, scheme: str, rules: str) -> bool:
    """Whether transformers 4.x's bitsandbytes loaders keep `_keep_in_fp32_modules` in float32 here."""
    return rules == "transformers-4" and library == "transformers" and scheme.startswith("bnb")


def _keep_fp32(module: Any, library: str, dtype: str, scheme: str = "none",
               rules: str = "installed") -> tuple[str, ...]:
    """Module names the loader keeps in float32 at `dtype`."""
    if library == "diffusers":
        return tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    names = list(getattr(module, "_keep_in_fp32_modules_strict", None) or ()) if dtype in ("bfloat16", "float16") \
        else []
    if dtype == "float16" or (dtype == "bfloat16" and _legacy_keeps(library, scheme, rules)):
        names += list(getattr(module, "_keep_in_fp32_modules", None) or ())
    return tuple(names)


def _not_converted(module: Any, library: str, scheme: str) -> tuple[str, ...]:
    """Modules the quantization loaders keep out (see the module docstring). diffusers' bitsandbytes and torchao
    loaders keep the model's `_keep_in_fp32_modules` out; its quanto loader quantizes them too (their biases stay
    in float32: measured on the tiny Wan build)."""
    if library == "diffusers":
        if scheme.startswith("quanto"):
            return ()
        return tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    from transformers.quantizers.base import HfQuantizer

    return tuple(HfQuantizer.get_modules_to_not_convert(module, None, getattr(module, "_keep_in_fp32_modules", None))
                 or ())


def _skips(path: str, keys: tuple[str, ...], library: str = "diffusers", scheme: str = "") -> bool:
    """Whether the loader keeps this module out of quantization. diffusers: a key as a whole part of the module's
    dotted path. transformers: its own `should_convert_module`, which torchao's loader asks with the parameter's
    name (so a suffix key such as T5's "wo" does not match "...wo.weight", and those layers are quantized) and the
    others with the module's."""
    if not keys:
        return False
    if library == "transformers":
        from transformers.quantizers.quantizers_utils import should_convert_module

        name = f"{path}.weight" if scheme.startswith("torchao") else path
        return not should_convert_module(name, list(keys))
    return any(key + "." in path + "." for key in keys if key)


def _in_fp32(path: str, keys: tuple[str, ...]) -> bool:
    parts = path.split(".")
    return any(key in parts for key in keys)


def _layerwise_skipped(module: Any, path: str) -> bool:
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    patterns = tuple(DEFAULT_SKIP_MODULES_PATTERN) + tuple(getattr(module, "_keep_in_fp32_modules", None) or ()) \
        + tuple(getattr(module, "_skip_layerwise_casting_patterns", None) or ())
    prefix = ""
    for part in path.split("."):  # diffusers tests each prefix on the way down
        prefix = f"{prefix}.{part}" if prefix else part
        if any(re.search(pattern, prefix) for pattern in patterns):
            return True
    return False


@dataclass
class ComponentWeights:
    """One component's bytes under one scheme, and what offloading moves of it."""

    component: str
    library: str
    scheme: str
    bytes: int
    quantized_layers: int
    largest_leaf_bytes: int  # sequential and leaf-level offload keep one leaf at a time
    block_bytes: list[int]  # each repeated block (block-level group offload moves these)
    outside_blocks_bytes: int  # everything not in a repeated block (onloaded as one group)
    per_module: dict[str, int] | None = None  # each module's own tensors' bytes (for tracing a difference)


def component_weights(module: Any, component: str, library: str, scheme: Scheme, dtype: str,
                      rules: str = "installed") -> ComponentWeights:
    """The bytes of `module` (built on meta, see `model_parts`) stored under `scheme` at `dtype`, by the loaders'
    `rules` (see the module docstring)."""
    import torch

    d = DTYPE_BYTES[dtype]
    applies = scheme.key != "none" and library in scheme.libraries
    keep32 = _keep_fp32(module, library, dtype, scheme.key if applies else "none", rules)
    skip = _not_converted(module, library, scheme.key) if applies and not scheme.layerwise else ()
    seen: set[int] = set()
    per_module: dict[str, int] = {}
    quantized = 0
    for path, child in module.named_modules():
        own = 0
        cast = (applies and scheme.layerwise and type(child).__name__ in LAYERWISE_LAYERS
                and not _layerwise_skipped(module, path))
        for name, tensor in [*child._parameters.items(), *child._buffers.items()]:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if (applies and scheme.linear is not None and isinstance(child, torch.nn.Linear) and name == "weight"
                    and not _skips(path, skip, library, scheme.key)):
                own += scheme.linear(child.in_features, child.out_features, d, library)
                quantized += 1
            elif cast and name in child._parameters:
                own += tensor.numel()  # float8: one byte a value
                quantized += name == "weight"
            elif name in child._non_persistent_buffers_set:  # not in the checkpoint: keeps the dtype it was made in
                own += tensor.numel() * tensor.element_size()
            elif tensor.is_floating_point():
                full = f"{path}.{name}" if path else name
                kept = (library == "diffusers" and applies and not scheme.layerwise and _skips(path, skip)) \
                    or _in_fp32(full, keep32)
                own += tensor.numel() * (4 if kept else d)
            else:
                own += tensor.numel() * tensor.element_size()
        per_module[path] = own
    total = sum(per_module.values())
    leaves = [sum(size for p, size in per_module.items() if p == path or p.startswith(path + "."))
              for path, child in module.named_modules() if not list(child.children())]
    blocks = _block_bytes(module, per_module)
    return ComponentWeights(component, library, scheme.key, total, quantized, max(leaves, default=0), blocks,
                            total - sum(blocks), per_module)


def _block_bytes(module: Any, per_module: dict[str, int]) -> list[int]:
    """Bytes of each block of the component's top-level ModuleLists (what block-level group offload groups)."""
    import torch

    out = []
    for name, child in module.named_children():
        if isinstance(child, torch.nn.ModuleList):
            for index in range(len(child)):
                prefix = f"{name}.{index}"
                out.append(sum(size for p, size in per_module.items() if p == prefix or p.startswith(prefix + ".")))
    return out


def parameter_count(module: Any) -> int:
    return sum(t.numel() for t in {id(t): t for t in module.parameters()}.values())
