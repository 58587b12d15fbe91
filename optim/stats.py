"""How sure a ratio is: a confidence interval from paired runs, and a verdict that says what the interval says.

The two sides' timed runs alternate in balanced blocks (`optim.timing`), so each adjacent pair was timed under
nearly the same machine conditions. For pair i the log ratio r_i = log(baseline_i / optimized_i) is one
measurement of the speedup; the speedup is exp(mean r) (the geometric mean of the pair ratios) and its 95%
confidence interval is exp(mean r +- t(0.975, n-1) * sd(r) / sqrt(n)): Student's t on the log ratios, the
paired t-test's interval (`scipy.stats.ttest_rel(log b, log o).confidence_interval()`, exponentiated). Logs make
"2x faster" and "2x slower" symmetric and the interval multiplicative.

Sequential timing (both sides could not be loaded at once) has no pairs: the interval then comes from the two
independent samples (Welch's t on the log latencies, `ttest_ind(..., equal_var=False)`), and the report says
which.

The verdict reads the interval as an equivalence test does, against a band of +-`NEGLIGIBLE` around 1.0:

    faster / slower   the whole interval is beyond the band (above 1 + band, or below 1 / (1 + band))
    equivalent        the whole interval is inside the band: any difference is too small to matter
    inconclusive      the interval reaches across an edge of the band: the runs cannot tell which
    too few runs      no interval (one run per side)

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
# percent from where their memory and threads landed, steadily (an A/A comparison on a busy 2-core machine
# read 1.05x, 95% CI 1.00x to 1.10x). A verdict of faster or slower needs the whole interval beyond this band;
# "equivalent" needs it wholly inside.
NEGLIGIBLE = 0.05
VERDICTS = ("faster", "slower", "equivalent", "inconclusive", "too few runs")
MEMORY_VERDICTS = ("less", "more", "equivalent", "inconclusive", "too few runs")
SETTLE = "run longer (more timed runs, or a larger time budget) or on a quieter machine"


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


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (scipy's, which scikit-image already brings)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def verdict(estimate: float, low: float | None, high: float | None, *, negligible: float = NEGLIGIBLE) -> str:
    """What a ratio's interval says (see the module docstring): faster, slower, equivalent, inconclusive, or too
    few runs without an interval."""
    if low is None or high is None:
        return "too few runs"
    upper, lower = 1.0 + negligible, 1.0 / (1.0 + negligible)
    if low > upper:
        return "faster"
    if high < lower:
        return "slower"
    if low >= lower and high <= upper:
        return "equivalent"
    return "inconclusive"


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


def welch(a: list[float], b: list[float]) -> tuple[float, float | None, float | None]:
    """mean(a) - mean(b) and its Welch t-interval (None, None with fewer than two values on a side)."""
    mean = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return mean, None, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return mean, mean, mean
    # Welch-Satterthwaite degrees of freedom, unrounded (as scipy's ttest_ind(equal_var=False) uses them).
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    spread = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    return mean, mean - spread, mean + spread


def unpaired_ratio_interval(baseline: list[float], optimized: list[float]) -> RatioInterval:
    """The speedup from two independent samples (Welch's t on log latencies), for sequential timing."""
    if not baseline or not optimized:
        raise ValueError("need timings on both sides")
    mean, low, high = welch([math.log(x) for x in baseline], [math.log(x) for x in optimized])
    estimate = math.exp(mean)
    runs = min(len(baseline), len(optimized))
    if low is None or high is None:
        return RatioInterval(estimate, None, None, runs, "unpaired", verdict(estimate, None, None))
    low, high = math.exp(low), math.exp(high)
    return RatioInterval(estimate, low, high, runs, "Welch t-interval on log latencies (unpaired)",
                         verdict(estimate, low, high))


@dataclass(frozen=True)
class DifferenceInterval:
    """A difference (baseline - optimized, e.g. MB of peak memory saved) with its interval and verdict."""

    estimate: float
    low: float | None
    high: float | None
    runs: int
    verdict: str  # "less", "more", "equivalent", "inconclusive", "too few runs"
    method: str = "paired t-interval"
    band: float = 0.0  # differences within +-band (in the values' unit) are too small to count

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def difference_verdict(low: float | None, high: float | None, band: float) -> str:
    """The memory counterpart of `verdict`: less (the whole interval above +band), more (below -band),
    equivalent (wholly within +-band), inconclusive otherwise."""
    if low is None or high is None:
        return "too few runs"
    if low > band:
        return "less"
    if high < -band:
        return "more"
    if low >= -band and high <= band:
        return "equivalent"
    return "inconclusive"


def paired_difference_interval(baseline: list[float], optimized: list[float], *, band: float) -> DifferenceInterval:
    """Mean of baseline[i] - optimized[i] with a paired t-interval (the runs were taken in turns)."""
    diffs = [b - o for b, o in zip(baseline, optimized)]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else 0.0
    if n < 2:
        return DifferenceInterval(mean, None, None, n, "too few runs", band=band)
    spread = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    low, high = mean - spread, mean + spread
    return DifferenceInterval(mean, low, high, n, difference_verdict(low, high, band), band=band)


def unpaired_difference_interval(baseline: list[float], optimized: list[float], *, band: float) -> DifferenceInterval:
    """mean(baseline) - mean(optimized) with Welch's interval, for runs that were not taken in turns."""
    mean, low, high = welch(baseline, optimized)
    return DifferenceInterval(mean, low, high, min(len(baseline), len(optimized)),
                              difference_verdict(low, high, band), method="Welch t-interval (unpaired)", band=band)


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
    if interval.verdict == "equivalent":
        return f"equivalent: {interval.estimate:.2f}x ({span}, within ±{NEGLIGIBLE:.0%} of 1.0)"
    return f"inconclusive: {interval.estimate:.2f}x ({span}, {straddles(interval)}; {SETTLE})"


def straddles(interval: RatioInterval) -> str:
    """Why an interval is inconclusive, in words: which verdicts it cannot tell apart."""
    upper, lower = 1.0 + NEGLIGIBLE, 1.0 / (1.0 + NEGLIGIBLE)
    can_be = [word for word, possible in (("slower", interval.low < lower), ("equivalent", interval.high >= lower
                                                                              and interval.low <= upper),
                                          ("faster", interval.high > upper)) if possible]
    could = ", ".join(can_be[:-1]) + " or " + can_be[-1] if len(can_be) > 1 else can_be[0]
    return f"±{interval.half_width:.0%}: it reaches across the ±{NEGLIGIBLE:.0%} band's edge and could be {could}"


def describe_memory(interval: DifferenceInterval) -> str:
    """'+412.0 MB saved (95% CI +400.1 to +423.9, less)' and the other verdicts in words."""
    if interval.low is None:
        return f"{interval.estimate:+.1f} MB saved (too few runs for an interval)"
    span = f"95% CI {interval.low:+.1f} to {interval.high:+.1f}"
    words = {"less": "uses less", "more": "uses more",
             "equivalent": f"equivalent: within ±{interval.band:.1f} MB",
             "inconclusive": f"inconclusive: {SETTLE}"}
    return f"{interval.estimate:+.1f} MB saved ({span}, {words[interval.verdict]})"
