"""Quiet the libraries' own chatter (import-time notices about optional kernels, experimental-feature warnings,
progress bars) so the CLI prints our summary and the app shows our messages. Real problems still reach the
user, as our errors. Call `quiet_libraries()` before importing torch/diffusers: several notices are logged at
import time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings

_NOISY_LOGGERS = (
    "diffusers",
    "transformers",
    "torchao",
    "bitsandbytes",
    "torch.utils._pytree",
    "torch._dynamo",
    "torch._inductor",
    "accelerate",
    "huggingface_hub",  # its retry lines ("Retrying in 8s [Retry 5/5]"): we check the Hub ourselves first
)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
