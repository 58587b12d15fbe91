"""What else the machine was doing while a timed run ran, and the thread settings that keep timings steady.

Per timed run a side records its own CPU time (all its threads, `time.process_time`) next to its wall time, and
the whole machine's CPU time from /proc/stat: what other processes used is the difference. Steal time (a
hypervisor giving the CPU to another guest) comes from /proc/stat too. A run during which others used more than
`BUSY_CORES` of a core on average, or had steal, is "busy".

Threads: PyTorch's CPU pool is OpenMP. By default GNU OpenMP threads spin after each parallel region before they
sleep; with another process on the same cores those spinning threads steal the cores from the threads doing
work, and a 2x shortage of CPU becomes a many-fold slowdown (FACTS: identical sides read 33.8x). Worker processes
therefore start with OMP_WAIT_POLICY=PASSIVE (threads sleep at once) and one intra-op thread per core this process
may run on; the report records both (`environment.threads`). benchmarks/measurement_stability.py measured the
choice (benchmarks/records/).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

# Another process using this much of a core, on average, during a run makes the run "busy".
BUSY_CORES = 0.25
BUSY_STEAL_SHARE = 0.05
# Set in every worker process before torch is imported (see the module docstring).
WORKER_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _proc_stat() -> tuple[float, float] | None:
    """(busy CPU seconds, steal seconds) of the whole machine since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    user, nice, system, idle, iowait, irq, softirq = values[:7]
    steal = values[7] if len(values) > 7 else 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (user + nice + system + irq + softirq) / tick, steal / tick


@dataclass(frozen=True)
class Load:
    """The machine during one timed run."""

    cpu_s: float  # this process's CPU time (all threads)
    others_cpu_s: float | None  # CPU time other processes used (None without /proc/stat)
    steal_s: float | None
    busy: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadMeter:
    """`start()` before a timed call, `stop(wall_s)` after it."""

    def start(self) -> LoadMeter:
        self._cpu = time.process_time()
        self._stat = _proc_stat()
        return self

    def stop(self, wall_s: float) -> Load:
        cpu = time.process_time() - self._cpu
        after = _proc_stat()
        if self._stat is None or after is None:
            return Load(cpu, None, None, False)
        machine = after[0] - self._stat[0]
        steal = after[1] - self._stat[1]
        # /proc/stat counts in ticks (10 ms): a few ticks of rounding are not another process.
        others = max(0.0, machine - cpu - 0.02)
        busy = wall_s > 0 and (others / wall_s > BUSY_CORES or steal / wall_s > BUSY_STEAL_SHARE * available_cores())
        return Load(cpu, others, steal, busy)


def steady_threads() -> None:
    """Before torch is imported in a process that may run pipelines itself (the CLI with inline isolation, a
    ZeroGPU app, the tests): the same OpenMP setting as the workers, unless the user chose one."""
    for key, value in WORKER_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def thread_settings() -> dict[str, Any]:
    """What this process computes with: intra- and inter-op threads, OpenMP's wait policy, the cores it may use."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cores": available_cores(),
    }


def configure_threads() -> None:
    """In a worker process: one intra-op thread per core it may use (torch's default counts physical cores of
    the whole machine, which may be more than this container or affinity mask allows)."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(available_cores())
