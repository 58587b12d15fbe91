"""MS-SSIM and LPIPS (optim/perceptual.py): MS-SSIM on images of every size the lab makes, ordered as the damage
is; LPIPS's plumbing (normalization, channel weights, spatial mean, the sum over layers, the report and sweep
fields, ceilings) driven with a stand-in network.

The stand-in tests check plumbing, not values: LPIPS's values need its real weights (AlexNet's and LPIPS's linear
layers), which the lab never downloads; where they are not on the machine the figure is None and capabilities
says where they would have to be.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from optim import perceptual
from optim.metrics import image_quality, video_quality


def _image(side: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 1, (side, side, 3)), axis=0), axis=1)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).astype(np.uint8)


def _noisy(image: np.ndarray, sigma: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_ms_ssim_is_one_for_identical_images_and_falls_with_the_damage():
    image = _image()
    values = [perceptual.ms_ssim(image, _noisy(image, sigma)) for sigma in (1, 4, 16, 48)]
    assert perceptual.ms_ssim(image, image) == 1.0
    assert all(0 < v < 1 for v in values)
    assert values == sorted(values, reverse=True), values
    # Symmetric, and blind to which image is called the baseline.
    noisy = _noisy(image, 8)
    assert perceptual.ms_ssim(image, noisy) == pytest.approx(perceptual.ms_ssim(noisy, image), abs=1e-12)


def test_ms_ssim_uses_as_many_scales_as_the_image_allows():
    assert [perceptual.ms_ssim_levels(side) for side in (16, 32, 64, 128, 256, 1024)] == [1, 2, 3, 4, 5, 5]
    small = _image(16)  # one scale: SSIM with a Gaussian window
    assert 0 < perceptual.ms_ssim(small, _noisy(small, 10)) < 1


def test_ms_ssim_weighs_coarse_structure_not_only_pixels():
    """A one-pixel shift keeps the coarse scales almost intact: MS-SSIM stays far above single-scale SSIM there."""
    image = _image(256)
    shifted = np.roll(image, 1, axis=1)
    quality = image_quality(image, shifted)
    assert quality["ms_ssim"] > quality["ssim"]


def test_reports_carry_ms_ssim_and_lpips_for_images_and_videos():
    image = _image(64)
    quality = image_quality(image, _noisy(image, 6))
    assert 0 < quality["ms_ssim"] < 1
    available, _ = perceptual.lpips_status()
    assert (quality["lpips"] is not None) == available
    video = np.stack([image, image, image])
    moved = np.stack([image, _noisy(image, 6), image])
    pooled = video_quality(video, moved)
    assert pooled["ms_ssim"] == pytest.approx((2 + perceptual.ms_ssim(image, _noisy(image, 6))) / 3)


class StandIn:
    """An AlexNet-shaped network with random weights: two stages, their LPIPS-style channel weights."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.stages = [torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()),
                       torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 4, 3, padding=1),
                                           torch.nn.ReLU())]
        self.weights = [torch.rand(8), torch.rand(4)]
        self.calls = 0

    def features(self, images):
        self.calls += 1
        out, x = [], images
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def test_lpips_plumbing_with_a_stand_in_network():
    """Checks plumbing, not values (no real weights here): zero for the same image, the sum over layers of the
    channel-weighted squared differences of unit-normalized features, averaged over space, and more damage farther."""
    net = StandIn()
    image = _image(32)
    assert perceptual.lpips_distance(image, image, net) == 0.0
    light, heavy = _noisy(image, 4), _noisy(image, 40)
    d_light = perceptual.lpips_distance(image, light, net)
    d_heavy = perceptual.lpips_distance(image, heavy, net)
    assert 0 < d_light < d_heavy

    # The same figure written out by hand, layer by layer.
    def tensor(a):
        return torch.from_numpy(a.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

    expected = 0.0
    with torch.no_grad():
        pairs = list(zip(net.features(tensor(image)), net.features(tensor(heavy)), net.weights))
    for fa, fb, w in pairs:
        na = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        nb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        expected += float(((na - nb) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean())
    assert d_heavy == pytest.approx(expected, rel=1e-5)
    # Zero channel weights: the layer counts for nothing.
    net.weights = [torch.zeros(8), torch.zeros(4)]
    assert perceptual.lpips_distance(image, heavy, net) == 0.0


def test_lpips_with_a_network_reaches_reports_and_sweep_rows(monkeypatch):
    """Where the weights are present, the figure reaches the report and the sweep row (here: the stand-in)."""
    net = StandIn()
    monkeypatch.setattr(perceptual, "lpips_network", lambda: net)
    image = _image(32)
    quality = image_quality(image, _noisy(image, 10))
    assert quality["lpips"] == pytest.approx(perceptual.lpips_distance(image, _noisy(image, 10), net))
    assert image_quality(image, image)["lpips"] == 0.0


def test_the_real_alexnet_layout_loads_torchvision_and_lpips_checkpoints(tmp_path, monkeypatch):
    """The loader reads torchvision's AlexNet keys and LPIPS's linear-layer keys (files made here with random
    values in those layouts: plumbing, not values) and finds them in $OPTIM_LPIPS_DIR."""
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
              "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3)}
    alexnet = {}
    for name, shape in shapes.items():
        alexnet[f"{name}.weight"] = torch.randn(shape) * 0.05
        alexnet[f"{name}.bias"] = torch.zeros(shape[0])
    alexnet["classifier.1.weight"] = torch.zeros(4, 4)  # present in the checkpoint, unused by LPIPS
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(perceptual.LPIPS_CHANNELS)}
    torch.save(alexnet, tmp_path / perceptual.ALEXNET_FILE)
    available, where = perceptual.lpips_status()
    if not available:
        assert "never downloads" in where and perceptual.ALEXNET_FILE in where
    monkeypatch.setenv("OPTIM_LPIPS_DIR", str(tmp_path))
    torch.save(linear, tmp_path / perceptual.LPIPS_LINEAR_FILE)
    perceptual.lpips_network.cache_clear()
    try:
        available, where = perceptual.lpips_status()
        assert available and str(tmp_path) in where
        image = _image(64)
        distance = perceptual.lpips(image, _noisy(image, 20))
        assert distance is not None and distance > 0
        assert perceptual.lpips(image, image) == 0.0
    finally:
        perceptual.lpips_network.cache_clear()
