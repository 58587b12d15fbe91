"""How sure a ratio is: a confidence interval from paired runs, and a verdict in words.

The two sides' timed runs alternate (baseline, optimized, optimized, baseline, ...), so each adjacent pair was
timed under nearly the same machine conditions. For pair i the log ratio r_i = log(baseline_i / optimized_i) is
one measurement of the speedup; the speedup is exp(mean r) (the geometric mean of the pair ratios) and its 95%
confidence interval is exp(mean r +- t(0.975, n-1) * sd(r) / sqrt(n)): Student's t on the log ratios, the
paired t-test's interval. Logs make "2x faster" and "2x slower" symmetric and the interval multiplicative.

Sequential timing (both sides could not be loaded at once) has no pairs: the interval then comes from the two
independent samples (Welch's t on the log latencies), and the report says which.

    >>> interval = paired_ratio_interval([1.0, 1.1, 0.9, 1.0], [0.5, 0.56, 0.44, 0.5])
    >>> round(interval.estimate, 2), interval.verdict
    (2.0, 'faster')
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

CONFIDENCE = 0.95
# The smallest speedup (or slowdown) the lab calls one: two identical sides in two processes differ by a few
# percent from where their memory and threads landed, steadily, so a tight interval around 1.05 can come from
# two identical processes (seen in CI: an A/A comparison on a busy 2-core machine read 1.05x, 95% CI 1.00x to
# 1.10x). A verdict needs the whole interval beyond this band, not only beyond 1.0.
NEGLIGIBLE = 0.05


@dataclass(frozen=True)
class RatioInterval:
    """A ratio (baseline / optimized: > 1 means the optimized side is faster or smaller) with its interval."""

    estimate: float
    low: float | None
    high: float | None
    runs: int  # pairs (paired) or runs per side (unpaired)
    method: str
    verdict: str
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float | None:
        """Relative half-width of the interval (0.05: the ratio is known to about +-5%)."""
        if self.low is None or self.high is None:
            return None
        return (self.high / self.low) ** 0.5 - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "half_width": self.half_width}


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy's, which scikit-image already brings)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def verdict(estimate: float, low: float | None, high: float | None, *, negligible: float = NEGLIGIBLE) -> str:
    """'faster' / 'slower' when the whole interval is beyond the negligible band around 1.0 (above 1 + negligible,
    or below 1 / (1 + negligible)), 'no measurable difference' otherwise, 'too few runs' without an interval."""
    if low is None or high is None:
        return "too few runs"
    if low > 1.0 + negligible:
        return "faster"
    if high < 1.0 / (1.0 + negligible):
        return "slower"
    return "no measurable difference"


def paired_ratio_interval(baseline: list[float], optimized: list[float]) -> RatioInterval:
    """The speedup from paired timings (baseline[i] and optimized[i] were timed next to each other)."""
    if len(baseline) != len(optimized) or not baseline:
        raise ValueError("paired timings need the same, non-zero number of runs on each side")
    logs = [math.log(b / o) for b, o in zip(baseline, optimized)]
    n = len(logs)
    mean = statistics.fmean(logs)
    if n < 2:
        return RatioInterval(math.exp(mean), None, None, n, "paired", verdict(math.exp(mean), None, None))
    spread = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * statistics.stdev(logs) / math.sqrt(n)
    estimate, low, high = math.exp(mean), math.exp(mean - spread), math.exp(mean + spread)
    return RatioInterval(estimate, low, high, n, "paired t-interval on log ratios", verdict(estimate, low, high))


def unpaired_ratio_interval(baseline: list[float], optimized: list[float]) -> RatioInterval:
    """The speedup from two independent samples (Welch's t on log latencies), for sequential timing."""
    if not baseline or not optimized:
        raise ValueError("need timings on both sides")
    a, b = [math.log(x) for x in baseline], [math.log(x) for x in optimized]
    mean = statistics.fmean(a) - statistics.fmean(b)
    estimate = math.exp(mean)
    if len(a) < 2 or len(b) < 2:
        return RatioInterval(estimate, None, None, min(len(a), len(b)), "unpaired", verdict(estimate, None, None))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        df = len(a) + len(b) - 2
    else:
        df = max(1, int((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))))
    spread = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    low, high = math.exp(mean - spread), math.exp(mean + spread)
    return RatioInterval(estimate, low, high, min(len(a), len(b)), "Welch t-interval on log latencies (unpaired)",
                         verdict(estimate, low, high))


@dataclass(frozen=True)
class DifferenceInterval:
    """A paired difference (baseline - optimized, e.g. MB of peak memory saved) with its interval."""

    estimate: float
    low: float | None
    high: float | None
    runs: int
    verdict: str  # "less", "more", "no measurable difference", "too few runs"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_difference_interval(
    baseline: list[float], optimized: list[float], *, negligible: float
) -> DifferenceInterval:
    """Mean of baseline[i] - optimized[i] with a t-interval; `negligible`: differences smaller than this (in the
    values' unit) are not called a difference."""
    diffs = [b - o for b, o in zip(baseline, optimized)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else 0.0
    if n < 2:
        return DifferenceInterval(mean, None, None, n, "too few runs")
    spread = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    low, high = mean - spread, mean + spread
    if low > 0 and mean >= negligible:
        word = "less"
    elif high < 0 and mean <= -negligible:
        word = "more"
    else:
        word = "no measurable difference"
    return DifferenceInterval(mean, low, high, n, word)


def describe_speedup(interval: RatioInterval) -> str:
    """The ratio in words a newcomer reads right: '1.52x faster (95% CI 1.47x to 1.58x)'."""
    if interval.low is None:
        return (f"{interval.estimate:.2f}x from {interval.runs} run{'s' if interval.runs != 1 else ''} per side: "
                "too few to say how sure (use 3 or more, or auto)")
    span = f"95% CI {interval.low:.2f}x to {interval.high:.2f}x"
    if interval.verdict == "faster":
        return f"{interval.estimate:.2f}x faster ({span})"
    if interval.verdict == "slower":
        return f"{1 / interval.estimate:.2f}x slower ({span})"
    return f"no measurable difference: {interval.estimate:.2f}x ({span})"
