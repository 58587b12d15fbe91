"""The pipeline families the lab knows, one module each: how the family guides, which caches and VAE options apply,
a tiny random build that runs anywhere in a second, and the published full-size dimensions for GPU measurements.

Five families: FLUX (`flux.py`), Qwen-Image (`qwen_image.py`), Stable Diffusion 3 (`sd3.py`), CogVideoX
(`cogvideox.py`) and Wan 2.1 (`wan.py`). Each module defines:

* `FAMILY`: a `Family` (`base.py`): the diffusers pipeline / transformer / VAE classes, image or video, how
  guidance runs in the pipeline's `__call__` (`Guidance`), the VAE options, regional compilation, whether each
  diffusers step cache works and why (`cache_support`: every claim was checked by running the cache on the tiny
  build, `probe_cache`, and tests/test_families.py re-checks them), and the tiny build (`tiny_config`, `build`).
* `FULL_SIZE`: the published configs of the real Hub models (from memory of their config.json files: see each
  entry's `source` and `uncertain`), instantiated on the meta device so parameters can be counted without memory.

`registry.py` collects them (`FAMILIES`, `FULL_SIZE_MODELS`, ...) and answers what the lab asks; `tiny.py` builds
and caches the tiny pipelines (`build_tiny_pipeline(key, seed)`, `tiny_model_path(key)`, loadable offline with
`DiffusionPipeline.from_pretrained`); `tokenizers.py` makes their tokenizers in code; `published.py` holds the
encoder configs several families share; `probes.py` the cache probes the tests use. Adding a family is one new
module and its name in `registry.FAMILY_NAMES`.

Random weights prove the lab's mechanics (load, apply, measure, compare, report), never image quality.

    >>> pipe = build_tiny_pipeline("wan")  # doctest: +SKIP
    >>> frames = pipe(**tiny_call_kwargs("wan"), output_type="np").frames  # doctest: +SKIP
    >>> frames.shape  # doctest: +SKIP
    (1, 9, 32, 32, 3)
"""

from optim.families.base import (
    CACHE_DIT_METHODS,
    GUIDANCE_STYLES,
    TECHNIQUE_LABELS,
    TECHNIQUES,
    CacheMethod,
    CacheSupport,
    Family,
    FullSizeModel,
    Guidance,
    RunSettings,
    VaeOptions,
)
from optim.families.flux import FLUX_TRANSFORMER, FLUX_VAE
from optim.families.probes import (
    CacheProbe,
    count_hooks,
    count_pab_matches,
    pab_shares_branches,
    probe_cache,
    probe_cache_config,
)
from optim.families.published import CLIP_G, CLIP_L, QWEN25_VL_7B, T5_XXL, UMT5_XXL, WAN_VAE
from optim.families.registry import (
    CACHE_SUPPORT,
    FAMILIES,
    FAMILY_MODULES,
    FULL_SIZE_MODELS,
    PAB_MATCHES_PER_BLOCK,
    TINY_CONFIGS,
    build_full_size_on_meta,
    count_checkpoint_values,
    count_parameters,
    family,
    family_of_pipeline,
    frames_made,
    full_size_model,
    guidance_style,
    one_call_per_step,
    technique_support,
)
from optim.families.tiny import (
    build_tiny_pipeline,
    run_tiny,
    save_tiny_pipeline,
    tiny_cache_root,
    tiny_call_kwargs,
    tiny_fingerprint,
    tiny_model_path,
)
from optim.families.tokenizers import VOCABULARY, build_clip_tokenizer, build_qwen2_tokenizer, build_t5_tokenizer

__all__ = [
    "CACHE_DIT_METHODS", "CACHE_SUPPORT", "CLIP_G", "CLIP_L", "FAMILIES", "FAMILY_MODULES", "FLUX_TRANSFORMER",
    "FLUX_VAE", "FULL_SIZE_MODELS", "GUIDANCE_STYLES", "PAB_MATCHES_PER_BLOCK", "QWEN25_VL_7B", "T5_XXL", "TECHNIQUES",
    "TECHNIQUE_LABELS", "TINY_CONFIGS", "UMT5_XXL", "VOCABULARY", "WAN_VAE", "CacheMethod", "CacheProbe",
    "CacheSupport", "Family", "FullSizeModel", "Guidance", "RunSettings", "VaeOptions", "build_clip_tokenizer",
    "build_full_size_on_meta", "build_qwen2_tokenizer", "build_t5_tokenizer", "build_tiny_pipeline",
    "count_checkpoint_values", "count_hooks", "count_pab_matches", "count_parameters", "family", "family_of_pipeline",
    "frames_made", "full_size_model", "guidance_style", "one_call_per_step", "pab_shares_branches", "probe_cache",
    "probe_cache_config", "run_tiny", "save_tiny_pipeline", "technique_support", "tiny_cache_root", "tiny_call_kwargs",
    "tiny_fingerprint", "tiny_model_path",
]
