"""Shared test settings: no network, quiet libraries, and the `gpu` marker skipped without CUDA."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from optim.logs import quiet_libraries  # noqa: E402
from optim.machine import steady_threads  # noqa: E402

steady_threads()  # before torch: tests that run pipelines in this process time them like the workers do
quiet_libraries()

import pytest  # noqa: E402

GPU_MARKERS = ("gpu", "gpu_families")


def _gpu_session(config) -> bool:
    """`python -m pytest -m gpu` (or `-m gpu_families`, the opt-in full-size builds) runs that GPU suite on the
    GPU; any other selection is the CPU suite."""
    return (config.getoption("markexpr") or "").strip() in GPU_MARKERS


def pytest_configure(config):
    # The CPU suite runs on the CPU even on a GPU machine (as in CI): its expectations are a CPU's (which options
    # are refused, the memory cap of a side's process, `device: auto` meaning cpu). Hidden before torch is
    # imported, so torch never sees the GPU in this session.
    if not _gpu_session(config):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif getattr(config.option, "dist", "no") != "no":
        # The GPU suite runs one test at a time (pytest.ini asks for 2 workers for the CPU suite): two full-size
        # models on one GPU would measure each other. Before pytest-xdist's own configure (it runs last).
        config.option.dist, config.option.numprocesses = "no", None


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _gpu_session(config):
        if _cuda():
            return
        reason = "needs a CUDA GPU"
    else:
        reason = "GPU tests run on their own, on the GPU: python -m pytest -m gpu"
    for item in items:
        if any(marker in item.keywords for marker in GPU_MARKERS):
            item.add_marker(pytest.mark.skip(reason=reason))


# Small, fast settings for the embedded model: every test compares the same way, only shorter.
FAST_RUN = {"steps": 6, "warmup_runs": 1, "timed_runs": 1}


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_server(log_dir: Path, **env_overrides: str):
    """`python app.py` on a free port (GRADIO_SERVER_PORT), as a user or a Space starts it; yields (url, process)."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", **env_overrides}
    log_path = log_dir / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"python app.py exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"python app.py did not serve {url}:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ModuleBaselines:
    """One deterministic baseline per run settings, measured once in this process for a test module (the
    embedded model's baseline is bit-identical run after run: tests/test_engine.py). Tests that look at what an
    option does (work skipped, the image, the weights, the applied steps) compare the optimized side against it,
    without paying for a baseline each time. Their timing ratios mean nothing and are not checked."""

    def __init__(self) -> None:
        self._sides: dict[str, object] = {}

    def report(self, optim, run_spec) -> dict:
        from optim.config import OptimConfig
        from optim.engine import Comparison, prepare
        from optim.measure import SideJob, run_side
        from optim.presets import make_preset

        ref, run = prepare(run_spec, optim)
        key = repr(run)
        if key not in self._sides:
            self._sides[key] = run_side(SideJob("baseline", ref, run, OptimConfig()))
        optimized = run_side(SideJob("optimized", ref, run, optim))
        preset = make_preset("test", optim)
        return Comparison.from_sides(run, preset, self._sides[key], optimized,
                                     environment={"device": run.device, "isolation": "inline"}).to_report()
