"""Image quality of the optimized side against the baseline: pixel differences, PSNR, SSIM, a diff heatmap.

PSNR and SSIM come from scikit-image (`skimage.metrics`), on 8-bit RGB images (data_range 255). PSNR is
undefined (infinite) for identical images; we report None then, so JSON stays valid.

Example:
    >>> import numpy as np
    >>> a = np.zeros((8, 8, 3), np.uint8)
    >>> image_quality(a, a)["max_abs_diff"]
    0
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEATMAP_COLORMAP = "inferno"


def image_quality(baseline: np.ndarray, optimized: np.ndarray) -> dict[str, Any]:
    """max/mean absolute difference (0-255 levels), PSNR in dB (None when identical), SSIM (1.0 when identical)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if baseline.shape != optimized.shape:
        raise ValueError(f"images differ in shape: {baseline.shape} vs {optimized.shape}")
    diff = np.abs(baseline.astype(np.int16) - optimized.astype(np.int16))
    max_diff = int(diff.max())
    identical = max_diff == 0
    psnr = None if identical else float(peak_signal_noise_ratio(baseline, optimized, data_range=255))
    # SSIM's default 7x7 window needs images at least 7 px on a side.
    side = min(baseline.shape[:2])
    window = min(7, side if side % 2 else side - 1)
    ssim = 1.0 if identical else float(
        structural_similarity(baseline, optimized, channel_axis=2, data_range=255, win_size=window)
    )
    return {
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean()),
        "psnr_db": psnr,
        "ssim": ssim,
        "changed_pixels": float(np.mean(diff.max(axis=2) > 0)),
    }


def diff_heatmap(baseline: np.ndarray, optimized: np.ndarray) -> tuple[np.ndarray, int]:
    """An RGB heatmap of the per-pixel largest channel difference, scaled so the largest difference is the
    brightest colour; returns (image, the difference in levels that the brightest colour stands for)."""
    from matplotlib import colormaps

    diff = np.abs(baseline.astype(np.int16) - optimized.astype(np.int16)).max(axis=2)
    scale = max(int(diff.max()), 1)
    colours = colormaps[HEATMAP_COLORMAP](diff / scale)[..., :3]
    return (colours * 255).round().astype(np.uint8), scale
