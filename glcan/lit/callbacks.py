"""The callbacks every run carries: the memory meter, the step timer, a graceful stop on
Ctrl+C / SIGTERM, and the exact continuation of an epoch that was stopped half-way."""

from __future__ import annotations

import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch.utils._pytree import tree_leaves

from glcan.memory.meter import PeakMeter


class MemoryMeter(L.Callback):
    """Measures training-step peak memory after ``warmup`` batches, over ``steps`` batches.

    Args:
        warmup: batches to skip first (the first creates gradients and optimizer state).
        steps: batches measured; the reported peak is their maximum.
    """

    def __init__(self, warmup: int = 1, steps: int = 2) -> None:
        self.warmup, self.steps = warmup, steps
        self.meter: Optional[PeakMeter] = None
        self.active = False
        self._seen = 0
        self._window: Any = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.warmup <= self._seen < self.warmup + self.steps:
            return
        self.active = True
        self.meter = self.meter or PeakMeter(pl_module.device)
        optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        held = [t for t in tree_leaves(batch) if isinstance(t, torch.Tensor)]
        self._window = self.meter.measure(pl_module.net, optimizers, held)
        self._window.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.active:
            self._window.__exit__(None, None, None)
            self.active, self._window = False, None
            if self._seen + 1 == self.warmup + self.steps:
                self._log(trainer)
        self._seen += 1

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.active:  # a step that failed while measured: leave the tracker's dispatch mode
            self._window.__exit__(type(exception), exception, exception.__traceback__)
            self.active, self._window = False, None

    def _log(self, trainer: L.Trainer) -> None:
        r = self.result()
        metrics = {"memory/peak_bytes": float(r["peak_memory_bytes"] or 0)}
        for k, v in enumerate(r["memory_block_peaks"] or []):
            metrics[f"memory/block{k}/peak_bytes"] = float(v)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def result(self) -> dict[str, Any]:
        """The fields this callback contributes to summary.json."""
        return (self.meter or PeakMeter(torch.device("cpu"))).result()


def system_busy_s() -> Optional[float]:
    """CPU seconds every process on the machine has used (Linux /proc/stat), or None."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


class StepTimer(L.Callback):
    """Time per training batch (all K block updates): wall clock and process CPU time.

    Wall-clock times of runs made minutes apart on a shared machine are not comparable (the
    other processes vary); process CPU time with the thread count recorded is. Beside them the
    timer records how much CPU *other* processes used during the timed steps (``others_cpu``,
    in cores: the machine's busy time minus this process's, over the wall time), so a report
    can say when a time was measured under load. Batches measured by the memory meter are left
    out (its tracker slows them down); medians are reported.

    Args:
        warmup: batches to skip at the start of training.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []
        self._seen = 0
        self._start: Optional[tuple[float, float, Optional[float]]] = None
        self._busy = [0.0, 0.0, 0.0]  # machine busy s, own CPU s, wall s (over the timed steps)
        self.load: list[float] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.load = [os.getloadavg()[0]]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.load.append(os.getloadavg()[0])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._start = None
        if self._seen >= self.warmup and not any(getattr(cb, "active", False) for cb in trainer.callbacks):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            self._start = (time.perf_counter(), time.process_time(), system_busy_s())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._start is not None:
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize()
            wall, cpu, busy = time.perf_counter() - self._start[0], time.process_time() - self._start[1], system_busy_s()
            self.wall_ms.append(wall * 1000.0)
            self.cpu_ms.append(cpu * 1000.0)
            if busy is not None and self._start[2] is not None:
                self._busy = [self._busy[0] + busy - self._start[2], self._busy[1] + cpu, self._busy[2] + wall]
        self._seen += 1

    def result(self) -> dict[str, Any]:
        """The fields this callback contributes to summary.json."""
        busy, own, wall = self._busy
        return {
            "step_time_ms": statistics.median(self.wall_ms) if self.wall_ms else None,
            "step_cpu_ms": statistics.median(self.cpu_ms) if self.cpu_ms else None,
            "timed_steps": len(self.wall_ms),
            "threads": torch.get_num_threads(),
            "others_cpu": round(max(0.0, (busy - own) / wall), 3) if wall > 0 else None,
            "load_before": self.load[0] if self.load else None,
            "load_after": self.load[-1] if len(self.load) > 1 else None,
            "cpu_count": os.cpu_count(),
        }


class RunInterrupted(Exception):
    """Training was stopped by Ctrl+C or SIGTERM after a batch, with a checkpoint saved."""

    def __init__(self, signame: str, checkpoint: Optional[str]) -> None:
        super().__init__(f"{signame}: stopped; checkpoint {checkpoint}")
        self.signame, self.checkpoint = signame, checkpoint


class GracefulStop(L.Callback):
    """Ctrl+C or SIGTERM stops training after the current batch and saves ``last.ckpt`` first.

    The batch is finished so the checkpoint is consistent (every block stepped, the counters
    agree); the run then resumes with ``--ckpt_path last`` exactly where it stopped (see
    :class:`ResumeMidEpoch`). A second Ctrl+C stops at once, without a checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        self.requested = name
        print(f"\n{name}: stopping after this batch and saving a checkpoint (Ctrl+C again stops at once)",
              file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread() and trainer.world_size == 1:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.requested is None:
            return
        path = None
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            path = str(Path(ckpt.dirpath) / f"{ckpt.CHECKPOINT_NAME_LAST}{ckpt.FILE_EXTENSION}")
            trainer.save_checkpoint(path)
        self._restore()
        raise RunInterrupted(self.requested, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()


class ResumeMidEpoch(L.Callback):
    """Continue a half-finished epoch with the batches it had not seen yet.

    The training sampler draws each epoch's order from ``(seed, epoch)`` alone
    (:class:`~glcan.data.sampler.EpochSeededSampler`), so a run resumed from a checkpoint saved
    after batch n of an epoch skips that order's first n batches: the same batches, in the same
    order, as an uninterrupted run.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A checkpoint saved at a batch's end counts that batch as processed; Lightning completes
        # it on restart (RESTARTED_ON_TRAIN_BATCH_END) and continues with the next batch index.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        total = trainer.num_training_batches
        if not 0 < done < total:
            return
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if callable(getattr(sampler, "skip", None)):
            sampler.skip(trainer.current_epoch, done * loader.batch_size)
