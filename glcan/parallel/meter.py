"""A pipeline worker's peak memory: its own blocks, heads, optimizer state and messages.

On CUDA each worker has its device to itself, so ``torch.cuda.max_memory_allocated`` over the
run is its peak. On CPU the exact tensor-storage tracker (glcan.memory.tracker) watches a few
steady-state steps of this worker's blocks only, counting as input the batch or the received
activation and the activations still held for sends in flight.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Optional

import torch

from glcan.core.network import SplitNetwork
from glcan.memory.meter import CPU_METHOD, CUDA_METHOD
from glcan.memory.tracker import MemoryTracker, watch_network

MEASURED_STEPS = (1, 2)  # step 0 creates the optimizer state; these steps are slower (kept out of throughput)


class WorkerMeter:
    def __init__(self, net: Any, blocks: list[int], optimizers: list, device: torch.device) -> None:
        self.blocks, self.device = blocks, device
        self.sub = SplitNetwork([net.blocks[k] for k in blocks], [net.heads[k] for k in blocks])
        self.optimizers = [optimizers[k] for k in blocks]
        self.peak: Optional[int] = None
        self.block_peaks: dict[int, int] = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    @contextmanager
    def measure(self, step: int, held: list[torch.Tensor]) -> Iterator[None]:
        """Around one training step: track it if it is one of the measured CPU steps."""
        if self.device.type != "cpu" or step not in MEASURED_STEPS:
            yield
            return
        tracker = MemoryTracker()
        with ExitStack() as stack:
            stack.enter_context(tracker)
            stack.enter_context(watch_network(tracker, self.sub, self.optimizers))
            tracker.register(held, "input")
            tracker.reset_peak()
            yield
        self.peak = max(self.peak or 0, int(tracker.peak))
        for phase, v in tracker.phase_peaks.items():
            if phase is not None:
                k = self.blocks[phase]
                self.block_peaks[k] = max(self.block_peaks.get(k, 0), int(v))

    def result(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            peak, method = int(torch.cuda.max_memory_allocated(self.device)), CUDA_METHOD
        else:
            peak, method = self.peak, CPU_METHOD if self.peak is not None else None
        return {"peak_memory_bytes": peak, "memory_method": method, "memory_block_peaks": self.block_peaks}
