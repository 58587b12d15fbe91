"""The ratio holds on a busy machine: identical sides are called "no measurable difference" while another process
fights for the CPU, and a cache that skips about half the work is called "faster" with its whole interval above
1.0 - each several times in a row, so the verdict is stable, not lucky. Nothing here asserts a speed: only the
verdicts and what the intervals contain.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from optim.config import parse_run
from optim.engine import compare
from optim.presets import load_preset
from optim.stats import NEGLIGIBLE, paired_ratio_interval, unpaired_ratio_interval, verdict

REPEATS = 3
# 20 steps at 64x64: fast runs, and MagCache (the shipped preset) skips about half of them.
# 5 s of timed runs for identical sides (a wider interval only makes "no measurable difference" likelier); up to
# 20 s for the cache, whose interval must clear the 5% band even when the machine is very busy (the competitor,
# and the suite's other worker: with 8 s it once read 1.34x, 95% CI 1.03x-1.73x). A quiet machine stops at +-5%.
RUN = {"steps": 20, "width": 64, "height": 64, "timed_runs": "auto", "time_budget_s": 5.0}
CACHE_RUN = {**RUN, "time_budget_s": 20.0}

COMPETITOR = """
import torch
torch.set_num_threads(2)
a = torch.randn(384, 384)
while True:
    a = (a @ a).tanh_()
"""


@pytest.fixture
def busy_machine():
    """Another CPU-heavy process (2-thread matrix multiplies) for the whole test."""
    process = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    time.sleep(1.0)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_identical_sides_show_no_measurable_difference_on_a_busy_machine(busy_machine):
    seen = []
    for _ in range(REPEATS):
        report = compare(parse_run(RUN), load_preset("baseline")).to_report()
        low, high = report["speedup_interval"]
        seen.append((report["speedup"], low, high, report["verdict"]))
        assert report["verdict"] == "no measurable difference", seen
        assert low <= 1.0 + NEGLIGIBLE and high >= 1.0 / (1.0 + NEGLIGIBLE), seen  # the interval reaches the band
        assert report["timing"]["contention"]["busy_runs"] > 0, "the competing process must show up as busy runs"
    assert busy_machine.poll() is None


def test_a_cache_skipping_half_the_work_is_faster_with_its_interval_above_one(busy_machine):
    seen = []
    for _ in range(REPEATS):
        report = compare(parse_run(CACHE_RUN), load_preset("mag-cache")).to_report()
        low, high = report["speedup_interval"]
        seen.append((report["speedup"], low, high, report["optimized"]["work_fraction"]))
        assert report["optimized"]["work_fraction"] < 0.7, seen
        assert report["verdict"] == "faster" and low > 1.0 + NEGLIGIBLE, seen


def test_the_statistics():
    """Exact cases: a constant 2x is faster with a zero-width interval; noise around 1.0 is no difference; one
    run gives no interval; sequential (unpaired) samples use Welch's interval."""
    two = paired_ratio_interval([1.0, 1.2, 0.8, 1.1], [0.5, 0.6, 0.4, 0.55])
    assert two.estimate == pytest.approx(2.0) and two.low == pytest.approx(2.0) and two.verdict == "faster"
    same = paired_ratio_interval([1.0, 1.1, 0.9, 1.05], [1.02, 1.08, 0.91, 1.03])
    assert same.low < 1.0 < same.high and same.verdict == "no measurable difference"
    one = paired_ratio_interval([1.0], [0.5])
    assert one.low is None and one.verdict == "too few runs"
    slower = unpaired_ratio_interval([1.0, 1.01, 0.99], [2.0, 2.02, 1.98])
    assert slower.verdict == "slower" and slower.high < 1.0 and "Welch" in slower.method
    assert verdict(1.01, 1.005, 1.015) == "no measurable difference"  # real but under the 5% that matters
    # What CI saw from two identical sides on a busy machine: above 1.0 throughout, but not clear of the band.
    assert verdict(1.051, 1.004, 1.100) == "no measurable difference"
    assert verdict(1.2, 1.06, 1.35) == "faster" and verdict(0.8, 0.7, 0.94) == "slower"
