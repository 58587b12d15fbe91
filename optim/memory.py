"""Peak memory, read the same way for every side.

* CUDA: `torch.cuda.reset_peak_memory_stats()` then `max_memory_allocated()` / `max_memory_reserved()`.
* Host (CPU) memory: the kernel's high-water mark of this process. Writing "5" to /proc/self/clear_refs resets
  VmHWM to the current RSS; VmHWM after the run minus the RSS before loading is the side's peak. tracemalloc
  cannot see torch's allocations and glibc keeps freed memory: each side runs in a fresh process, and the heap
  is trimmed (`malloc_trim`) before the measured runs so memory freed while loading does not count.
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Resident set size of this process now (0 where /proc is missing)."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    import psutil

    return psutil.Process().memory_info().rss / MB


def virtual_mb() -> float:
    """Virtual memory size of this process now (what RLIMIT_AS limits)."""
    kb = _status_kb("VmSize")
    if kb is not None:
        return kb / 1024
    import psutil

    return psutil.Process().memory_info().vms / MB


def trim_heap() -> None:
    """Give memory that was freed (by loading, quantizing, compiling) back to the kernel, so that a peak measured
    afterwards counts what the runs use, not what glibc kept from before. No-op where glibc is absent."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def freeze_heap() -> None:
    """Collect, then move every object alive now (imported modules, the loaded pipeline: about half a million on
    the embedded model) out of the collector's reach (`gc.freeze`). The full collection `trim_heap` makes before
    each timed run then scans only what the runs created: 0.1 ms instead of 0.3 s (longer than an embedded
    pipeline call), and the collector's own automatic full passes stop landing inside timed runs. Call
    `thaw_heap()` before anything frozen may be dropped (undoing optimizations, closing), so that it can be
    collected again."""
    import gc

    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    import gc

    gc.unfreeze()


def reset_host_peak() -> bool:
    """Reset the kernel's high-water mark to the current RSS. False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def host_peak_mb() -> float:
    kb = _status_kb("VmHWM")
    return kb / 1024 if kb is not None else rss_mb()


@dataclass
class MemoryProbe:
    """Start before loading; `reset_peaks()` before the measured runs; `read()` after them."""

    device: str
    rss_before_mb: float = 0.0

    def start(self) -> MemoryProbe:
        import gc

        gc.collect()
        self._cuda_sync_and_free()
        self.rss_before_mb = rss_mb()
        self.reset_peaks()
        return self

    def reset_peaks(self) -> None:
        trim_heap()
        reset_host_peak()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            # Cached blocks from loading and warm-up would otherwise count in the reserved peak.
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def footprint(self) -> tuple[float, float, float | None]:
        """(held now, the most held since `start()`, still free for another side), in MB: GPU memory reserved on
        CUDA, this process's RSS growth on a CPU (free: the machine's available RAM)."""
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            free, _ = torch.cuda.mem_get_info()
            return torch.cuda.memory_reserved() / MB, torch.cuda.max_memory_reserved() / MB, free / MB
        import psutil

        held = max(0.0, rss_mb() - self.rss_before_mb)
        peak = max(held, host_peak_mb() - self.rss_before_mb)
        return held, peak, psutil.virtual_memory().available / MB

    def read(self) -> dict[str, float | None]:
        host = max(0.0, host_peak_mb() - self.rss_before_mb)
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            return {
                "peak_memory_mb": torch.cuda.max_memory_allocated() / MB,
                "reserved_memory_mb": torch.cuda.max_memory_reserved() / MB,
                "host_peak_memory_mb": host,
            }
        return {"peak_memory_mb": host, "reserved_memory_mb": None, "host_peak_memory_mb": host}

    def _cuda_sync_and_free(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
