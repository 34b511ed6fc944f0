"""MemoryMeter: the peak memory of real training steps, recorded with every run.

On CUDA it reads the caching allocator's own counters (``max_memory_allocated``, and
``max_memory_reserved`` beside it), reset when each block starts so that the block that sets
the peak is known. Elsewhere (CPU, these machines and CI) it runs the exact tensor-level
:class:`MemoryTracker` over a few steady-state steps; it slows those steps down, which is why
it only measures a few, after a warm-up that creates the optimizer state.
"""

from __future__ import annotations

from typing import Any, Optional

import lightning as L
import torch

from glcan.memory.tracker import CATEGORIES, MemoryTracker, watch_network

CPU_METHOD = "tensor-storage tracker (TorchDispatchMode, exact bytes of live tensors, CPU)"
CUDA_METHOD = "torch.cuda.max_memory_allocated"


class MemoryMeter(L.Callback):
    """Measures training-step peak memory after ``warmup`` batches, over ``steps`` batches.

    Args:
        warmup: batches to skip first (the first creates gradients and optimizer state).
        steps: batches measured; the reported peak is their maximum.
    """

    def __init__(self, warmup: int = 1, steps: int = 2) -> None:
        self.warmup, self.steps = warmup, steps
        self.peak_bytes: Optional[int] = None
        self.reserved_bytes: Optional[int] = None
        self.parts: dict[str, int] = {}
        self.block_peaks: list[int] = []
        self.peak_block: Optional[int] = None
        self.method: Optional[str] = None
        self.active = False
        self._seen = 0
        self._tracker: Optional[MemoryTracker] = None
        self._watch: Any = None
        self._cuda_hooks: list = []
        self._cuda_phase = 0

    def _measuring(self) -> bool:
        return self.warmup <= self._seen < self.warmup + self.steps

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._measuring():
            return
        self.active = True
        net = pl_module.net
        self.block_peaks = self.block_peaks or [0] * net.num_blocks
        if pl_module.device.type == "cuda":
            self.method = CUDA_METHOD
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._cuda_phase = 0
            self._cuda_hooks = [b.register_forward_pre_hook(self._cuda_block_start(k)) for k, b in enumerate(net.blocks)]
            return
        self.method = CPU_METHOD
        self._tracker = MemoryTracker()
        self._tracker.__enter__()
        optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        self._watch = watch_network(self._tracker, net, optimizers)
        self._watch.__enter__()
        self._tracker.register([t for t in _tensors(batch)], "input")
        self._tracker.reset_peak()

    def _cuda_block_start(self, k: int):  # noqa: ANN202
        def hook(module, args):  # noqa: ANN001, ANN202
            self._close_cuda_phase()
            self._cuda_phase = k
        return hook

    def _close_cuda_phase(self) -> None:
        peak = torch.cuda.max_memory_allocated()
        k = self._cuda_phase
        self.block_peaks[k] = max(self.block_peaks[k], peak)
        if self.peak_bytes is None or peak > self.peak_bytes:
            self.peak_bytes, self.peak_block = peak, k
        self.reserved_bytes = max(self.reserved_bytes or 0, torch.cuda.max_memory_reserved())
        torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.active:
            if self._tracker is not None:
                self._watch.__exit__(None, None, None)
                self._tracker.__exit__(None, None, None)
                t = self._tracker
                for k, v in t.phase_peaks.items():
                    if k is not None:
                        self.block_peaks[k] = max(self.block_peaks[k], v)
                if self.peak_bytes is None or t.peak > self.peak_bytes:
                    self.peak_bytes, self.peak_block = int(t.peak), t.peak_phase
                    self.parts = {c: int(t.peak_parts.get(c, 0)) for c in CATEGORIES}
                self._tracker = None
            else:
                torch.cuda.synchronize()
                self._close_cuda_phase()
                for h in self._cuda_hooks:
                    h.remove()
            self.active = False
            if not self._measuring_next():
                self._log(trainer)
        self._seen += 1

    def _measuring_next(self) -> bool:
        return self._seen + 1 < self.warmup + self.steps

    def _log(self, trainer: L.Trainer) -> None:
        metrics = {"memory/peak_bytes": float(self.peak_bytes or 0)}
        for k, v in enumerate(self.block_peaks):
            metrics[f"memory/block{k}/peak_bytes"] = float(v)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def result(self) -> dict[str, Any]:
        """The fields this meter contributes to summary.json."""
        return {
            "peak_memory_bytes": self.peak_bytes,
            "memory_method": self.method,
            "memory_reserved_bytes": self.reserved_bytes,
            "memory_peak_block": self.peak_block,
            "memory_block_peaks": self.block_peaks or None,
            "memory_parts": self.parts or None,
        }


def _tensors(batch: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(batch) if isinstance(t, torch.Tensor)]
