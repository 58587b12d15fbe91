"""Logging: quiet the libraries' own chatter (import-time notices about optional kernels, experimental-feature
warnings, progress bars) so the CLI prints our summary and the app shows our messages, and let the lab's own
loggers speak when asked. Real problems still reach the user, as our errors. Call `quiet_libraries()` before
importing torch/diffusers: several notices are logged at import time.

The lab's modules log on the paths one debugs (`logging.getLogger(__name__)` under `optim`): worker start and
respawn (`optim.launch`, `optim.worker`), scheduling, retries and lost workers (`optim.distributed`), baseline reuse
(`optim.engine`), refusals before loading (`optim.compat`). Quiet by default (warnings only); `--verbose` on the
CLI, or OPTIM_LOG_LEVEL=INFO (or DEBUG) for the app and anything else, shows them (`show_lab_logs`).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any

_NOISY_LOGGERS = (
    "diffusers",
    "CACHE_DIT",
    "transformers",
    "torchao",
    "bitsandbytes",
    "torch.utils._pytree",
    "torch._dynamo",
    "torch._inductor",
    "accelerate",
    "huggingface_hub",  # its retry lines ("Retrying in 8s [Retry 5/5]"): we check the Hub ourselves first
)


LOG_LEVEL_ENV = "OPTIM_LOG_LEVEL"


def show_lab_logs(level: str | int | None = None) -> None:
    """The lab's own loggers (`optim.*`) on stderr at `level` (default: OPTIM_LOG_LEVEL, else WARNING), once."""
    chosen = level if level is not None else os.environ.get(LOG_LEVEL_ENV, "WARNING")
    logger = logging.getLogger("optim")
    logger.setLevel(chosen.upper() if isinstance(chosen, str) else chosen)
    if not any(getattr(h, "_lab", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._lab = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def progress_printer(quiet: bool) -> Any:
    """A progress callback (phase, done, total) that prints each new phase on stderr, or nothing when `quiet`."""
    last = {"phase": None}

    def report(phase: str, done: int, total: int) -> None:
        if quiet:
            return
        if phase != last["phase"]:
            last["phase"] = phase
            print(f"  {phase}", file=sys.stderr, flush=True)

    return report


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # cache-dit logs each hook and a table per run
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(diffusers|transformers|torch|torchao|accelerate)")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "diffusers" in sys.modules or "torch" in sys.modules:
        quiet_progress_bars()
    try:
        # tqdm's default lock is a multiprocessing semaphore, which worker processes would leak at exit.
        from tqdm.std import tqdm

        tqdm.set_lock(threading.RLock())
    except ImportError:
        pass


def quiet_progress_bars() -> None:
    """diffusers' loading bars ignore HF_HUB_DISABLE_PROGRESS_BARS; switch them off after import."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
