"""Peak memory of one job: host resident set and device allocations, reset when a job starts (a
`-m` sweep runs its jobs one after another in one process)."""

import contextlib
import resource
import sys
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start this job's peaks from now: Linux resets the resident-set high-water mark when "5" is
    written to /proc/self/clear_refs; CUDA keeps its own peak counters."""
    with contextlib.suppress(OSError):  # not Linux, or not allowed: the process's peak, then
        Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak resident memory (MiB) since reset_peak_memory and, on a GPU, peak allocated memory."""
    peak = {"peak_host_memory_mb": round(host_peak_kib() / 2**10, 1)}
    if device.type == "cuda":
        peak["peak_device_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def host_peak_kib() -> float:
    if STATUS.exists():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):  # "VmHWM:   123456 kB"
                return float(line.split()[1])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**10 if sys.platform == "darwin" else 1)
