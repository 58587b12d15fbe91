"""The plain data that describes a model and a run: what the user named (`ModelRef`), what the model is
(`ModelInfo`, read from its configs without loading weights), its recommended settings (`ModelDefaults`) and the
exact settings both sides run with (`ResolvedRun`). No behaviour and no imports beyond the standard library, so
every module can use them without import cycles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelRef:
    """A model the user named, resolved: `kind` is embedded, local, hub or synthetic."""

    name: str
    kind: str
    location: str


@dataclass(frozen=True)
class ModelDefaults:
    """The run settings a model is meant to be used with (what `None` in a `RunSpec` becomes)."""

    prompt: str = "a photo of a cat"
    negative_prompt: str | None = None
    steps: int = 28
    width: int = 1024
    height: int = 1024
    guidance_scale: float = 3.5
    max_sequence_length: int | None = None
    num_frames: int | None = None  # video models only (None: an image model, or the pipeline's own default)
    fps: int | None = None  # video models only: frames per second of the written video


@dataclass(frozen=True)
class ResolvedRun:
    """A `RunSpec` with every default filled in: the exact settings both sides run with."""

    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    width: int
    height: int
    guidance_scale: float
    max_sequence_length: int | None
    dtype: str
    device: str
    warmup_runs: int
    timed_runs: int | str  # a count, or "auto"
    target_precision: float = 0.05
    time_budget_s: float = 60.0
    timing: str = "auto"
    num_frames: int | None = None  # video: frames per clip (None: the pipeline's default, or an image model)
    fps: int | None = None  # video: frames per second of the written MP4 (None: the family's default)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("num_frames", "fps"):  # video settings: image runs (and their reports) stay as they were
            if data[key] is None:
                del data[key]
        return data


@dataclass(frozen=True)
class ModelInfo:
    """What the checks before loading need to know about a model (`optim.compat.describe_model`)."""

    pipeline: str  # the diffusers pipeline class
    transformer: str  # the transformer class
    guidance: str  # "distilled", "true_cfg" (two calls a step) or "cfg" (both branches batched in one call)
    components: dict[str, str] = field(default_factory=dict)  # {component with weights: "diffusers"/"transformers"}
    guidance_embeds: bool = False
    attention_head_dim: int | None = None
    synthetic: str | None = None  # the synthetic model's name (full size, random weights, GPU only)
    family: str | None = None  # the `optim.families` key (flux, qwen-image, sd3, cogvideox, wan); None: unknown
    video: bool = False  # the pipeline makes videos (frames), not images
