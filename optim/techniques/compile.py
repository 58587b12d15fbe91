"""torch.compile of the transformer: regional (`compile_repeated_blocks`, one compile reused by every block),
full (`transformer.compile()`) or ahead of time (`aot`: torch.export + AOTInductor, packages cached on disk,
`optim.techniques.aot`), plus channels_last and the dynamo settings the seed recommends.

Compile is applied last and after the eager probe run (see `optim.measure`). Cold compile time is honest only
with an empty inductor cache, so each side that compiles gets a fresh `TORCHINDUCTOR_CACHE_DIR`.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from optim import scratch
from optim.config import CompileConfig
from optim.techniques import Applied
from optim.techniques.aot import apply_aot


def fresh_inductor_cache(applied: Applied) -> str:
    """Point inductor at an empty cache directory (restored and deleted on undo).

    A scratch folder named after this process: the parent deletes it if this process dies before its undo."""
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    path = scratch.make_folder("inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path

    def restore() -> None:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
        shutil.rmtree(path, ignore_errors=True)

    applied.on_undo(restore)
    return path


def apply_dynamo_settings(
    compile_config: CompileConfig, applied: Applied, *, bitsandbytes: bool, many_recompiles: bool
) -> None:
    """The seed's advice: bitsandbytes outputs have dynamic shapes; hooks (offloading, caches) trigger many
    recompiles, so allow many before dynamo gives up and runs eagerly."""
    import torch._dynamo

    if compile_config.mode == "off" or not compile_config.recommended_dynamo_settings:
        return
    settings = {}
    if bitsandbytes:
        settings["capture_dynamic_output_shape_ops"] = True
    if many_recompiles:
        settings["cache_size_limit"] = 1000
    for name, value in settings.items():
        previous = getattr(torch._dynamo.config, name)
        setattr(torch._dynamo.config, name, value)
        applied.add(
            f"dynamo: {name}={value}",
            lambda name=name, previous=previous: setattr(torch._dynamo.config, name, previous),
        )


def apply_channels_last(pipe: Any, compile_config: CompileConfig, applied: Applied) -> None:
    import torch

    if not compile_config.channels_last:
        return
    changed = []
    for name in ("transformer", "unet", "vae"):
        module = getattr(pipe, name, None)
        if module is not None and any(p.dim() == 4 for p in module.parameters()):
            module.to(memory_format=torch.channels_last)
            changed.append(name)
    applied.add(f"channels_last on {', '.join(changed) or 'nothing'}")
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and "transformer" not in changed:
        applied.warn(
            f"channels_last only changes 4-D (convolution) weights; {type(transformer).__name__} has none, "
            f"so it applies to {', '.join(changed) or 'no component'} only"
        )


def cold_compile() -> bool:
    """Measure cold compiles (an empty inductor cache per side): the honest default. OPTIM_COLD_COMPILE=0 reuses
    the on-disk cache, for faster repeated compiles (tests, demos); the report then says the figure is warm."""
    return os.environ.get("OPTIM_COLD_COMPILE", "1").lower() not in ("0", "false", "no")


def needs_graph_breaks(optim: Any) -> str | None:
    """Why this configuration cannot be compiled as one graph (None if it can): caches, group offload and
    accelerate's model/sequential offload hook the transformer with code torch.compile must not trace
    (`torch.compiler.disable`: accelerate's `CpuOffload.pre_forward` is wrapped in it) or that branches on data."""
    if optim.cache.method != "none":
        return f"the {optim.cache.method} cache decides per step in Python hooks"
    if optim.offload.mode == "group":
        return "group offload moves weights in hooks around each group"
    if optim.offload.mode in ("model_cpu", "sequential_cpu"):
        return f"{optim.offload.mode} offload moves weights in accelerate hooks that torch.compile may not trace"
    if optim.attention.backend.lstrip("_").startswith("sage"):
        # sageattn calls torch.cuda.device_count() and raw pybind helpers, which dynamo cannot put in a graph
        # (SageAttention's README claims torch.compile support only without CUDA graphs; SageAttention#337).
        return "SageAttention's kernels call CUDA helpers that torch.compile cannot trace"
    return None


def resolve_fullgraph(optim: Any) -> bool:
    if optim.compile.fullgraph is not None:
        return optim.compile.fullgraph
    return needs_graph_breaks(optim) is None


def uses_cuda_graphs(inductor_mode: str) -> bool:
    """Whether this torch.compile mode records CUDA graphs (torch's own table: `reduce-overhead` and
    `max-autotune` turn on `triton.cudagraphs`; `max-autotune-no-cudagraphs` does not)."""
    from torch._inductor import list_mode_options

    return bool(list_mode_options(None if inductor_mode == "default" else inductor_mode).get("triton.cudagraphs"))


def clone_outputs(function: Any) -> Any:
    """`function` with every tensor it returns copied.

    A CUDA graph replays into the same output memory each time, so a pipeline that keeps one transformer output
    while it calls the transformer again in the same step (true classifier-free guidance: FLUX without guidance
    embeddings, Qwen-Image; Wan's separate conditional and unconditional calls) would read an overwritten tensor
    ("accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"). One copy of the
    latents per call is negligible next to a transformer call."""
    import torch

    def copy(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, tuple):
            return (
                type(value)(copy(v) for v in value) if not hasattr(value, "_fields") else type(value)(*map(copy, value))
            )
        if isinstance(value, list):
            return [copy(v) for v in value]
        if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # diffusers' BaseOutput dataclasses
            for key in list(value.keys()):
                value[key] = copy(value[key])
            return value
        return value

    def cloned(*args: Any, **kwargs: Any) -> Any:
        return copy(function(*args, **kwargs))

    return cloned


def apply_compile(
    pipe: Any, compile_config: CompileConfig, applied: Applied, *, fullgraph: bool = True, repeated_calls: bool = False
) -> None:
    """Compile the transformer. `repeated_calls`: the pipeline calls the transformer more than once per step
    while keeping the first output (see `clone_outputs`)."""
    import torch

    if compile_config.mode == "off":
        return
    cold = cold_compile()
    applied.details["compile_cold"] = cold
    if compile_config.mode == "aot":
        # Packages are kept in their own disk cache; a build gets a fresh inductor cache of its own when cold (an
        # honest cold build), a load the usual one (loading a package probes the CPU's vector ISA by compiling test
        # programs, which that cache keeps: seconds otherwise). The report says which were built, which loaded.
        apply_aot(pipe, compile_config.inductor_mode, applied, cold=cold)
        return
    if cold:
        fresh_inductor_cache(applied)
    kwargs: dict[str, Any] = {"fullgraph": fullgraph, "dynamic": compile_config.dynamic}
    if compile_config.inductor_mode != "default":
        kwargs["mode"] = compile_config.inductor_mode
    transformer = pipe.transformer
    options = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    if compile_config.mode == "regional":
        # Only the blocks are graphs; the transformer's output comes from its eager final layers, so it is never
        # a CUDA graph's reused output memory.
        transformer.compile_repeated_blocks(**kwargs)
        applied.add(f"torch.compile: regional ({options})", torch._dynamo.reset)
        return
    if repeated_calls and uses_cuda_graphs(compile_config.inductor_mode):
        eager_forward = transformer.forward
        transformer.forward = clone_outputs(torch.compile(eager_forward, **kwargs))

        def restore() -> None:
            transformer.forward = eager_forward
            torch._dynamo.reset()

        applied.add(f"torch.compile: full ({options}; outputs copied: CUDA graphs with two transformer calls a step)",
                    restore)
        return
    transformer.compile(**kwargs)
    applied.add(f"torch.compile: full ({options})", torch._dynamo.reset)
