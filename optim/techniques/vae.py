"""VAE slicing and tiling (`vae.enable_slicing()` / `vae.enable_tiling()`): less peak memory when decoding.

Both only change anything in some cases, and we say so instead of letting an option silently do nothing:
slicing splits a *batch* (one image per prompt is a batch of one), tiling splits images larger than one tile.
"""

from __future__ import annotations

from typing import Any

from optim.config import VaeConfig
from optim.techniques import Applied


def vae_tile_size(vae: Any) -> int | None:
    """Images wider or taller than this many pixels are decoded in tiles (the smaller side of a tile, for VAEs
    with separate tile heights and widths)."""
    tile = vae_tile_shape(vae)
    return min(tile) if tile else None


def vae_tile_shape(vae: Any) -> tuple[int, int] | None:
    """(height, width) of a VAE's decoding tile in pixels: `tile_sample_min_size` (AutoencoderKL), or
    `tile_sample_min_height` / `_width` (the video VAEs and Qwen-Image's); else the config's sample size."""
    height, width = getattr(vae, "tile_sample_min_height", None), getattr(vae, "tile_sample_min_width", None)
    if height and width:
        return int(height), int(width)
    size = getattr(vae, "tile_sample_min_size", None) or getattr(getattr(vae, "config", None), "sample_size", None)
    if isinstance(size, (list, tuple)):
        size = min(size)
    return (int(size), int(size)) if size else None


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
            applied.warn("VAE slicing decodes a batch one image (or video) at a time; with one it changes nothing")
    if vae_config.tiling:
        vae.enable_tiling()
        applied.add("VAE tiling", vae.disable_tiling)
        tile = vae_tile_shape(vae)
        if tile is not None and height <= tile[0] and width <= tile[1]:
            size = f"{tile[0]} px" if tile[0] == tile[1] else f"{tile[1]}x{tile[0]} px (width x height)"
            applied.warn(f"VAE tiling splits images larger than {size}; at {width}x{height} it changes nothing")
