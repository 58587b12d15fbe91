"""Offloading: where weights wait while they are not computing (public pipeline methods only).

* model_cpu: `pipe.enable_model_cpu_offload()`, a whole component moves to the GPU while it runs.
* sequential_cpu: `pipe.enable_sequential_cpu_offload()`, leaf by leaf (least memory, slowest).
* group: `pipe.enable_group_offload(...)`, blocks or leaves in groups, optionally on CUDA streams, or to disk.

On a machine without an accelerator, model and sequential offload cannot run (diffusers needs an accelerator to
onload to). Group offload can: onload and offload are both the CPU, which moves nothing, unless the groups go to
disk, which really takes weights out of host memory between uses.
"""

from __future__ import annotations

import shutil
from typing import Any

from optim import scratch
from optim.config import OffloadConfig
from optim.techniques import Applied


def apply_offload(
    pipe: Any, offload: OffloadConfig, applied: Applied, *, device: str, quantization: str = "none"
) -> None:
    import torch

    if offload.mode == "none":
        return
    if offload.mode == "model_cpu":
        pipe.enable_model_cpu_offload(device=device)
        applied.add("offload: model CPU offload", pipe.remove_all_hooks)
        return
    if offload.mode == "sequential_cpu":
        pipe.enable_sequential_cpu_offload(device=device)
        applied.add("offload: sequential CPU offload", pipe.remove_all_hooks)
        return

    disk_dir = scratch.make_folder("offload") if offload.offload_to_disk else None
    kwargs: dict[str, Any] = {
        "onload_device": torch.device(device),
        "offload_device": torch.device("cpu"),
        "offload_type": offload.offload_type,
        "use_stream": offload.use_stream,
        "record_stream": offload.record_stream,
        "low_cpu_mem_usage": offload.low_cpu_mem_usage,
        "offload_to_disk_path": disk_dir,
    }
    if offload.offload_type == "block_level":
        kwargs["num_blocks_per_group"] = offload.num_blocks_per_group
    if disk_dir:  # registered first, so the folder goes even if enabling fails
        applied.on_undo(lambda: shutil.rmtree(disk_dir, ignore_errors=True))
    pipe.enable_group_offload(**kwargs)
    where = "disk" if disk_dir else "CPU"
    text = f"offload: group offload ({offload.offload_type}"
    if offload.offload_type == "block_level":
        text += f", {offload.num_blocks_per_group} block(s) per group"
    if offload.use_stream:
        text += ", CUDA stream" + (" + record_stream" if offload.record_stream else "")
    if offload.low_cpu_mem_usage:
        text += ", low CPU memory"
    text += f", to {where})"
    applied.add(text)
    if quantization == "bitsandbytes_4bit" and not offload.use_stream and device == "cuda":
        applied.warn(
            "group offload of bitsandbytes 4-bit weights without use_stream is not verified here: offloading moves "
            "their quantization state to the CPU while onloading moves only the weights (diffusers documents it with "
            "use_stream=true)"
        )
    if device == "cpu" and not disk_dir:
        applied.warn(
            "group offload on a CPU-only machine moves weights from CPU to CPU: it runs, but saves no memory "
            "(offload_to_disk does; on a GPU it moves weights off the GPU)"
        )
