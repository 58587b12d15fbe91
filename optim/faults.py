"""Fault injection, for proving the failure paths end to end (off unless OPTIM_FAULT_INJECTION=1).

With injection on, a prompt containing `[fault:KIND@SIDE]` makes that side ("baseline" or "optimized") fail at
the start of its timed runs, the way a real failure would:

    crash  the side's process dies from SIGSEGV (a hard crash in native code)
    oom    torch.OutOfMemoryError, as CUDA raises it when the GPU is full
    nan    the output image is all NaN (an overflow), caught by the NaN check
    raise  a RuntimeError inside the pipeline (a backend failing at run time)
    hang   the side stops making progress until it is cancelled

Tests drive the app, the API and the CLI with these; with injection off the text is just part of the prompt.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Callable

import numpy as np

FAULT = re.compile(r"\[fault:(crash|oom|nan|raise|hang)@(baseline|optimized)\]")


def enabled() -> bool:
    return os.environ.get("OPTIM_FAULT_INJECTION", "").lower() in ("1", "true", "yes")


def requested(prompt: str | None, side: str) -> str | None:
    """The fault asked for on this side, if injection is on."""
    if not enabled() or not prompt:
        return None
    for kind, where in FAULT.findall(prompt):
        if where == side:
            return kind
    return None


def inject(kind: str, *, height: int = 8, width: int = 8, should_stop: Callable[[], bool] | None = None) -> None:
    """Fail now, in the named way."""
    import torch

    from optim.errors import Cancelled
    from optim.generation import to_uint8

    if kind == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
    if kind == "oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected fault)")
    if kind == "nan":
        to_uint8(np.full((1, height, width, 3), np.nan, dtype=np.float32))
    if kind == "raise":
        raise RuntimeError("injected fault: a kernel failed at run time")
    if kind == "hang":
        while True:  # in a worker process the parent kills us; inline, the caller's stop flag ends it
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled by the user")
            time.sleep(0.05)
