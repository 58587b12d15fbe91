"""The timing protocol, written once: how two prepared sides are timed against each other (a comparison, the app,
every point of a sweep), which time of each run the ratio is computed from, and what the report says about it.

Order. Runs are taken in pairs, a baseline run next to an optimized one, and pairs come in blocks of two whose
orders mirror each other (baseline-optimized then optimized-baseline, or the reverse; which of the two is drawn
at random per block). Within a block each side runs first once and second once, so a machine that drifts, or a
position that costs (the run just after the other process ran), hits both sides alike; "auto" stops only at the
end of a block, so every stopping point is balanced. A sweep over several prompts gives each block one prompt,
in turn, so every prompt is timed in both orders too. The order actually run is in the report
(`timing.sequence`, e.g. "BO OB OB BO").

Estimator. On a CPU a run's wall time includes the time its process was ready to compute but waited for a
core that another process held (the kernel's run-queue wait, /proc/self/schedstat). On a shared machine that
wait is most of the noise and, when the scheduler keeps the two sides' processes on differently loaded cores,
a steady bias: identical sides read 0.63x with a tight interval (benchmarks/records/2026-12-02-contention.md).
So on a CPU the ratio is taken from each run's **own time**, its wall time less that wait: what the run takes
when a core is free for it (its computation, and any I/O or sleep it does itself). Wall time is still measured
and reported beside it (`timing.speedup_wall`). On CUDA the ratio is taken from wall time bracketed by
synchronizes, with CUDA events for the steps, as before: the GPU's work does not wait for CPU cores in the same
way. The report names the estimator and why (`timing.estimator`).

Interval and verdict: `optim.stats` (paired t on the log ratios; faster / slower / equivalent / inconclusive).
Contention: `optim.machine` (only foreign processes count: not the lab's own server and workers, not the browser
showing its page).

    >>> plan = Plan.for_run(resolved_run)                                  # doctest: +SKIP
    >>> turns = take_turns(baseline_side, optimized_side, plan)           # doctest: +SKIP
    >>> summarize("interleaved", None, resolved_run, turns).speedup.text  # doctest: +SKIP
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from optim.machine import BUSY_CORES
from optim.measure import Timing
from optim.report_model import Contention, Estimator, Interval, TimingReport
from optim.report_model import DifferenceInterval as MemoryInterval
from optim.stats import (
    NEGLIGIBLE,
    RatioInterval,
    describe_memory,
    describe_speedup,
    paired_difference_interval,
    paired_ratio_interval,
    unpaired_difference_interval,
    unpaired_ratio_interval,
)

PAIRS_PER_BLOCK = 2
# "auto": at least this many blocks before the interval may stop the runs; a sweep point takes at least one
# block per prompt as well.
MIN_AUTO_BLOCKS = 2
# "auto" when both sides cannot be loaded at once (blocks of runs, one side at a time): this many runs per side.
SEQUENTIAL_AUTO_RUNS = 6
# Memory differences within this share of the baseline's peak (or within MEMORY_BAND_MIN_MB) are too small to
# count, the memory counterpart of the ratio's +-NEGLIGIBLE band.
MEMORY_BAND_MIN_MB = 1.0

ESTIMATORS = {
    "own": "own time: each run's wall time less the time its process waited for a CPU that another process held "
           "(the kernel's run-queue wait)",
    "wall": "wall time",
}


class TimedSide(Protocol):
    """A prepared side that times one run on demand (`optim.measure.Side`, `optim.worker.RemoteSide`)."""

    def timed(self, label: str = ..., item: int = ...) -> Timing: ...


@dataclass(frozen=True)
class Plan:
    """How many pairs to take: exactly `pairs` (fixed), or for "auto" at least `min_pairs` and at most `pairs`,
    stopping at the end of a block once the interval is within `target_precision` and says faster, slower or
    equivalent (not inconclusive), or `time_budget_s` of timed runs are spent. `items`: how many prompts the
    blocks cycle through."""

    auto: bool
    pairs: int
    min_pairs: int
    target_precision: float
    time_budget_s: float
    items: int = 1

    @classmethod
    def for_run(cls, run: Any, *, max_runs: int | None = None) -> Plan:
        """A comparison's plan: the run's count, or "auto" within its target, its budget and `max_runs`."""
        if isinstance(run.timed_runs, int):
            return cls(False, run.timed_runs, run.timed_runs, run.target_precision, run.time_budget_s)
        minimum = PAIRS_PER_BLOCK * MIN_AUTO_BLOCKS
        return cls(True, max(minimum, max_runs or 50), minimum, run.target_precision, run.time_budget_s)

    @classmethod
    def for_sweep(cls, items: int, *, target_precision: float, time_budget_s: float, max_pairs: int = 200) -> Plan:
        """A sweep point's plan: "auto", at least one block per prompt (and MIN_AUTO_BLOCKS)."""
        minimum = PAIRS_PER_BLOCK * max(MIN_AUTO_BLOCKS, items)
        return cls(True, max(minimum, max_pairs), minimum, target_precision, time_budget_s, items)


@dataclass
class Turns:
    """The timed runs as they were taken: each side's in order, which side ran first in each pair, each pair's
    prompt (item), the time spent, and why the runs stopped."""

    baseline: list[Timing] = field(default_factory=list)
    optimized: list[Timing] = field(default_factory=list)
    firsts: list[str] = field(default_factory=list)  # per pair: "B" (baseline first) or "O"
    items: list[int] = field(default_factory=list)
    timed_s: float = 0.0
    stopped_because: str = ""

    @property
    def sequence(self) -> str:
        """'BO OB OB BO': each pair's order as run, pairs separated by a space."""
        return " ".join("BO" if first == "B" else "OB" for first in self.firsts)


def block_orders(rng: random.Random) -> Callable[[int], str]:
    """Which side runs first in pair i: the two pairs of a block mirror each other, and which of the two orders
    a block starts with is drawn at random (so no periodic load can line up with a fixed pattern)."""
    starts: dict[int, str] = {}

    def first(pair: int) -> str:
        block, position = divmod(pair, PAIRS_PER_BLOCK)
        if block not in starts:
            starts[block] = rng.choice("BO")
        start = starts[block]
        return start if position == 0 else ("O" if start == "B" else "B")

    return first


def estimator_for(device: str, runs: list[Timing]) -> tuple[str, str]:
    """(name, why) of the time per run the ratio is taken from (see the module docstring)."""
    if device == "cuda":
        return "wall", ("wall time bracketed by CUDA synchronizes (steps by CUDA events): GPU work does not queue "
                        "for CPU cores")
    if runs and all(t.load.wait_s is not None for t in runs):
        return "own", ("on a CPU, time spent waiting for a core that another process held is the machine's, not "
                       "the side's: it is left out, and wall time is reported beside it")
    return "wall", "wall time: this system does not report run-queue waits (/proc/self/schedstat)"


def run_time(timing: Timing, estimator: str) -> float:
    """One run's time under `estimator`: its wall time, or its own time (wall less run-queue wait)."""
    if estimator == "own" and timing.load.wait_s is not None:
        return max(timing.latency_s - timing.load.wait_s, 1e-9)
    return timing.latency_s


def take_turns(baseline: TimedSide, optimized: TimedSide, plan: Plan, *, device: str = "cpu",
               rng: random.Random | None = None, label: Callable[[int], str] | None = None,
               on_pair: Callable[[Turns], None] | None = None) -> Turns:
    """Timed runs of the two sides in balanced blocks (see the module docstring) until `plan` says stop."""
    first_of = block_orders(rng or random.Random())
    turns = Turns()
    pair = 0
    while True:
        item = (pair // PAIRS_PER_BLOCK) % plan.items
        first = first_of(pair)
        text = label(pair) if label is not None else (
            f"timed run {pair + 1}" + (f"/{plan.pairs}" if not plan.auto else ", auto"))
        order = (("B", baseline), ("O", optimized)) if first == "B" else (("O", optimized), ("B", baseline))
        for name, handle in order:
            timing = handle.timed(text, item)
            (turns.baseline if name == "B" else turns.optimized).append(timing)
            turns.timed_s += timing.latency_s
        turns.firsts.append(first)
        turns.items.append(item)
        pair += 1
        if on_pair is not None:
            on_pair(turns)
        stop = _stop(plan, turns, pair, device)
        if stop:
            turns.stopped_because = stop
            return turns


def _stop(plan: Plan, turns: Turns, pairs: int, device: str) -> str | None:
    if not plan.auto:
        return f"the {plan.pairs} run{'s' if plan.pairs != 1 else ''} per side asked for" if pairs >= plan.pairs \
            else None
    if pairs < plan.min_pairs or pairs % PAIRS_PER_BLOCK:
        return None  # whole blocks only, and enough of them for an interval
    estimator, _ = estimator_for(device, turns.baseline + turns.optimized)
    interval = paired_ratio_interval([run_time(t, estimator) for t in turns.baseline],
                                     [run_time(t, estimator) for t in turns.optimized])
    # Precise enough, and the interval settles the question: an interval at the target that still reaches across
    # an edge of the band (inconclusive) keeps the runs going until the budget or the limit.
    if (interval.half_width is not None and interval.half_width <= plan.target_precision
            and interval.verdict != "inconclusive"):
        return (f"target precision reached (±{interval.half_width:.1%} <= ±{plan.target_precision:.0%}) and the "
                f"interval settles it ({interval.verdict})")
    if turns.timed_s >= plan.time_budget_s:
        return f"time budget spent ({turns.timed_s:.1f} s of timed runs >= {plan.time_budget_s:g} s)"
    if pairs >= plan.pairs:
        return f"run limit reached ({plan.pairs} per side)"
    return None


ORDERS = {
    "interleaved": "in turns, in blocks of two pairs whose orders mirror each other (baseline-optimized, "
                   "optimized-baseline, or the reverse, drawn per block)",
    "sequential": "in blocks: baseline, optimized, baseline again (reloaded)",
}


def memory_band(baseline_peaks: list[float]) -> float:
    """MB of peak memory too small to count as a difference: NEGLIGIBLE of the baseline's peak, at least
    MEMORY_BAND_MIN_MB."""
    return max(MEMORY_BAND_MIN_MB, NEGLIGIBLE * max(baseline_peaks, default=0.0))


def summarize(mode: str, reason: str | None, run: Any, turns: Turns, *, reuse: str | None = None,
              order: str | None = None, sequence: str | None = None) -> TimingReport:
    """The timing section of the report (`optim.report_model.TimingReport`, the one schema it has): the speedup
    under the estimator (and under wall time), the memory difference, each with its interval and verdict, and
    the machine's load."""
    b, o = turns.baseline, turns.optimized
    estimator, why = estimator_for(run.device, b + o)
    paired = mode == "interleaved"
    ratio = paired_ratio_interval if paired else unpaired_ratio_interval
    speedup = ratio([run_time(t, estimator) for t in b], [run_time(t, estimator) for t in o])
    wall = ratio([t.latency_s for t in b], [t.latency_s for t in o])
    b_peaks, o_peaks = [t.peak_memory_mb for t in b], [t.peak_memory_mb for t in o]
    band = memory_band(b_peaks)
    if paired:
        memory = paired_difference_interval(b_peaks, o_peaks, band=band)
    else:
        memory = unpaired_difference_interval(b_peaks, o_peaks, band=band)
    loads = [t.load for t in b + o]
    walls = [t.latency_s for t in b + o]

    def mean_share(values: list[float | None]) -> float | None:
        shares = [v / w for v, w in zip(values, walls) if v is not None and w > 0]
        return statistics.fmean(shares) if shares else None

    busy = sum(load.busy for load in loads)
    others, waited = mean_share([load.others_cpu_s for load in loads]), mean_share([load.wait_s for load in loads])
    half_width = speedup.half_width
    return TimingReport(
        mode=mode, reason=reason, order=order or ORDERS[mode],
        sequence=sequence if sequence is not None else turns.sequence, runs_per_side=min(len(b), len(o)),
        auto=run.timed_runs == "auto", target_precision=run.target_precision, time_budget_s=run.time_budget_s,
        timed_s=turns.timed_s, stopped_because=turns.stopped_because,
        target_met=None if half_width is None else half_width <= run.target_precision,
        estimator=Estimator(name=estimator, description=ESTIMATORS[estimator], why=why),
        speedup=Interval(**speedup.to_dict(), text=describe_speedup(speedup)),
        speedup_wall=Interval(**wall.to_dict(), text=describe_speedup(wall)),
        memory_saving_mb=MemoryInterval(**memory.to_dict(), text=describe_memory(memory)),
        contention=Contention(
            busy_runs=busy, runs=len(loads), busy_share=busy / len(loads) if loads else 0.0,
            busy_threshold_cores=BUSY_CORES, others_cores_mean=others,
            lab_cores_mean=mean_share([load.lab_cpu_s for load in loads]),
            page_cores_mean=mean_share([load.page_cpu_s for load in loads]), wait_share_mean=waited,
            note=contention_note(busy, len(loads), others, waited if estimator == "own" else None)),
        baseline_reuse=reuse,
    )


def contention_note(busy: int, runs: int, others: float | None, waited: float | None) -> str | None:
    """What the report says about a busy machine (nothing when no run was busy)."""
    if not busy:
        return None
    wait = (f"; the sides waited for a CPU {waited:.0%} of their wall time, which their own time leaves out"
            if waited else "")
    return (f"the machine was busy during {busy / runs:.0%} of the timed runs (other processes used "
            f"{others or 0:.2f} of a core on average{wait}): the interval says how sure the ratio still is")


def paired_speedup(baseline: list[Timing], optimized: list[Timing], device: str) -> tuple[RatioInterval, str]:
    """A sweep point's speedup from its paired runs, under this device's estimator, and the estimator's name."""
    estimator, _ = estimator_for(device, baseline + optimized)
    interval = paired_ratio_interval([run_time(t, estimator) for t in baseline],
                                     [run_time(t, estimator) for t in optimized])
    return interval, estimator
