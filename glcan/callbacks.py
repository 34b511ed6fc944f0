"""Small callbacks every run carries: the step timer (the memory meter is in glcan.memory)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Optional

import lightning as L
import torch


class StepTimer(L.Callback):
    """Wall-clock time of each training batch (all K block updates), after ``warmup`` batches.

    Batches measured by the MemoryMeter are left out: its tracker slows them down. The
    median is reported (robust to the odd slow batch: a checkpoint, a data-loader hiccup).

    Args:
        warmup: batches to skip at the start of training.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.times_ms: list[float] = []
        self._seen = 0
        self._start: Optional[float] = None

    def _meter_active(self, trainer: L.Trainer) -> bool:
        return any(getattr(cb, "active", False) for cb in trainer.callbacks)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = None
        if self._seen >= self.warmup and not self._meter_active(trainer):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._start is not None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self.times_ms.append((time.perf_counter() - self._start) * 1000.0)
        self._seen += 1

    def result(self) -> dict[str, Any]:
        return {
            "step_time_ms": statistics.median(self.times_ms) if self.times_ms else None,
            "timed_steps": len(self.times_ms),
        }
