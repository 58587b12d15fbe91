"""What else the machine was doing while a timed run ran, and the thread settings that keep timings steady.

Per timed run a side records its own CPU time (all its threads, `time.process_time`) next to its wall time, and
the whole machine's CPU time from /proc/stat: what other processes used is the difference. Steal time (a
hypervisor giving the CPU to another guest) comes from /proc/stat too. A run during which others used more than
`BUSY_CORES` of a core on average, or had steal, is "busy".

Threads: PyTorch's CPU pool is OpenMP. By default GNU OpenMP threads spin after each parallel region before they
sleep; with another process on the same cores those spinning threads steal the cores from the threads doing
work, and a 2x shortage of CPU becomes a many-fold slowdown (identical sides once read 33.8x). Measured on the
2-core machine, a bare 20-step run of the embedded model (median of 5, fresh processes; benchmarks/records/
2026-11-30-thread-settings.md):

    setting                              quiet          with a 2-thread competitor
    2 threads, OpenMP default (spin)     0.22 s         0.85 s, and 26.9 s in another try
    2 threads, OMP_WAIT_POLICY=PASSIVE   0.37-0.48 s    0.29-0.68 s
    1 thread                             0.23-0.25 s    0.31 s

Sleeping threads (PASSIVE) survive contention but pay a wake-up per parallel region, which doubles a small
model's time on a quiet machine; one thread has neither problem. So worker processes start with
OMP_WAIT_POLICY=PASSIVE and half the cores they may use as intra-op threads (one on 2 cores): the other half is
headroom for whatever else the machine runs. Both are in the report (`environment.threads`); set
OMP_NUM_THREADS to choose otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

# Another process using this much of a core, on average, during a run makes the run "busy".
BUSY_CORES = 0.25
BUSY_STEAL_SHARE = 0.05


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_threads() -> int:
    """Intra-op threads of a worker: half the cores this process may use, at least one (see the docstring)."""
    return max(1, available_cores() // 2)


# Set in every worker process before torch is imported (see the module docstring), unless the user set them.
WORKER_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(worker_threads())}


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
    """In a worker process: `worker_threads()` intra-op threads unless OMP_NUM_THREADS chose (torch's default
    counts the physical cores of the whole machine, which may be more than this container may use)."""
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(worker_threads())
