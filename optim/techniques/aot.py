"""Ahead-of-time compilation of the transformer (compile mode `aot`): torch.export + AOTInductor, packages cached
on disk.

What is compiled: the transformer's repeated block (diffusers' `_repeated_blocks`, the classes regional compile
compiles), or the whole transformer where the class declares none (SD3, CogVideoX). Every module of such a class
gets an `AotForward` as its `forward`. On its first call with a given input signature (shapes, strides, dtypes,
devices, and the values of non-tensor arguments, which export bakes in) it:

1. captures the call's args and kwargs (`Toolchain.capture`);
2. exports the module with `torch.export.export` on them (non-strict: its own eager forward, its own weights);
3. derives the cache key (`package_key`): the model's fingerprint (the transformer's class and config and the
   block's tensors: names, shapes, dtypes, types; the package holds no weight values, so which checkpoint it is
   does not matter), the input signature, dtype, device (GPU name and compute capability, or the CPU's instruction-set
   flags), torch's and diffusers' versions, the inductor settings, and a digest of the exported graph itself, so
   anything that changes the traced computation (attention backend, quantized weights, a hook) gives another key
   and never loads a wrong package;
4. loads the `.pt2` package under that key if it is on disk, else builds it with
   `torch._inductor.aoti_compile_and_package` and stores it (written beside and renamed: readers never see half);
5. binds it to this module's own weights: `aoti_load_package`, then `load_constants(module.state_dict(),
   check_full_update=True, user_managed=True)` (the compiled code reads the module's own parameter memory, no
   copy). Every other module of the class loads the same package and binds its own weights on its first call.

Why the weights are kept out of the package and bound per block: one export of block 0 embeds block 0's weights
as constants; running that compiled model for every block (what `spaces.aoti_apply` does with one compiled
model) would compute every block with block 0's weights. So the package is built with
`aot_inductor.package_constants_in_so=False` and constant folding off (a folded constant would be derived from
block 0's weights and not replaced by `load_constants`; `check_full_update=True` proves every constant was
given). One loaded model per block (not one shared model whose constants are swapped before each call, as
`spaces.aoti_patch` does) costs a millisecond or two per block at load (after torch's loader probes the CPU once
per process) and nothing per call, and has no state shared between blocks. torchao's quantized weights are bound
as their inner tensors (`plain_state`). Images match the eager ones to float rounding (tests/test_aot.py).

Where: `$OPTIM_AOT_CACHE`, else `aot/` in the lab's cache folder (`$OPTIM_MODEL_CACHE`, else
~/.cache/optim-lab). Each package sits in `<target>-<key>/package.pt2` with `key.json` (what the key was made of).
On ZeroGPU it is the Space's disk: built once per Space and shape, loaded by later calls.

What each package did (built, with its build time, or loaded, with its load time) goes to the side's details
(`details["aot"]`, the report's `optimized.aot`) and to its applied steps.

ZeroGPU: `toolchain()` picks `spaces`' helpers where the `spaces` package has them on a ZeroGPU Space (the only
place they are used is `spaces_toolchain`); elsewhere the same torch calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from optim.techniques import Applied

AOT_FORMAT = 1  # bump when what a package holds or how it is keyed changes

# The weights stay out of the package (bound per block at load); no constant folding (it would bake block 0's
# weights into derived constants). The same settings `spaces` uses for ZeroGPU (spaces/zero/torch/aoti.py).
INDUCTOR_CONFIGS: dict[str, Any] = {
    "aot_inductor.package_constants_in_so": False,
    "always_keep_tensor_constants": True,
    "joint_graph_constant_folding": False,
}


def cache_root() -> Path:
    """Where packages are kept: $OPTIM_AOT_CACHE, else `aot` in the lab's cache ($OPTIM_MODEL_CACHE, else
    ~/.cache/optim-lab, as `optim.synthetic.model_cache_dir`)."""
    if os.environ.get("OPTIM_AOT_CACHE"):
        return Path(os.environ["OPTIM_AOT_CACHE"])
    return Path(os.environ.get("OPTIM_MODEL_CACHE") or Path.home() / ".cache" / "optim-lab") / "aot"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------- toolchain


@dataclass(frozen=True)
class Toolchain:
    """How a call is captured and a package built: `spaces`' helpers on ZeroGPU, else the same torch calls.
    Binding a package to a block is always `bind` (torch's own loader: what `spaces` runs inside too)."""

    name: str
    capture: Callable[[Any, tuple, dict], tuple[tuple, dict]]
    build: Callable[[Any, Path], None]  # (exported program, package path)


def _torch_capture(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return args, kwargs


def _torch_build(program: Any, path: Path, configs: dict[str, Any] | None = None) -> None:
    import torch._inductor

    torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                             inductor_configs={**INDUCTOR_CONFIGS, **(configs or {})})


def spaces_toolchain(spaces: Any, configs: dict[str, Any] | None = None) -> Toolchain:
    """The one place `spaces`' AoT helpers are used (spaces 0.51, `spaces/zero/torch/aoti.py`), inside the GPU
    function (the comparison runs there: `lab.zerogpu`):

    * `spaces.aoti_capture(module)`: records the args and kwargs of the module's next call (it patches
      `forward` to raise and catches it); the lab calls the module with the args of the call it is in.
    * `spaces.aoti_compile(program, inductor_configs)`: AOTInductor with the weights kept out of the package,
      and the executable-stack flag cleared on the compiled library (ZeroGPU refuses to load one that has it).
      Its archive (in memory) is written to the lab's disk cache.
    * `spaces.aoti_apply` is not used: it sets one compiled model (holding the weights it was exported with) as
      the module's forward and drains the module's parameters. Applied to every block it would run block 0's
      weights everywhere; and drained parameters make the lab's undo, and an export at another shape, impossible.
      The lab binds each block's own weights instead (`bind`)."""

    def capture(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        with _eager(module), spaces.aoti_capture(module) as call:
            module(*args, **kwargs)
        return tuple(call.args), dict(call.kwargs)

    def build(program: Any, path: Path) -> None:
        compiled = spaces.aoti_compile(program, {**INDUCTOR_CONFIGS, **(configs or {})})
        path.write_bytes(compiled.archive_file.getbuffer())

    return Toolchain("spaces", capture, build)


def toolchain(configs: dict[str, Any] | None = None) -> Toolchain:
    from optim.capabilities import spaces_aoti

    spaces = spaces_aoti()
    if spaces is not None:
        return spaces_toolchain(spaces, configs)
    return Toolchain("torch", _torch_capture, lambda program, path: _torch_build(program, path, configs))


def plain_state(module: Any) -> dict[str, Any]:
    """`module`'s tensors as the exported program names them. Quantized weights (torchao's and quanto's tensor
    subclasses) are exported as their plain inner tensors (`<name>.parametrizations.weight.original0` ...): they are
    unwrapped the same way, on a shallow copy of the module so the module itself is unchanged (as `spaces`'
    `aoti_patch` does, pytorch#159918). The tensors are the module's own (no copy)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not any(is_traceable_wrapper_subclass(t) for t in (*module.parameters(), *module.buffers())):
        return module.state_dict()
    from torch._functorch._aot_autograd.subclass_parametrization import unwrap_tensor_subclass_parameters

    clone = _shallow_clone(module)
    unwrap_tensor_subclass_parameters(clone)
    return clone.state_dict()


def _shallow_clone(module: Any) -> Any:
    clone = object.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = module._parameters.copy()
    clone._buffers = module._buffers.copy()
    clone._modules = {name: _shallow_clone(child) for name, child in module._modules.items() if child is not None}
    return clone


def bind(path: Path, module: Any) -> Any:
    """The package at `path`, loaded and bound to `module`'s own weights (no copy: `user_managed`)."""
    import torch._inductor

    compiled = torch._inductor.aoti_load_package(str(path))
    state = plain_state(module)
    missing = [name for name in compiled.get_constant_fqns() if name not in state]
    if missing:
        raise RuntimeError(f"the AoT package wants constants the module does not have: {', '.join(missing[:5])}")
    compiled.load_constants({name: state[name] for name in compiled.get_constant_fqns()}, check_full_update=True,
                            user_managed=True)
    return compiled


# ------------------------------------------------------------------------------------------------------ keys


def input_signature(args: tuple, kwargs: dict) -> str:
    """What an exported program is specialised on: the call's structure, each tensor's shape, stride, dtype and
    device, and the value of every other argument (export bakes them in; the compiled model ignores them)."""
    import torch
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten((args, kwargs))
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            # (a stride along a dimension of size 1 is never used to address memory: left out)
            strides = tuple(st if size != 1 else 0 for size, st in zip(leaf.shape, leaf.stride()))
            parts.append(f"T{tuple(leaf.shape)}{strides}{leaf.dtype}{leaf.device}{leaf.requires_grad}")
        else:
            parts.append(f"{type(leaf).__name__}:{leaf!r}")
    return f"{spec}|{'|'.join(parts)}"


def contiguous(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Every tensor argument in the standard contiguous layout. The compiled code assumes the strides it was
    exported with (and does not check them), so they are part of the signature; a block fed a strided view would
    otherwise need a package of its own. A copy only where a tensor is not contiguous already."""
    import torch
    from torch.utils import _pytree as pytree

    return pytree.tree_map_only(torch.Tensor, lambda t: t.contiguous(), (args, kwargs))


def shapes_text(args: tuple, kwargs: dict) -> str:
    """The input shapes, short, for the report ("hidden_states 1x64x128, ...")."""
    import torch
    from torch.utils import _pytree as pytree

    shown = []
    for name, value in [*((str(i), a) for i, a in enumerate(args)), *kwargs.items()]:
        tensors = [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]
        if tensors:
            shown.append(f"{name} " + ",".join("x".join(map(str, t.shape)) for t in tensors))
    return "; ".join(shown)


def model_fingerprint(transformer: Any, module: Any) -> str:
    """What the compiled code depends on in the model: the transformer's class and config, the compiled module's
    class and its tensors' names, shapes, dtypes and types (quantized weights are tensor subclasses). Weight values
    are not in the package (bound at load), so two checkpoints of one architecture share packages."""
    config = dict(getattr(transformer, "config", {}) or {})
    tensors = [(name, tuple(t.shape), str(t.dtype), type(t).__name__) for name, t in module.state_dict().items()]
    return _digest({"transformer": type(transformer).__qualname__, "config": config,
                    "module": type(module).__qualname__, "tensors": tensors})


def machine_key(device: str) -> dict[str, Any]:
    """The device the kernels are compiled for: the GPU's name and compute capability, or the CPU's
    instruction-set flags."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(index),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
                "cuda": torch.version.cuda}
    return {"device": device, "machine": platform.machine(), "cpu_flags": _cpu_flags()}


def _cpu_flags() -> str:
    """A digest of the CPU's instruction-set flags (the vector ISA inductor compiles for follows from them).
    Read from /proc/cpuinfo: inductor's own `pick_vec_isa` compiles test programs with gcc (seconds, with a fresh
    inductor cache), which would be most of a package's load time."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return _digest(sorted(flags.split(":", 1)[-1].split())) if flags else platform.processor()


def package_key(*, fingerprint: str, signature: str, dtype: str, device: str, graph: str,
                configs: dict[str, Any]) -> dict[str, Any]:
    """Everything a package was built for (its digest is the folder name; the whole is `key.json`)."""
    from importlib.metadata import version

    import torch

    return {"format": AOT_FORMAT, "model_fingerprint": fingerprint, "inputs": signature, "dtype": dtype,
            **machine_key(device), "torch": torch.__version__, "diffusers": version("diffusers"),
            "inductor_configs": {**INDUCTOR_CONFIGS, **configs}, "graph": graph}


def graph_digest(program: Any) -> str:
    """The exported graph's code and signature: the computation the package runs."""
    return _digest([program.graph_module.code, str(program.graph_signature), str(program.call_spec)])


# ------------------------------------------------------------------------------------------------- applying


@contextlib.contextmanager
def fresh_inductor_cache(fresh: bool = True):
    """Inductor pointed at an empty cache folder while inside (deleted after), so a build's time is a cold
    build's: nothing reused from earlier compiles. A scratch folder named after this process (the parent deletes
    it if this process dies inside)."""
    if not fresh:
        yield
        return
    from optim import scratch

    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    path = scratch.make_folder("inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _eager(module: Any):
    """`module` with its own forward again while inside (for export and capture), its `AotForward` after."""
    installed = module.__dict__.pop("forward", None)
    eager = getattr(installed, "eager", None)
    if eager is not None:
        module.forward = eager
    try:
        yield
    finally:
        if installed is not None:
            module.forward = installed
        elif eager is not None:
            del module.forward


@dataclass
class Target:
    """One compiled class (a repeated block, or the transformer): its modules share packages, one per input
    signature; each module binds its own weights."""

    name: str
    transformer: Any
    dtype: str
    device: str
    tools: Toolchain
    configs: dict[str, Any]
    applied: Applied
    report: dict[str, Any]
    cold: bool = True
    packages: dict[str, Path] = field(default_factory=dict)  # input signature -> package on disk

    def package_for(self, module: Any, signature: str, args: tuple, kwargs: dict) -> tuple[Path, float]:
        """The package for this signature (exported, then loaded from disk or built). Returns it and the time
        spent exporting."""
        import torch

        if signature in self.packages:
            return self.packages[signature], 0.0
        started = time.perf_counter()
        args, kwargs = self.tools.capture(module, args, kwargs)
        with _eager(module):
            program = torch.export.export(module, args, kwargs, strict=False)
        export_s = time.perf_counter() - started
        key = package_key(fingerprint=model_fingerprint(self.transformer, module), signature=signature,
                          dtype=self.dtype, device=self.device, graph=graph_digest(program), configs=self.configs)
        folder = cache_root() / f"{self.name}-{_digest(key)}"
        path = folder / "package.pt2"
        entry = {"target": self.name, "key": folder.name, "inputs": shapes_text(args, kwargs),
                 "export_s": round(export_s, 4), "toolchain": self.tools.name}
        if path.is_file():
            entry["status"] = "loaded"
        else:
            started = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f"partial-{os.getpid()}.pt2"
            try:
                with fresh_inductor_cache(self.cold):
                    self.tools.build(program, partial)
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            (folder / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
            entry.update(status="built", build_s=round(time.perf_counter() - started, 4))
        entry["load_s"] = 0.0
        entry["modules"] = 0
        self.report["packages"].append(entry)
        self.packages[signature] = path
        return path, export_s

    def record_load(self, path: Path, seconds: float, export_s: float) -> None:
        entry = next(e for e in reversed(self.report["packages"]) if e["key"] == path.parent.name)
        entry["load_s"] = round(entry["load_s"] + seconds, 4)
        entry["modules"] += 1
        if entry["modules"] == 1:
            what = (f"built in {entry['build_s']:.1f} s" if entry["status"] == "built" else "loaded from the disk "
                    "cache")
            self.applied.add(f"AoT: {self.name} package {what} ({entry['inputs']}; export {export_s:.2f} s; "
                             f"{self.tools.name})")
        _summarise(self.report)
        if self.report["status"] != "built":  # the time reported as compile_s is (partly) a load, not a compile
            self.applied.details["compile_cold"] = False


def _summarise(report: dict[str, Any]) -> None:
    packages = report["packages"]
    statuses = {e["status"] for e in packages}
    report["status"] = statuses.pop() if len(statuses) == 1 else "built and loaded"
    report["build_s"] = round(sum(e.get("build_s", 0.0) for e in packages), 4)
    report["load_s"] = round(sum(e["load_s"] for e in packages), 4)
    report["export_s"] = round(sum(e["export_s"] for e in packages), 4)


class AotForward:
    """A module's forward under compile mode `aot`: the compiled package bound to this module's weights, one per
    input signature (made on the first call with it, see `Target`)."""

    def __init__(self, target: Target, module: Any, eager: Any) -> None:
        self.target = target
        self.module = module
        self.eager = eager  # the forward it replaced (restored by the undo)
        self.compiled: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = contiguous(args, kwargs)
        signature = input_signature(args, kwargs)
        compiled = self.compiled.get(signature)
        if compiled is None:
            path, export_s = self.target.package_for(self.module, signature, args, kwargs)
            started = time.perf_counter()
            compiled = self.compiled[signature] = bind(path, self.module)
            self.target.record_load(path, time.perf_counter() - started, export_s)
        return compiled(*args, **kwargs)


def inductor_configs(inductor_mode: str) -> dict[str, Any]:
    """The inductor settings of a compile inductor_mode that AOTInductor takes (no CUDA graphs: refused in
    `optim.config.CompileConfig`)."""
    return {"max_autotune": True} if inductor_mode == "max-autotune-no-cudagraphs" else {}


def targets_of(transformer: Any) -> tuple[list[str], dict[str, list[Any]]]:
    """The class names compiled and their modules: the repeated blocks, else the transformer itself."""
    names = list(getattr(transformer, "_repeated_blocks", None) or [])
    if not names:
        return [type(transformer).__name__], {type(transformer).__name__: [transformer]}
    found: dict[str, list[Any]] = {name: [] for name in names}
    for module in transformer.modules():
        if type(module).__name__ in found:
            found[type(module).__name__].append(module)
    return names, {name: modules for name, modules in found.items() if modules}


def apply_aot(pipe: Any, inductor_mode: str, applied: Applied, *, cold: bool = True) -> None:
    """Install `AotForward` on every module of each compiled class (built or loaded on the first call). `cold`:
    each build runs with an empty inductor cache of its own (`fresh_inductor_cache`)."""
    transformer = pipe.transformer
    parameter = next(transformer.parameters())
    dtype, device = str(parameter.dtype).removeprefix("torch."), str(parameter.device)
    configs = inductor_configs(inductor_mode)
    tools = toolchain(configs)
    report: dict[str, Any] = {"status": None, "build_s": 0.0, "load_s": 0.0, "export_s": 0.0,
                              "cache_dir": str(cache_root()), "toolchain": tools.name, "packages": []}
    applied.details["aot"] = report
    names, modules = targets_of(transformer)
    installed: list[tuple[Any, Any]] = []
    for name, found in modules.items():
        target = Target(name, transformer, dtype, device, tools, configs, applied, report, cold)
        for module in found:
            previous = module.__dict__.get("forward")
            module.forward = AotForward(target, module, module.forward)
            installed.append((module, previous))

    def restore() -> None:
        for module, previous in installed:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous

    where = ", ".join(f"{name} x{len(found)}" for name, found in modules.items())
    applied.add(f"torch.compile: aot (torch.export + AOTInductor, {tools.name}; {where}; packages in "
                f"{cache_root()})", restore)
