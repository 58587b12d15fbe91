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

import math
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


def _schedstat() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds ready to run but waiting for one) of this process's main thread, the one that
    runs the pipeline, from the kernel's /proc/self/schedstat (None where it is missing)."""
    try:
        with open("/proc/self/schedstat") as handle:
            fields = handle.read().split()
    except OSError:
        return None
    return int(fields[0]) / 1e9, int(fields[1]) / 1e9


def _current_core() -> int | None:
    """The CPU this process's main thread last ran on (field 39 of /proc/self/stat)."""
    try:
        with open("/proc/self/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[36])


def _involuntary_switches() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw


# ------------------------------------------------------------------------------------- whose CPU time it was

# Set by `optim.launch` in every side's environment: the process that started the lab's workers (the CLI, the
# app's server, a test). Set by `lab.server` when it serves: the port a browser showing the lab's page is
# connected to.
LAB_PID_ENV = "OPTIM_LAB_PID"
LAB_PORT_ENV = "OPTIM_LAB_PORT"
# The lab's own worker machinery, recognised by the module each process runs (`optim.launch._command`).
LAB_WORKER_MODULES = ("optim.zygote", "optim.spare")
NEIGHBOURS_REFRESH_S = 5.0


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """{pid: (parent pid, CPU seconds so far, command name)} of every process /proc shows."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _pid_stat(int(name), tick)
        if stat is not None:
            table[int(name)] = stat
    return table


def _pid_stat(pid: int, tick: float) -> tuple[int, float, str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, head.partition("(")[2]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(roots: set[int], table: dict[int, tuple[int, float, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in found or pid not in table:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def _client_sockets(port: int) -> set[str]:
    """Inodes of this machine's TCP connections to `port` from the client's end (a browser showing the page)."""
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as handle:
                lines = handle.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    return inodes


def _holders(inodes: set[str], pids: set[int]) -> set[int]:
    """The processes among `pids` holding one of these socket inodes."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


def _ancestors(pid: int, table: dict[int, tuple[int, float, str]]) -> set[int]:
    found = set()
    while pid in table and pid not in found:
        found.add(pid)
        pid = table[pid][0]
    return found


def _browser_root(pid: int, table: dict[int, tuple[int, float, str]], stop: set[int]) -> int:
    """Walk up from a browser's network process to its main process: the topmost ancestor running the same
    program, never into `stop` (this process, its ancestors, the lab)."""
    name = table[pid][2]
    while True:
        parent = table[pid][0]
        if parent not in table or parent in stop or table[parent][2] != name:
            return pid
        pid = parent


@dataclass(frozen=True)
class Neighbours:
    """The processes whose CPU time is not "other work": the lab's own (the process that started the workers,
    its zygote or spares and every worker under them) and the browsers showing the lab's page."""

    lab: frozenset[int]
    page: frozenset[int]

    @classmethod
    def find(cls, environ: dict[str, str] | None = None) -> Neighbours:
        env = os.environ if environ is None else environ
        try:
            table = _proc_table()
        except OSError:
            return cls(frozenset(), frozenset())
        lab: set[int] = set()
        root = int(env.get(LAB_PID_ENV) or 0)
        if root in table:
            machinery = {pid for pid, (parent, _, _) in table.items()
                         if parent == root and any(module in _cmdline(pid) for module in LAB_WORKER_MODULES)}
            lab = {root} | _descendants(machinery, table)
        page: set[int] = set()
        port = int(env.get(LAB_PORT_ENV) or 0)
        me = os.getpid()
        if port:
            stop = lab | _ancestors(me, table)
            for holder in _holders(_client_sockets(port), set(table) - stop):
                page |= _descendants({_browser_root(holder, table, stop)}, table)
        return cls(frozenset(lab - {me}), frozenset(page - lab - {me}))


class NeighbourClock:
    """CPU seconds the lab's other processes and the page's browser have used, read around each timed run;
    who they are is looked up again at most every `NEIGHBOURS_REFRESH_S` (processes come and go)."""

    def __init__(self) -> None:
        self._found_at = -math.inf
        self._neighbours = Neighbours(frozenset(), frozenset())
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def read(self) -> dict[int, float]:
        now = time.monotonic()
        if now - self._found_at > NEIGHBOURS_REFRESH_S:
            self._neighbours, self._found_at = Neighbours.find(), now
        times = {}
        for pid in self._neighbours.lab | self._neighbours.page:
            stat = _pid_stat(pid, self._tick)
            if stat is not None:
                times[pid] = stat[1]
        return times

    def split(self, before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
        """(lab, page) CPU seconds between two readings, over the processes present in both."""
        lab = page = 0.0
        for pid, cpu in after.items():
            if pid in before:
                used = max(0.0, cpu - before[pid])
                if pid in self._neighbours.page:
                    page += used
                else:
                    lab += used
        return lab, page


_NEIGHBOURS: NeighbourClock | None = None


def neighbour_clock() -> NeighbourClock:
    global _NEIGHBOURS
    if _NEIGHBOURS is None:
        _NEIGHBOURS = NeighbourClock()
    return _NEIGHBOURS


@dataclass(frozen=True)
class Load:
    """The machine during one timed run."""

    cpu_s: float  # this process's CPU time (all threads)
    others_cpu_s: float | None  # CPU time foreign processes used (None without /proc/stat): not the lab, not its page
    steal_s: float | None
    busy: bool  # foreign processes used more than BUSY_CORES of a core, or the hypervisor stole time
    # Time this side's main thread was ready to run but waited for a CPU (the kernel's run-queue wait; None
    # without schedstat), the core it ran on at the start and at the end, and how often the kernel took the CPU
    # away from it (involuntary context switches).
    wait_s: float | None = None
    core_start: int | None = None
    core_end: int | None = None
    preempted: int | None = None
    # CPU time of the lab's own other processes (the server or CLI, its other workers) and of the browser that
    # shows the lab's page: counted apart, never as "other processes".
    lab_cpu_s: float | None = None
    page_cpu_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadMeter:
    """`start()` before a timed call, `stop(wall_s)` after it."""

    def start(self) -> LoadMeter:
        self._clock = neighbour_clock()
        self._neighbours = self._clock.read()
        self._core = _current_core()
        self._switches = _involuntary_switches()
        self._sched = _schedstat()
        self._cpu = time.process_time()
        self._stat = _proc_stat()
        return self

    def stop(self, wall_s: float) -> Load:
        cpu = time.process_time() - self._cpu
        after = _proc_stat()
        sched = _schedstat()
        lab, page = self._clock.split(self._neighbours, self._clock.read())
        wait = sched[1] - self._sched[1] if sched is not None and self._sched is not None else None
        extra = {"wait_s": wait, "core_start": self._core, "core_end": _current_core(),
                 "preempted": _involuntary_switches() - self._switches, "lab_cpu_s": lab, "page_cpu_s": page}
        if self._stat is None or after is None:
            return Load(cpu, None, None, False, **extra)
        machine = after[0] - self._stat[0]
        steal = after[1] - self._stat[1]
        # /proc/stat counts in ticks (10 ms): a few ticks of rounding are not another process.
        others = max(0.0, machine - cpu - lab - page - 0.02)
        busy = wall_s > 0 and (others / wall_s > BUSY_CORES or steal / wall_s > BUSY_STEAL_SHARE * available_cores())
        return Load(cpu, others, steal, busy, **extra)


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
