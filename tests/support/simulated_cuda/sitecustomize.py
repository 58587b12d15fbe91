"""Make CUDA look present in every Python process started with this folder on PYTHONPATH (a CPU-only test of the
GPU start path). Nothing real runs on a GPU: the calls that would initialize CUDA are recorded in the file named
by OPTIM_SIMULATED_CUDA_LOG, as "<pid> init <call>", and a fork in a process that made such a call is recorded as
"<pid> FORK after CUDA initialization" (the child would fail: "Cannot re-initialize CUDA in forked subprocess").
`is_available` and `device_count` count as initialization: on a real CUDA build they call `cudaGetDeviceCount`,
which initializes the driver and marks every later fork's child as "in bad fork" (seen on torch 2.11+cu130).
"""

import os
import types

import torch

_LOG = os.environ["OPTIM_SIMULATED_CUDA_LOG"]
_initialized = False


def _record(text: str) -> None:
    with open(_LOG, "a") as handle:
        handle.write(f"{os.getpid()} {text}\n")


def _init(call: str) -> None:
    global _initialized
    _initialized = True
    _record(f"init {call}")


def _lazy_init() -> None:
    _init("torch.cuda._lazy_init")


def _get_device_capability(device=None):
    _init("torch.cuda.get_device_capability")
    return (9, 0)


def _get_device_properties(device=None):
    _init("torch.cuda.get_device_properties")
    return types.SimpleNamespace(name="Simulated H100", total_memory=80 * 1024**3, major=9, minor=0)


def _get_device_name(device=None):
    _init("torch.cuda.get_device_name")
    return "Simulated H100"


def _before_fork() -> None:
    if _initialized:
        _record("FORK after CUDA initialization")


def _is_available() -> bool:
    _init("torch.cuda.is_available")
    return True


def _device_count() -> int:
    _init("torch.cuda.device_count")
    return 1


torch.version.cuda = "12.8"
torch.cuda.is_available = _is_available
torch.cuda.device_count = _device_count
torch.cuda._lazy_init = _lazy_init
torch.cuda.init = _lazy_init
torch.cuda.get_device_capability = _get_device_capability
torch.cuda.get_device_properties = _get_device_properties
torch.cuda.get_device_name = _get_device_name
if not hasattr(torch._C, "_cuda_getCurrentRawStream"):  # bitsandbytes reads it at import when CUDA is present
    torch._C._cuda_getCurrentRawStream = lambda index: 0
os.register_at_fork(before=_before_fork)
