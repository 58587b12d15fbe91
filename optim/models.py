"""Find, describe and load models: the embedded ones (`embedded`, a tiny FLUX; `embedded-video`, a tiny
CogVideoX), the tiny random-weight builds of every family (`tiny:flux`, `tiny:qwen-image`, `tiny:sd3`,
`tiny:cogvideox`, `tiny:wan`), a local diffusers folder, a Hub model id, or a synthetic full-size one.

Every real model goes through `DiffusionPipeline.from_pretrained`, the embedded one included, so the code path a
user's Hub model takes is the one the tests exercise. Loading is locked down: safetensors weights only, no remote
code (a `model_index.json` must name a diffusers pipeline class), and Hub ids and folders are checked before
anything is read.

Example:
    >>> ref = resolve_model("embedded")
    >>> ref.kind, model_defaults(ref).width
    ('embedded', 128)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from optim import families
from optim.config import RunSpec
from optim.data import ASSETS_DIR
from optim.errors import ConfigError, ModelError
from optim.model_types import ModelDefaults, ModelInfo, ModelRef, ResolvedRun

__all__ = ["ModelDefaults", "ModelInfo", "ModelRef", "ResolvedRun"]

EMBEDDED_MODEL = "embedded"
EMBEDDED_PATH = ASSETS_DIR / "tiny-flux"
# The embedded video model: a tiny CogVideoX trained here (embedded/video_train.py) to draw a coloured shape moving.
EMBEDDED_VIDEO_MODEL = "embedded-video"
EMBEDDED_VIDEO_PATH = ASSETS_DIR / "tiny-cogvideox"
EMBEDDED_MODELS = {EMBEDDED_MODEL: EMBEDDED_PATH, EMBEDDED_VIDEO_MODEL: EMBEDDED_VIDEO_PATH}
SYNTHETIC_PREFIX = "synthetic:"
# Tiny random-weight builds of every pipeline family (`optim.families`), built once into a cache folder.
TINY_PREFIX = "tiny:"
TINY_NOTE = "random weights: proves the lab's mechanics, not image quality"
# The owner/name form of Hub repository ids (huggingface_hub's own rule: letters, digits, '-', '_', '.').
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# Defaults a model folder may carry for this app (written by the embedded model's training script).
DEFAULTS_FILE = "lab_defaults.json"


def _card(name: str) -> ModelDefaults:
    """A full-size model's recommended run (model card settings, `optim.families.FULL_SIZE_MODELS`)."""
    from optim.synthetic import defaults_from_settings

    return defaults_from_settings(families.FULL_SIZE_MODELS[name].settings)


# Popular diffusers models offered in the app, with the settings their model cards recommend (video: frames, fps
# and resolution too).
POPULAR_MODELS: dict[str, ModelDefaults] = {
    "black-forest-labs/FLUX.1-dev": ModelDefaults(steps=28, guidance_scale=3.5, max_sequence_length=512),
    "black-forest-labs/FLUX.1-schnell": ModelDefaults(steps=4, guidance_scale=0.0, max_sequence_length=256),
    "stabilityai/stable-diffusion-3.5-medium": ModelDefaults(steps=40, guidance_scale=4.5),
    "stabilityai/stable-diffusion-3.5-large": ModelDefaults(steps=28, guidance_scale=3.5),
    "Qwen/Qwen-Image": ModelDefaults(steps=50, guidance_scale=4.0, width=1328, height=1328),
    "THUDM/CogView4-6B": ModelDefaults(steps=50, guidance_scale=3.5),
    "THUDM/CogVideoX-5b": _card("cogvideox-5b"),
    # CogVideoX-2b's card: the 5b's run (50 steps, guidance 6, 49 frames 720x480 at 8 fps).
    "THUDM/CogVideoX-2b": _card("cogvideox-5b"),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": _card("wan2.1-t2v-1.3b"),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": _card("wan2.1-t2v-14b"),
}


# ------------------------------------------------------------------------------------------------ resolution


def resolve_model(name: str, *, allow_local: bool = True, local_roots: tuple[Path, ...] | None = None) -> ModelRef:
    """Turn what the user typed into a `ModelRef`, or raise `ModelError` saying what is accepted.

    `allow_local=False` (a public server) refuses folders; `local_roots` limits folders to those places.
    """
    name = name.strip()
    if not name or len(name) > 300 or "\x00" in name:
        raise ModelError("model: give a name of 1 to 300 characters ('embedded', a Hub id or a folder)")
    if name in EMBEDDED_MODELS:
        path = EMBEDDED_MODELS[name]
        if not (path / "model_index.json").is_file():
            what = "the embedded model is missing"
            if name == EMBEDDED_VIDEO_MODEL:
                what = ("the embedded video model is not in this copy yet (it is trained by embedded/video_train.py); "
                        "use 'tiny:cogvideox' meanwhile")
            raise ModelError(f"model {name!r}: {path} has no model_index.json: {what}")
        return ModelRef(name, "embedded", str(path))
    if name.startswith(TINY_PREFIX):
        key = name[len(TINY_PREFIX) :]
        if key not in families.FAMILIES:
            raise ModelError(f"unknown tiny model {name!r}; available: "
                             + ", ".join(TINY_PREFIX + k for k in families.FAMILIES) + f" ({TINY_NOTE})")
        return ModelRef(name, "tiny", str(families.tiny_model_path(key)))
    if name.startswith(SYNTHETIC_PREFIX):
        from optim.synthetic import SYNTHETIC_MODELS

        key = name[len(SYNTHETIC_PREFIX) :]
        if key not in SYNTHETIC_MODELS:
            raise ModelError(
                f"unknown synthetic model {name!r}; available: "
                + ", ".join(SYNTHETIC_PREFIX + k for k in SYNTHETIC_MODELS)
            )
        return ModelRef(name, "synthetic", key)
    # An existing folder wins over a Hub id of the same spelling; a path-like name is always a folder.
    if _is_dir(name) or name.startswith(("/", ".", "~")):
        return _resolve_folder(name, allow_local=allow_local, local_roots=local_roots)
    if HUB_ID.match(name):
        return ModelRef(name, "hub", name)
    raise ModelError(
        f"unknown model {name!r}: give 'embedded' (or 'embedded-video'), a Hub model id such as "
        "'black-forest-labs/FLUX.1-dev', a local diffusers folder (with model_index.json), a tiny random-weight "
        "build such as 'tiny:wan', or a synthetic model such as 'synthetic:flux-dev'"
    )


def _is_dir(name: str) -> bool:
    try:
        return Path(name).expanduser().is_dir()
    except (OSError, ValueError):  # a name too long for a path, say
        return False


def _resolve_folder(name: str, *, allow_local: bool, local_roots: tuple[Path, ...] | None) -> ModelRef:
    if not allow_local:
        raise ModelError(
            f"model {name!r}: local folders are disabled on this server; use 'embedded' or a Hub model id"
        )
    try:
        path = Path(name).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        raise ModelError(f"model folder {name[:80]!r} is not a usable path") from None
    if local_roots is not None and not any(_is_within(path, root) for root in local_roots):
        allowed = ", ".join(str(root) for root in local_roots) or "none"
        raise ModelError(f"model folder {name!r} is outside the allowed places ({allowed})")
    if not _is_dir(str(path)):
        raise ModelError(f"model folder {name!r} does not exist")
    if not (path / "model_index.json").is_file():
        raise ModelError(f"model folder {name!r} has no model_index.json: is it a diffusers pipeline folder?")
    return ModelRef(name, "local", str(path))


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root.resolve())
        return True
    except ValueError:
        return False


# ----------------------------------------------------------------------------------------------- defaults


def model_defaults(ref: ModelRef) -> ModelDefaults:
    """What `None` run settings become for this model."""
    if ref.kind in ("embedded", "local", "tiny"):
        path = Path(ref.location) / DEFAULTS_FILE
        if path.is_file():
            return _read_defaults(path)
        return ModelDefaults()
    if ref.kind == "synthetic":
        from optim.synthetic import SYNTHETIC_MODELS

        return SYNTHETIC_MODELS[ref.location].defaults
    return POPULAR_MODELS.get(ref.location, ModelDefaults())


def _read_defaults(path: Path) -> ModelDefaults:
    try:
        data = json.loads(path.read_text())
        known = set(ModelDefaults.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return ModelDefaults(**data)
    except (ValueError, TypeError) as error:
        raise ModelError(f"{path}: invalid model defaults ({error})") from None


def resolve_run(run: RunSpec, ref: ModelRef, *, cuda_available: bool) -> ResolvedRun:
    """Fill every `None` from the model's defaults; pick the device and dtype."""
    defaults = model_defaults(ref)
    device = run.device if run.device != "auto" else ("cuda" if cuda_available else "cpu")
    if device == "cuda" and not cuda_available:
        raise ConfigError("run.device: 'cuda' was asked for but this machine has no CUDA GPU; use 'auto' or 'cpu'")
    dtype = run.dtype if run.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    return ResolvedRun(
        model=run.model,
        prompt=run.prompt if run.prompt is not None else defaults.prompt,
        negative_prompt=run.negative_prompt if run.negative_prompt is not None else defaults.negative_prompt,
        seed=run.seed,
        steps=run.steps or defaults.steps,
        width=run.width or defaults.width,
        height=run.height or defaults.height,
        guidance_scale=run.guidance_scale if run.guidance_scale is not None else defaults.guidance_scale,
        max_sequence_length=run.max_sequence_length or defaults.max_sequence_length,
        num_frames=run.num_frames or defaults.num_frames,
        fps=run.fps or defaults.fps,
        dtype=dtype,
        device=device,
        warmup_runs=run.warmup_runs,
        timed_runs=run.timed_runs,
        target_precision=run.target_precision,
        time_budget_s=run.time_budget_s,
        timing=run.timing,
    )


# ------------------------------------------------------------------------------------------------- loading


def check_pipeline_index(index: dict[str, Any], where: str) -> str:
    """The pipeline class named by model_index.json, refusing anything that would load remote code."""
    import diffusers

    class_name = index.get("_class_name")
    if not isinstance(class_name, str) or not hasattr(diffusers, class_name):
        raise ModelError(
            f"{where}: model_index.json names {class_name!r}, which is not a diffusers pipeline; custom pipeline "
            "code is never run here"
        )
    for component, spec in index.items():
        # Plain values are the pipeline's own config (Wan: expand_timesteps, boundary_ratio), not components.
        if component.startswith("_") or spec is None or isinstance(spec, (bool, int, float, str)):
            continue
        if not (isinstance(spec, list) and len(spec) == 2 and spec[0] in (None, "diffusers", "transformers")):
            raise ModelError(
                f"{where}: component {component!r} comes from {spec!r}; only diffusers and transformers classes load"
            )
    return class_name


def hub_offline(ref: ModelRef) -> bool:
    """Whether a Hub model must come from the local cache: the Hub cannot be reached (checked in seconds,
    `optim.hub`). Raises ModelError at once when it is not cached either, instead of waiting out the Hub
    client's retries (half a minute of them)."""
    from optim.hub import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(ref.location, "model_index.json"), str):
        raise ModelError(f"model {ref.location!r} could not be loaded: the Hugging Face Hub cannot be reached from "
                         f"here ({reason}) and the model is not in the local cache. Try 'embedded' or a local "
                         "diffusers folder.")
    return True


def _hub_file(ref: ModelRef, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(ref.location, filename, local_files_only=hub_offline(ref))


def read_model_index(ref: ModelRef) -> dict[str, Any]:
    """model_index.json of a real model (downloads it for a Hub id), checked for remote code."""
    if ref.kind == "synthetic":
        raise ModelError("synthetic models have no model_index.json")
    if ref.kind == "hub":
        try:
            path = _hub_file(ref, "model_index.json")
        except ModelError:
            raise
        except Exception as error:  # noqa: BLE001 - the hub raises many kinds; all mean "cannot fetch"
            raise ModelError(_hub_message(ref.location, error)) from None
    else:
        path = os.path.join(ref.location, "model_index.json")
    try:
        with open(path) as handle:
            index = json.load(handle)
    except (OSError, ValueError) as error:
        raise ModelError(f"model {ref.name!r}: cannot read model_index.json ({error})") from None
    if not isinstance(index, dict):
        raise ModelError(f"model {ref.name!r}: model_index.json is not a JSON object")
    check_pipeline_index(index, f"model {ref.name!r}")
    return index


def read_component_config(ref: ModelRef, component: str) -> dict[str, Any] | None:
    """A component's config.json without loading weights (None when the component has none)."""
    if ref.kind == "hub":
        try:
            path = _hub_file(ref, f"{component}/config.json")
        except Exception:  # noqa: BLE001
            return None
    else:
        path = os.path.join(ref.location, component, "config.json")
        if not os.path.isfile(path):
            return None
    with open(path) as handle:
        return json.load(handle)


def download_model(ref: ModelRef) -> None:
    """Fetch a Hub model's files into the local cache (safetensors only) without loading them; a no-op for
    anything else. Lets a caller pay the download outside a timed or GPU-metered section."""
    if ref.kind != "hub":
        return
    read_model_index(ref)
    from diffusers import DiffusionPipeline

    try:
        DiffusionPipeline.download(ref.location, use_safetensors=True, local_files_only=hub_offline(ref))
    except ModelError:
        raise
    except Exception as error:  # noqa: BLE001 - the hub raises many kinds; all mean "cannot fetch"
        raise ModelError(_hub_message(ref.location, error)) from None


def model_components(ref: ModelRef) -> dict[str, str]:
    """{component: library} of every component that holds weights (what quantization may target)."""
    if ref.kind == "synthetic":
        from optim.synthetic import SYNTHETIC_MODELS

        return SYNTHETIC_MODELS[ref.location].components()
    from optim.techniques.quantization import quantizable_components

    return quantizable_components(read_model_index(ref))


def load_pipeline(ref: ModelRef, *, dtype: str, quantization_config: Any = None, quantization: Any = None,
                  device: str = "cpu", offload: bool = False) -> Any:
    """Load the pipeline with `from_pretrained` (safetensors only, no remote code), quantized at load by
    `quantization_config`. A synthetic model is built straight into memory on `device` where its quantization
    allows (`optim.synthetic.build_pipeline`, then `quantize_in_memory` with the lab's `quantization` settings);
    otherwise it is written to the model cache once and loaded from there like any local folder. With
    `offload`, a synthetic model too large for the GPU's free memory is placed in host memory instead."""
    import torch
    from diffusers import DiffusionPipeline

    location = ref.location
    if ref.kind == "synthetic":
        from optim.synthetic import SYNTHETIC_MODELS, builds_in_memory, synthetic_model_path

        model = SYNTHETIC_MODELS[ref.location]
        # (a load-time config without the lab's settings it came from can only be applied by from_pretrained)
        if builds_in_memory(quantization) and (quantization_config is None or quantization is not None):
            return _build_synthetic(model, dtype=dtype, quantization=quantization, device=device, offload=offload)
        location = str(synthetic_model_path(ref.location))
    else:
        read_model_index(ref)
    kwargs: dict[str, Any] = {"torch_dtype": getattr(torch, dtype), "use_safetensors": True}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if ref.kind != "hub" or hub_offline(ref):
        kwargs["local_files_only"] = True
    try:
        return DiffusionPipeline.from_pretrained(location, **kwargs)
    except (OSError, EnvironmentError, ValueError) as error:
        if ref.kind == "hub":
            raise ModelError(_hub_message(ref.location, error)) from None
        raise ModelError(f"model {ref.name!r} could not be loaded from {location}: {_first_line(error)}") from None


def _build_synthetic(model: Any, *, dtype: str, quantization: Any, device: str, offload: bool) -> Any:
    """A synthetic model in memory: on the GPU when it fits (or when nothing will move it off), else in host
    memory with its random values still drawn on the GPU."""
    import torch

    from optim import config as C
    from optim.synthetic import build_pipeline, weights_bytes
    from optim.techniques.quantization import quantize_in_memory

    place = device
    if device == "cuda" and offload:
        free, _ = torch.cuda.mem_get_info()
        if weights_bytes(model) * 1.1 > free:
            place = "cpu"
    pipe = build_pipeline(model, place=place, fill_device=device, dtype=dtype)
    if quantization is not None and not isinstance(quantization, C.NoQuantization):
        pipe._lab_quantized = quantize_in_memory(pipe, quantization, model.components())
    return pipe


def _hub_message(model_id: str, error: Exception) -> str:
    text = _first_line(error)
    if os.environ.get("HF_HUB_OFFLINE") or "offline" in text.lower() or "connect" in text.lower():
        reason = "the Hugging Face Hub cannot be reached from here (offline)"
    elif "401" in text or "403" in text or "gated" in text.lower():
        reason = "the repository is gated or private: accept its licence on the Hub and set HF_TOKEN"
    elif "404" in text or "not found" in text.lower():
        reason = "no such repository on the Hub"
    else:
        reason = text
    return f"model {model_id!r} could not be loaded: {reason}. Try 'embedded' or a local diffusers folder."


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
