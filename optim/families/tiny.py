"""Tiny random-weight builds of the families: the helpers each family module builds its tiny pipeline with, a run
of one, and the pipeline as a diffusers folder built once into a cache (`tiny_model_path`), so that
`DiffusionPipeline.from_pretrained(tiny_model_path(key), local_files_only=True)` loads it offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from optim.families.tokenizers import VOCABULARY


def seeded(seed: int, make: Callable[[], Any]) -> Any:
    """`make()` under `torch.manual_seed(seed)` without touching the caller's random state; in eval mode."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = make()
    return module.eval()


def clip_encoder(config: dict[str, Any], tokenizer: Any, *, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **config,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(text_config)


def t5_encoder(config: dict[str, Any], tokenizer: Any, *, umt5: bool = False) -> Any:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               decoder_start_token_id=tokenizer.pad_token_id)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**ids, **config))
    return T5EncoderModel(T5Config(**ids, **config))


def build_tiny_pipeline(key: str, seed: int = 0) -> Any:
    """A real diffusers pipeline of family `key`, every part tiny, random weights (bit-identical per seed).

        >>> build_tiny_pipeline("sd3").transformer.config.num_layers  # doctest: +SKIP
        2
    """
    from optim.families.registry import family

    pipe = family(key).build(seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_call_kwargs(key: str, *, steps: int | None = None) -> dict[str, Any]:
    """Keyword arguments for a tiny pipeline's `__call__` from its `RunSettings` (no generator, no output_type)."""
    from optim.families.registry import family

    fam = family(key)
    run = fam.tiny
    kwargs: dict[str, Any] = {
        "prompt": run.prompt,
        "num_inference_steps": steps or run.steps,
        "width": run.width,
        "height": run.height,
        fam.guidance_argument: run.guidance_scale,
        "max_sequence_length": run.max_sequence_length,
    }
    if run.negative_prompt is not None:
        kwargs["negative_prompt"] = run.negative_prompt
    if fam.video:
        kwargs["num_frames"] = run.num_frames
    return kwargs


def run_tiny(pipe: Any, key: str, *, steps: int = 2, size: int = 32) -> Any:
    """A seeded run of a tiny pipeline at `size` x `size`, as a numpy array (images or frames)."""
    import torch

    from optim.families.registry import family

    kwargs = tiny_call_kwargs(key, steps=steps)
    kwargs.update(width=size, height=size)
    output = pipe(**kwargs, output_type="np", generator=torch.Generator("cpu").manual_seed(0))
    return getattr(output, family(key).output)


# Bump when the build code changes in a way the configs do not show (seeds, init order, tokenizer rules).
_TINY_FORMAT = 1
_README = """# Tiny {pipeline} ({key}), random weights

Built in code by `optim/families/` (`build_tiny_pipeline("{key}", seed={seed})`): every part is tiny
and has random weights, and the tokenizers know only a few words. It proves the lab's mechanics (load, apply,
measure, compare, report) on the {pipeline} code path, not image quality: its {kind} are noise.
Recommended run settings are in `lab_defaults.json`.
"""


def tiny_fingerprint(key: str) -> str:
    """A short hash of everything a tiny build depends on: its configs, vocabulary, settings and library versions."""
    import diffusers
    import tokenizers
    import torch
    import transformers

    from optim.families.registry import family

    data = {
        "format": _TINY_FORMAT,
        "configs": family(key).tiny_config,
        "vocabulary": VOCABULARY,
        "settings": asdict(family(key).tiny),
        "versions": [torch.__version__, diffusers.__version__, transformers.__version__, tokenizers.__version__],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_tiny_pipeline(key: str, folder: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny pipeline `key` as a diffusers folder: safetensors weights, `lab_defaults.json` and a README."""
    from optim.families.registry import family

    fam = family(key)
    folder = Path(folder)
    pipe = build_tiny_pipeline(key, seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    defaults = json.dumps(fam.tiny.to_json_dict(), indent=2, sort_keys=True) + "\n"
    (folder / "lab_defaults.json").write_text(defaults)
    kind = "videos" if fam.video else "images"
    (folder / "README.md").write_text(_README.format(pipeline=fam.pipeline_class, key=key, seed=seed, kind=kind))
    return folder


def tiny_cache_root() -> Path:
    return Path(os.environ.get("OPTIM_TINY_CACHE") or Path.home() / ".cache" / "optim-lab" / "tiny")


def tiny_model_path(key: str) -> Path:
    """The tiny pipeline `key` as a folder, built once into the cache (`$OPTIM_TINY_CACHE` or
    ~/.cache/optim-lab/tiny) under `<key>-<fingerprint>`; built in a temporary folder and renamed, so a reader
    never sees half a model and two builders do not clash.

        >>> DiffusionPipeline.from_pretrained(tiny_model_path("wan"), local_files_only=True)  # doctest: +SKIP
    """
    root = tiny_cache_root()
    final = root / f"{key}-{tiny_fingerprint(key)}"
    if (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-building-", dir=root))
    os.chmod(scratch, 0o755)  # mkdtemp makes it private (0700); a model cache is readable like any model folder
    try:
        save_tiny_pipeline(key, scratch)
        os.rename(scratch, final)
    except OSError:
        if not (final / "model_index.json").is_file():  # not another process winning the race: a real failure
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final
