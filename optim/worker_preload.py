"""Imported once by the worker zygote (`optim.zygote`) or by each spare (`optim.spare`), so every side's process
starts with torch and diffusers loaded.

On a CPU-only torch nothing here can initialize CUDA, so the zygote may fork after it. Where torch can use CUDA
these imports DO initialize it (diffusers imports bitsandbytes, which calls `torch.cuda.get_device_capability`
at import), which is why `optim.launch.start_method()` never forks there: spares import this and run one side
each, in the same process. Importing starts no thread pools.
"""

from optim.logs import quiet_libraries

quiet_libraries()

import diffusers  # noqa: E402, F401
import torch  # noqa: E402, F401
from diffusers import DiffusionPipeline, FluxPipeline  # noqa: E402, F401

import optim.measure  # noqa: E402, F401
from optim.logs import quiet_progress_bars  # noqa: E402

quiet_progress_bars()
