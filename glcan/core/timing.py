"""Step timing: the one stopwatch behind every time glcan reports.

A training run's ``StepTimer`` callback, the pipeline's workers and its timing probe, and the
step-time benchmark all time a step the same way: wall-clock time, and *process CPU time*, which
is what ratios are taken from on a shared machine (wall times of runs made minutes apart differ
2-10x for the same work; CPU time with the thread count pinned does not), and how much CPU other
processes used meanwhile (``others_cpu``, in cores), so a report can say when a time was
measured under load. On a GPU the stopwatch synchronises the device at both ends.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

import torch


# glibc hands large freed buffers back to the kernel after every step, so a method that frees
# big activations (E2E) pays page faults each step that others do not. Benchmarks report times
# with these thresholds raised (fair to E2E) beside, or instead of, the default allocator.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "4000000000", "MALLOC_MMAP_THRESHOLD_": "33554432"}


def system_busy_s() -> Optional[float]:
    """CPU seconds every process on the machine has used (Linux /proc/stat), or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class Stopwatch:
    """Times the block it wraps: ``wall_s``, ``cpu_s`` (this process) and ``others_s`` (CPU
    seconds used by the rest of the machine meanwhile, None where unknown).

    Args:
        device: the device the timed work runs on (a CUDA device is synchronised).
    """

    def __init__(self, device: Any = None) -> None:
        self.cuda = torch.device(device).type == "cuda" if device is not None else False
        self.wall_s = self.cpu_s = 0.0
        self.others_s: Optional[float] = None

    def __enter__(self) -> "Stopwatch":
        if self.cuda:
            torch.cuda.synchronize()
        self._start = (time.perf_counter(), time.process_time(), system_busy_s())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        wall0, cpu0, busy0 = self._start
        self.wall_s, self.cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
        busy = system_busy_s()
        self.others_s = None if busy is None or busy0 is None else max(0.0, busy - busy0 - self.cpu_s)
