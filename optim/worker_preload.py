"""Imported once by the worker zygote (`optim.zygote`) so every side's process starts with torch and diffusers
loaded.

Importing must not initialize CUDA or start thread pools (a fork would inherit them half-made); plain imports
do neither.
"""

from optim.logs import quiet_libraries

quiet_libraries()

import diffusers  # noqa: E402, F401
import torch  # noqa: E402, F401
from diffusers import DiffusionPipeline, FluxPipeline  # noqa: E402, F401

import optim.measure  # noqa: E402, F401
from optim.logs import quiet_progress_bars  # noqa: E402

quiet_progress_bars()
