"""Quality metrics beyond PSNR and SSIM: MS-SSIM (no weights needed) and LPIPS (where its weights are on the
machine; the lab never downloads at run time).

MS-SSIM (Wang, Simoncelli and Bovik, 2003): SSIM's contrast-structure term at each of up to five scales (the
image halved each time) and its luminance term at the coarsest, combined with the paper's weights (0.0448,
0.2856, 0.3001, 0.2363, 0.1333), per colour channel, then averaged. Gaussian window of 11 px (sigma 1.5), K1 0.01,
K2 0.03, data range 255. A small image gets as many scales as keep the coarsest one at least 11 px on a side
(128 px: four), the weights of those scales renormalized to sum to one; the figure says how many (`levels`).

LPIPS (Zhang et al., 2018, "alex" v0.1): the distance between AlexNet's unit-normalized activations at its five
ReLUs, each channel weighted by LPIPS's learned linear layer, averaged over space and summed over layers. Lower
is closer (0: the same). It needs two weight files the lab looks for and never fetches:

* AlexNet's, as torchvision publishes it (`alexnet-owt-7be5be79.pth`), in `$OPTIM_LPIPS_DIR` or torch's hub
  checkpoint folder (`~/.cache/torch/hub/checkpoints/`);
* LPIPS's linear layers (`alex.pth`, in the `lpips` package's `weights/v0.1/` or `$OPTIM_LPIPS_DIR`).

`lpips_status()` says where they were found or where they would have to be (shown in capabilities).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW = 11
SIGMA = 1.5
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_LINEAR_FILE = "alex.pth"
LPIPS_CHANNELS = (64, 192, 384, 256, 256)
# LPIPS's ScalingLayer: inputs in [-1, 1] shifted and scaled to ImageNet's statistics.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


# ---------------------------------------------------------------------------------------------------- MS-SSIM


def ms_ssim_levels(side: int) -> int:
    """How many scales an image `side` px on its shorter side gets (the coarsest at least WINDOW px)."""
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side // 2**levels >= WINDOW:
        levels += 1
    return levels


def _ssim_terms(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure) of two float64 single-channel images."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    blur = lambda a: gaussian_filter(a, SIGMA, truncate=(WINDOW // 2) / SIGMA, mode="reflect")  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float(np.mean(luminance * cs)), float(np.mean(cs))


def _halve(a: np.ndarray) -> np.ndarray:
    """2x2 average pooling (an odd last row or column dropped)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4.0


def ms_ssim(baseline: np.ndarray, optimized: np.ndarray) -> float:
    """MS-SSIM of two 8-bit RGB images (H, W, 3), 1.0 when identical.

        >>> a = np.full((64, 64, 3), 128, np.uint8)
        >>> ms_ssim(a, a)
        1.0
    """
    if baseline.shape != optimized.shape:
        raise ValueError(f"images differ in shape: {baseline.shape} vs {optimized.shape}")
    if np.array_equal(baseline, optimized):
        return 1.0
    levels = ms_ssim_levels(min(baseline.shape[:2]))
    weights = np.array(MS_SSIM_WEIGHTS[:levels]) / sum(MS_SSIM_WEIGHTS[:levels])
    channels = []
    for channel in range(baseline.shape[2]):
        x = baseline[..., channel].astype(np.float64)
        y = optimized[..., channel].astype(np.float64)
        value = 1.0
        for level in range(levels):
            ssim, cs = _ssim_terms(x, y)
            last = level == levels - 1
            value *= max(ssim if last else cs, 0.0) ** weights[level]
            if not last:
                x, y = _halve(x), _halve(y)
        channels.append(value)
    return float(np.mean(channels))


# ------------------------------------------------------------------------------------------------------ LPIPS


class LpipsNetwork(Protocol):
    """What `lpips_distance` needs: feature maps of an image batch (N, 3, H, W in [-1, 1]) and, for each, the
    per-channel weights of LPIPS's linear layer."""

    weights: list[Any]

    def features(self, images: Any) -> list[Any]: ...


def lpips_distance(baseline: np.ndarray, optimized: np.ndarray, network: LpipsNetwork) -> float:
    """LPIPS between two 8-bit RGB images (H, W, 3) with `network` (lower is closer; 0 when identical)."""
    import torch

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)

    if baseline.shape != optimized.shape:
        raise ValueError(f"images differ in shape: {baseline.shape} vs {optimized.shape}")
    with torch.no_grad():
        total = torch.zeros(())
        for a, b, weight in zip(network.features(tensor(baseline)), network.features(tensor(optimized)),
                                network.weights, strict=True):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + ((a - b) ** 2 * weight.view(1, -1, 1, 1)).sum(dim=1).mean()
    return float(total)


class AlexLpips:
    """LPIPS "alex" v0.1: AlexNet's convolutions (torchvision's layout, loaded from its checkpoint) cut at the five
    ReLUs, and LPIPS's linear weights."""

    def __init__(self, alexnet_state: dict[str, Any], linear_state: dict[str, Any]) -> None:
        import torch
        from torch import nn

        self.layers = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )
        features = {k.removeprefix("features."): v for k, v in alexnet_state.items() if k.startswith("features.")}
        self.layers.load_state_dict(features)
        self.layers.eval()
        self.cuts = (2, 5, 8, 10, 12)  # after each ReLU
        self.weights = [linear_state[f"lin{i}.model.1.weight"].flatten().float() for i in range(5)]
        self.shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
        self.scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def features(self, images: Any) -> list[Any]:
        x = (images - self.shift) / self.scale
        out, start = [], 0
        for cut in self.cuts:
            x = self.layers[start:cut](x)
            out.append(x)
            start = cut
        return out


def _candidates() -> tuple[list[Path], list[Path]]:
    """Where the two weight files are looked for, in order."""
    own = [Path(os.environ["OPTIM_LPIPS_DIR"])] if os.environ.get("OPTIM_LPIPS_DIR") else []
    own.append(Path.home() / ".cache" / "diffusion-optimization-lab" / "lpips")
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    alexnet = [folder / ALEXNET_FILE for folder in (*own, hub)]
    linear = [folder / LPIPS_LINEAR_FILE for folder in own]
    import importlib.util

    spec = importlib.util.find_spec("lpips")
    if spec is not None and spec.origin:
        linear.append(Path(spec.origin).parent / "weights" / "v0.1" / LPIPS_LINEAR_FILE)
    return alexnet, linear


def lpips_status() -> tuple[bool, str]:
    """(available, where the weights are, or where they would have to be)."""
    alexnet, linear = _candidates()
    found_alexnet = next((p for p in alexnet if p.is_file()), None)
    found_linear = next((p for p in linear if p.is_file()), None)
    if found_alexnet and found_linear:
        return True, f"weights: {found_alexnet} and {found_linear}"
    missing = []
    if not found_alexnet:
        missing.append(f"AlexNet's {ALEXNET_FILE} in {alexnet[0].parent} or {alexnet[-1].parent}")
    if not found_linear:
        missing.append(f"LPIPS's {LPIPS_LINEAR_FILE} in {linear[0].parent} (or pip install lpips)")
    return False, "needs " + " and ".join(missing) + "; the lab never downloads weights at run time"


@lru_cache(maxsize=1)
def lpips_network() -> AlexLpips | None:
    """The LPIPS network from the weights on this machine, or None where they are missing."""

    available, _ = lpips_status()
    if not available:
        return None
    alexnet, linear = _candidates()
    alexnet_path = next(p for p in alexnet if p.is_file())
    linear_path = next(p for p in linear if p.is_file())
    return AlexLpips(_tensors(alexnet_path), _tensors(linear_path))


def _tensors(path: Path) -> dict:
    """A state dict from a weights file the operator placed on this machine (weights_only: tensors, never code)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def lpips(baseline: np.ndarray, optimized: np.ndarray) -> float | None:
    """LPIPS with the weights on this machine (None where they are missing: `lpips_status` says why)."""
    if np.array_equal(baseline, optimized):
        return 0.0 if lpips_network() is not None else None
    network = lpips_network()
    return None if network is None else lpips_distance(baseline, optimized, network)
