"""The server's state, in one object made by `ServerContext.create()` (at launch, or by a test) and passed to every
screen area: request limits, what this machine can run, the shipped presets, the baselines measured so far, the
comparisons running now, the folder of report files. Nothing is created at import.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from optim.capabilities import Capabilities, DeviceInfo, detect, on_zero_gpu
from optim.config import OptimConfig
from optim.engine import BaselineCache
from optim.limits import Limits
from optim.model_types import ModelDefaults, ModelRef
from optim.models import model_defaults, resolve_model
from optim.presets import Preset, make_preset, shipped_presets

# Saved presets live in the browser (localStorage). They are not secret, and a fixed key keeps them readable after
# the server restarts (Gradio's default is a random key per launch).
DEFAULT_BROWSER_STATE_SECRET = "diffusion-optimization-lab-presets"


class ActiveRuns:
    """The "stop" flag of the comparison each browser session is running, so Cancel can reach it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, threading.Event] = {}

    def start(self, session: str) -> threading.Event:
        flag = threading.Event()
        with self._lock:
            self._flags[session] = flag
        return flag

    def finish(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]

    def stop(self, session: str) -> bool:
        """Set the session's flag; False if it runs nothing."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True


@dataclass
class ServerContext:
    limits: Limits
    capabilities: Capabilities
    shipped: dict[str, Preset]
    reports_dir: Path
    spaces: Any = None  # the `spaces` module on a ZeroGPU Space, else None
    browser_state_secret: str = DEFAULT_BROWSER_STATE_SECRET
    baselines: BaselineCache = field(default_factory=BaselineCache)
    active: ActiveRuns = field(default_factory=ActiveRuns)

    @classmethod
    def create(cls, environ: Mapping[str, str] | None = None, *, spaces: Any = None,
               reports_dir: Path | None = None) -> ServerContext:
        env = os.environ if environ is None else environ
        return cls(
            limits=Limits.from_env(env),
            capabilities=detect(),
            shipped=shipped_presets(),
            reports_dir=reports_dir or Path(tempfile.mkdtemp(prefix="optim-lab-")),
            spaces=spaces if on_zero_gpu() else None,
            browser_state_secret=env.get("OPTIM_BROWSER_STATE_SECRET", DEFAULT_BROWSER_STATE_SECRET),
        )

    def close(self) -> None:
        """End the warm baseline processes and delete this server's files (report folders, preset downloads)."""
        self.baselines.clear()
        shutil.rmtree(self.reports_dir, ignore_errors=True)

    @property
    def device(self) -> DeviceInfo:
        return self.capabilities.device

    @property
    def cuda(self) -> bool:
        return self.device.cuda

    @property
    def zero_gpu(self) -> bool:
        """On a ZeroGPU Space: the comparison runs inside `@spaces.GPU`."""
        return self.spaces is not None

    @property
    def isolation(self) -> str:
        # ZeroGPU runs the GPU function in its own (reused) process; elsewhere each side gets a fresh process.
        return "inline" if self.zero_gpu else "process"

    @cached_property
    def gpu_runner(self) -> Any:
        """On ZeroGPU: the `spaces.GPU` function that runs comparisons (`lab.zerogpu.ZeroGpu`), made once, before
        the server starts, as ZeroGPU wants its GPU functions declared up front."""
        from lab.zerogpu import ZeroGpu

        return ZeroGpu(self)

    @cached_property
    def default_preset(self) -> Preset:
        return self.shipped.get("baseline") or make_preset("baseline", OptimConfig())

    @property
    def side_max(self) -> int:
        """The largest width or height a control offers (the server's pixel limit allows a 2:1 image of it)."""
        return min(8192, max(512, int(math.sqrt(self.limits.max_pixels) * 2) // 16 * 16))

    @property
    def run_limits(self) -> dict[str, int]:
        """Run-setting maxima of the controls: the RunSpec bounds, narrowed to what this server allows."""
        return {
            "steps": self.limits.max_steps,
            "width": self.side_max,
            "height": self.side_max,
            "warmup_runs": self.limits.max_warmup_runs,
            "timed_runs": self.limits.max_timed_runs,
            "time_budget_s": self.limits.max_time_budget_s,
        }

    def resolve(self, model: str) -> ModelRef:
        """A model name as this server accepts it (public servers refuse local folders)."""
        return resolve_model(model, allow_local=self.limits.allow_local_models,
                             local_roots=self.limits.local_model_roots)

    def defaults_for(self, model: str) -> ModelDefaults:
        return model_defaults(self.resolve(model))

    def matching_shipped(self, preset: Preset) -> str | None:
        """The shipped preset's name if `preset` is exactly it."""
        return preset.name if self.shipped.get(preset.name) == preset else None
