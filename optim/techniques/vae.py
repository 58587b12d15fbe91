"""VAE slicing and tiling (`vae.enable_slicing()` / `vae.enable_tiling()`): less peak memory when decoding.

Both only change anything in some cases, and we say so instead of letting an option silently do nothing:
slicing splits a *batch* (one image per prompt is a batch of one), tiling splits images larger than one tile.
"""

from __future__ import annotations

from typing import Any

from optim.config import VaeConfig
from optim.techniques import Applied


def vae_tile_size(vae: Any) -> int | None:
    """Images wider or taller than this many pixels are decoded in tiles."""
    size = getattr(vae, "tile_sample_min_size", None) or getattr(vae.config, "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = min(size)
    return int(size) if size else None


def apply_vae(pipe: Any, vae_config: VaeConfig, applied: Applied, *, width: int, height: int, batch: int = 1) -> None:
    vae = getattr(pipe, "vae", None)
    if not (vae_config.slicing or vae_config.tiling):
        return
    if vae is None:
        applied.warn("this pipeline has no VAE: VAE slicing/tiling do nothing")
        return
    if vae_config.slicing:
        vae.enable_slicing()
        applied.add("VAE slicing", vae.disable_slicing)
        if batch <= 1:
            applied.warn("VAE slicing decodes a batch one image at a time; with one image it changes nothing")
    if vae_config.tiling:
        vae.enable_tiling()
        applied.add("VAE tiling", vae.disable_tiling)
        tile = vae_tile_size(vae)
        if tile is not None and width <= tile and height <= tile:
            applied.warn(
                f"VAE tiling splits images larger than {tile} px; at {width}x{height} it changes nothing"
            )
