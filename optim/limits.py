"""What one request may ask for: size, steps, runs, upload and link sizes, which models. Configurable through
environment variables, with defaults that keep a shared public server (a Hugging Face Space) alive.

    OPTIM_PUBLIC=1          public mode: no local model folders, tighter limits (on automatically on a Space)
    OPTIM_MAX_PIXELS        width x height (default 1024*1024; public 1024*1024)
    OPTIM_MAX_FRAME_PIXELS  video: frames x width x height (default 81*1280*720, Wan 14B's 720p clip; public
                            49*720*480, a CogVideoX-5b clip)
    OPTIM_MAX_STEPS         denoising steps (default 100; public 50)
    OPTIM_MAX_TIMED_RUNS    timed runs per side, also the most "auto" takes (default 50; public 10)
    OPTIM_MAX_TIME_BUDGET_S seconds of timed runs one comparison may take (default 600; public 60)
    OPTIM_MAX_SWEEP_POINTS  configurations in one sweep or tune (default 100; public 12)
    OPTIM_MAX_SWEEP_PROMPTS prompts x seeds in one sweep or tune (default 64; public 4)
    OPTIM_MAX_SWEEP_SECONDS seconds one sweep or tune may run (default 3600; public 300)
    OPTIM_MAX_WARMUP_RUNS   warm-up runs per side (default 5; public 2)
    OPTIM_MAX_UPLOAD_BYTES  preset upload size (default 65536)
    OPTIM_MAX_LINK_CHARS    share-link token length (default 4096)
    OPTIM_LOCAL_MODEL_ROOTS folders local models may come from, ':'-separated (default: anywhere; public: none)
    OPTIM_MAX_SIDE_MEMORY_MB  memory one side's worker process may map beyond its start (default: no cap); past
                            it the side fails with a clean out-of-memory error instead of the OOM killer

Example:
    >>> check_run(RunSpec(steps=10_000), Limits())   # doctest: +SKIP
    ConfigError: run.steps: 10000 is more than this server allows (at most 100)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from optim.config import RunSpec
from optim.errors import ConfigError
from optim.models import model_defaults, resolve_model


@dataclass(frozen=True)
class Limits:
    public: bool = False
    max_pixels: int = 1024 * 1024
    max_steps: int = 100
    max_timed_runs: int = 50
    max_time_budget_s: int = 600
    max_warmup_runs: int = 5
    max_upload_bytes: int = 64 * 1024
    max_link_chars: int = 4096
    local_model_roots: tuple[Path, ...] | None = None  # None: anywhere (when not public)
    max_side_memory_mb: int | None = None
    max_sweep_points: int = 100
    max_sweep_prompts: int = 64
    max_sweep_seconds: int = 3600
    max_frame_pixels: int = 81 * 1280 * 720  # video: frames x width x height (Wan 14B's 720p clip)

    @property
    def allow_local_models(self) -> bool:
        return not self.public or bool(self.local_model_roots)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if environ is None else environ
        public = env.get("OPTIM_PUBLIC", "").lower() in ("1", "true", "yes") or bool(env.get("SPACE_ID"))
        base = (cls(public=True, max_steps=50, max_timed_runs=10, max_time_budget_s=60, max_warmup_runs=2,
                    max_sweep_points=12, max_sweep_prompts=4, max_sweep_seconds=300,
                    max_frame_pixels=49 * 720 * 480)
                if public else cls())

        def number(name: str, default: int) -> int:
            value = env.get(name)
            if value is None:
                return default
            try:
                parsed = int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} must be a whole number") from None
            if parsed < 1:
                raise ConfigError(f"environment variable {name}={value!r} must be at least 1")
            return parsed

        roots_text = env.get("OPTIM_LOCAL_MODEL_ROOTS")
        roots = tuple(Path(p).resolve() for p in roots_text.split(":") if p) if roots_text else base.local_model_roots
        return cls(
            public=public,
            max_pixels=number("OPTIM_MAX_PIXELS", base.max_pixels),
            max_steps=number("OPTIM_MAX_STEPS", base.max_steps),
            max_timed_runs=number("OPTIM_MAX_TIMED_RUNS", base.max_timed_runs),
            max_time_budget_s=number("OPTIM_MAX_TIME_BUDGET_S", base.max_time_budget_s),
            max_sweep_points=number("OPTIM_MAX_SWEEP_POINTS", base.max_sweep_points),
            max_sweep_prompts=number("OPTIM_MAX_SWEEP_PROMPTS", base.max_sweep_prompts),
            max_sweep_seconds=number("OPTIM_MAX_SWEEP_SECONDS", base.max_sweep_seconds),
            max_warmup_runs=number("OPTIM_MAX_WARMUP_RUNS", base.max_warmup_runs),
            max_upload_bytes=number("OPTIM_MAX_UPLOAD_BYTES", base.max_upload_bytes),
            max_link_chars=number("OPTIM_MAX_LINK_CHARS", base.max_link_chars),
            local_model_roots=roots,
            max_side_memory_mb=number("OPTIM_MAX_SIDE_MEMORY_MB", 0) or None,
            max_frame_pixels=number("OPTIM_MAX_FRAME_PIXELS", base.max_frame_pixels),
        )


def check_run(run: RunSpec, limits: Limits) -> None:
    """Refuse a request beyond this server's limits (before anything runs), naming the setting and the limit."""
    problems = []
    ref = resolve_model(run.model, allow_local=limits.allow_local_models, local_roots=limits.local_model_roots)
    defaults = model_defaults(ref)
    steps = run.steps or defaults.steps
    width, height = run.width or defaults.width, run.height or defaults.height
    if steps > limits.max_steps:
        problems.append(f"run.steps: {steps} is more than this server allows (at most {limits.max_steps})")
    if width * height > limits.max_pixels:
        problems.append(
            f"run.width x run.height: {width}x{height} is more than this server allows "
            f"(at most {limits.max_pixels} pixels, e.g. 1024x1024)"
        )
    frames = run.num_frames or defaults.num_frames
    if frames is not None and frames * width * height > limits.max_frame_pixels:
        problems.append(
            f"run.num_frames x run.width x run.height: {frames}x{width}x{height} is more than this server allows "
            f"(at most {limits.max_frame_pixels} frame pixels, e.g. {limits.max_frame_pixels // (width * height)} "
            f"frames at {width}x{height})"
        )
    if isinstance(run.timed_runs, int) and run.timed_runs > limits.max_timed_runs:
        problems.append(
            f"run.timed_runs: {run.timed_runs} is more than this server allows (at most {limits.max_timed_runs})")
    if run.time_budget_s > limits.max_time_budget_s:
        problems.append(f"run.time_budget_s: {run.time_budget_s:g} is more than this server allows (at most "
                        f"{limits.max_time_budget_s})")
    if run.warmup_runs > limits.max_warmup_runs:
        problems.append(
            f"run.warmup_runs: {run.warmup_runs} is more than this server allows (at most {limits.max_warmup_runs})"
        )
    if problems:
        raise ConfigError("; ".join(problems))
