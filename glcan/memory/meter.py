"""The peak memory of real training steps: one meter for every process, pipeline stages included.

On CUDA it reads the caching allocator's own counters (``max_memory_allocated``, and
``max_memory_reserved`` beside it), reset when each block starts so that the block that sets
the peak is known. Elsewhere (CPU: these machines and CI) it runs the exact tensor-level
:class:`~glcan.memory.tracker.MemoryTracker` around the step; the tracker slows the step
down, which is why callers measure only a few steady-state steps.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch

from glcan.core.network import SplitNetwork
from glcan.memory.tracker import CATEGORIES, MemoryTracker, watch_network

CPU_METHOD = "tensor-storage tracker (TorchDispatchMode, exact bytes of live tensors, CPU)"
CUDA_METHOD = "torch.cuda.max_memory_allocated"


class PeakMeter:
    """Accumulates the peak of the training steps it measures.

    Args:
        device: where the steps run.
        blocks: the global index of each block of the networks it will see (a pipeline worker
            measures its own blocks only); default ``0..K-1``.
    """

    def __init__(self, device: torch.device, blocks: Optional[Sequence[int]] = None) -> None:
        self.device, self.blocks = device, list(blocks) if blocks is not None else None
        self.method = CUDA_METHOD if device.type == "cuda" else CPU_METHOD
        self.peak_bytes: Optional[int] = None
        self.reserved_bytes: Optional[int] = None
        self.peak_block: Optional[int] = None
        self.block_peaks: dict[int, int] = {}
        self.parts: dict[str, int] = {}

    def _block(self, phase: Optional[int]) -> Optional[int]:
        if phase is None or self.blocks is None:
            return phase
        return self.blocks[phase]

    def _record_block(self, phase: Optional[int], peak: int) -> None:
        k = self._block(phase)
        if k is not None:
            self.block_peaks[k] = max(self.block_peaks.get(k, 0), int(peak))

    def _record(self, phase: Optional[int], peak: int, parts: Optional[dict[str, int]] = None) -> None:
        self._record_block(phase, peak)
        if self.peak_bytes is None or peak > self.peak_bytes:
            self.peak_bytes, self.peak_block = int(peak), self._block(phase)
            if parts is not None:
                self.parts = {c: int(parts.get(c, 0)) for c in CATEGORIES}

    @contextmanager
    def measure(self, net: SplitNetwork, optimizers: Sequence[torch.optim.Optimizer],
                held: Sequence[torch.Tensor] = ()) -> Iterator[None]:
        """Measure the training step run inside the block.

        Args:
            net: the blocks and heads the step trains (their order gives the phases).
            optimizers: their optimizers, one per block of ``net``.
            held: tensors alive through the step that the network does not own (the batch, a
                received activation, activations queued for sending): counted as input.
        """
        if self.device.type == "cuda":
            with self._measure_cuda(net):
                yield
            return
        tracker = MemoryTracker()
        with ExitStack() as stack:
            stack.enter_context(tracker)
            stack.enter_context(watch_network(tracker, net, optimizers))
            tracker.register(held, "input")
            tracker.reset_peak()
            yield
        for phase, v in tracker.phase_peaks.items():
            self._record_block(phase, v)
        self._record(tracker.peak_phase, tracker.peak, tracker.peak_parts)

    @contextmanager
    def _measure_cuda(self, net: SplitNetwork) -> Iterator[None]:
        phase = [0]

        def close() -> None:
            self._record(phase[0], torch.cuda.max_memory_allocated(self.device))
            self.reserved_bytes = max(self.reserved_bytes or 0, torch.cuda.max_memory_reserved(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

        def start(k: int):  # noqa: ANN202
            def hook(module: Any, args: Any) -> None:
                close()
                phase[0] = k
            return hook

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        handles = [b.register_forward_pre_hook(start(k)) for k, b in enumerate(net.blocks)]
        try:
            yield
            torch.cuda.synchronize(self.device)
            close()
        finally:
            for h in handles:
                h.remove()

    def result(self) -> dict[str, Any]:
        """The fields this meter contributes to summary.json (null when nothing was measured)."""
        measured = self.peak_bytes is not None
        return {
            "peak_memory_bytes": self.peak_bytes,
            "memory_method": self.method if measured else None,
            "memory_reserved_bytes": self.reserved_bytes,
            "memory_peak_block": self.peak_block,
            "memory_block_peaks": [self.block_peaks.get(k, 0) for k in sorted(self.block_peaks)] if self.block_peaks else None,
            "memory_parts": self.parts or None,
        }
