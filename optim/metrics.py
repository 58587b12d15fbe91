"""Image quality of the optimized side against the baseline: pixel differences, PSNR, SSIM, MS-SSIM, LPIPS (where
its weights are on the machine: `optim.perceptual`), a diff heatmap.

PSNR and SSIM come from scikit-image (`skimage.metrics`), on 8-bit RGB images (data_range 255). PSNR is
undefined (infinite) for identical images; we report None then, so JSON stays valid.

Videos (frames, F x H x W x 3) are compared frame by frame: the same figures pooled over every frame (PSNR of
the pooled squared error, SSIM the mean of the frames'), and under `video` each frame's PSNR, SSIM and
differences, their mean and worst, and how the motion differs: for each pair of consecutive frames, how much
each side changes (`motion_*`, mean absolute change in levels) and how much the optimized side's frame-to-frame
change differs from the baseline's (`temporal_diff_*`: mean |(o[t+1] - o[t]) - (b[t+1] - b[t])|, levels), which
catches flicker or frozen motion that per-frame figures miss. The heatmap of a video is one per frame, on one
scale for all.

Example:
    >>> import numpy as np
    >>> a = np.zeros((8, 8, 3), np.uint8)
    >>> image_quality(a, a)["max_abs_diff"]
    0
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optim.perceptual import lpips, ms_ssim

HEATMAP_COLORMAP = "inferno"


def is_video(array: np.ndarray) -> bool:
    """Frames (F, H, W, 3) rather than one image (H, W, 3)."""
    return array.ndim == 4


def image_quality(baseline: np.ndarray, optimized: np.ndarray) -> dict[str, Any]:
    """max/mean absolute difference (0-255 levels), PSNR in dB (None when identical), SSIM (1.0 when identical).
    For videos (frames) the figures are pooled over every frame and `video` holds the per-frame and temporal
    ones (`video_quality`)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if baseline.shape != optimized.shape:
        raise ValueError(f"images differ in shape: {baseline.shape} vs {optimized.shape}")
    if is_video(baseline):
        return video_quality(baseline, optimized)
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
        "ms_ssim": ms_ssim(baseline, optimized),
        "lpips": lpips(baseline, optimized),
        "changed_pixels": float(np.mean(diff.max(axis=2) > 0)),
    }


def video_quality(baseline: np.ndarray, optimized: np.ndarray) -> dict[str, Any]:
    """Two videos (F, H, W, 3 uint8) compared: `image_quality`'s figures pooled over all frames, plus `video`:
    per-frame PSNR (None where a frame is identical), SSIM and differences, their mean and worst (the mean PSNR
    is over the frames that differ), and the temporal figures (see the module docstring).

        >>> a = np.zeros((3, 8, 8, 3), np.uint8)
        >>> video_quality(a, a)["video"]["temporal_diff_mean"]
        0.0
    """
    if baseline.shape != optimized.shape:
        raise ValueError(f"videos differ in shape: {baseline.shape} vs {optimized.shape}")
    if not is_video(baseline):
        raise ValueError(f"not a video (frames, H, W, 3): shape {baseline.shape}")
    # Frame by frame (a full-size clip is hundreds of MB as float64: never convert it whole).
    frames = [image_quality(b, o) for b, o in zip(baseline, optimized)]
    count, pixels = len(frames), baseline[0].size
    squared = [float(np.sum((b.astype(np.int32) - o.astype(np.int32)) ** 2)) / pixels
               for b, o in zip(baseline, optimized)]
    motion_b, motion_o, temporal = [], [], []
    for index in range(count - 1):
        step_b = baseline[index + 1].astype(np.int16) - baseline[index].astype(np.int16)
        step_o = optimized[index + 1].astype(np.int16) - optimized[index].astype(np.int16)
        motion_b.append(float(np.abs(step_b).mean()))
        motion_o.append(float(np.abs(step_o).mean()))
        temporal.append(float(np.abs(step_o - step_b).mean()))
    max_diff = max(f["max_abs_diff"] for f in frames)
    mse = float(np.mean(squared))
    psnr = None if max_diff == 0 else float(10 * np.log10(255.0**2 / mse))
    psnrs = [f["psnr_db"] for f in frames]
    differing = [p for p in psnrs if p is not None]
    ssims = [f["ssim"] for f in frames]
    changed = float(np.mean([f["changed_pixels"] for f in frames]))

    def mean(values: Any) -> float | None:
        return float(np.mean(values)) if len(values) else None

    return {
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(np.mean([f["mean_abs_diff"] for f in frames])),
        "psnr_db": psnr,
        "ssim": float(np.mean(ssims)),
        "ms_ssim": float(np.mean([f["ms_ssim"] for f in frames])),
        "lpips": (None if any(f["lpips"] is None for f in frames) else float(np.mean([f["lpips"] for f in frames]))),
        "changed_pixels": changed,
        "video": {
            "frames": len(frames),
            "psnr_db_per_frame": psnrs,
            "ssim_per_frame": ssims,
            "mean_abs_diff_per_frame": [f["mean_abs_diff"] for f in frames],
            "max_abs_diff_per_frame": [f["max_abs_diff"] for f in frames],
            "psnr_db_mean": float(np.mean(differing)) if differing else None,
            "psnr_db_worst": min(differing) if differing else None,
            "ssim_mean": float(np.mean(ssims)),
            "ssim_worst": float(min(ssims)),
            "worst_frame": int(np.argmax(squared)),
            "motion_baseline_per_transition": motion_b,
            "motion_optimized_per_transition": motion_o,
            "temporal_diff_per_transition": temporal,
            "motion_baseline": mean(motion_b),
            "motion_optimized": mean(motion_o),
            "temporal_diff_mean": mean(temporal),
            "temporal_diff_max": float(np.max(temporal)) if len(temporal) else None,
        },
    }


def diff_heatmap(baseline: np.ndarray, optimized: np.ndarray) -> tuple[np.ndarray, int]:
    """An RGB heatmap of the per-pixel largest channel difference, scaled so the largest difference is the
    brightest colour; returns (image, the difference in levels that the brightest colour stands for). For videos
    one heatmap per frame (F, H, W, 3), all on the video's one scale."""
    from matplotlib import colormaps

    if is_video(baseline):
        return _video_heatmap(baseline, optimized)
    diff = np.abs(baseline.astype(np.int16) - optimized.astype(np.int16)).max(axis=-1)
    scale = max(int(diff.max()), 1)
    colours = colormaps[HEATMAP_COLORMAP](diff / scale)[..., :3]
    return (colours * 255).round().astype(np.uint8), scale


def _video_heatmap(baseline: np.ndarray, optimized: np.ndarray) -> tuple[np.ndarray, int]:
    """`diff_heatmap` of every frame on one scale, a frame at a time through the colormap's 256-entry table
    (what matplotlib's lookup does: entry min(int(x * 256), 255)), so memory stays at the frames' own size."""
    from matplotlib import colormaps

    diffs = np.stack([(np.maximum(b, o) - np.minimum(b, o)).max(axis=-1) for b, o in zip(baseline, optimized)])
    scale = max(int(diffs.max()), 1)
    table = (colormaps[HEATMAP_COLORMAP](np.arange(256))[:, :3] * 255).round().astype(np.uint8)
    out = np.empty((*diffs.shape, 3), dtype=np.uint8)
    for index, diff in enumerate(diffs):
        out[index] = table[np.minimum((diff / scale * 256).astype(np.int64), 255)]
    return out, scale
