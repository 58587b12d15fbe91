"""Shared test settings: no network, quiet libraries, and the `gpu` marker skipped without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from optim.logs import quiet_libraries  # noqa: E402

quiet_libraries()

import pytest  # noqa: E402


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Small, fast settings for the embedded model: every test compares the same way, only shorter.
FAST_RUN = {"steps": 6, "warmup_runs": 1, "timed_runs": 1}
