"""The callbacks every run carries (listed in configs/defaults.yaml): the memory meter,
the step timer, and the run's checkpoints with a graceful stop on Ctrl+C / SIGTERM."""

from __future__ import annotations

import os
import signal
import statistics
import sys
import threading
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils._pytree import tree_leaves

from glcan.core.timing import Stopwatch
from glcan.lit.metrics import shared_step
from glcan.memory.meter import PeakMeter


class MemoryMeter(L.Callback):
    """Measures training-step peak memory after ``warmup`` batches, over ``steps`` batches.

    Its measurement is part of the checkpoint, so a run stopped after it and resumed still
    reports it (a resumed segment does not measure again).

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
        self._restored: Optional[dict[str, Any]] = None  # what an earlier segment of a resumed run measured

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self._seen, "measured": self.result()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._seen, self._restored = int(state.get("seen", 0)), state.get("measured")

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
        if self.meter is None and self._restored is not None:
            return dict(self._restored)
        return (self.meter or PeakMeter(torch.device("cpu"))).result()


class StepTimer(L.Callback):
    """Time per training batch (all K block updates): wall clock and process CPU time.

    Wall-clock times of runs made minutes apart on a shared machine are not comparable (the
    other processes vary); process CPU time with the thread count recorded is. Beside them the
    timer records how much CPU *other* processes used during the timed steps (``others_cpu``,
    in cores), so a report can say when a time was measured under load (glcan.core.timing).
    Batches measured by the memory meter are left out (its tracker slows them down); medians
    are reported.

    Args:
        warmup: batches to skip at the start of training.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.wall_ms: list[float] = []
        self.cpu_ms: list[float] = []
        self._seen = 0
        self._watch: Optional[Stopwatch] = None
        self._others = [0.0, 0.0]  # other processes' CPU s, wall s (over the timed steps)
        self.load: list[float] = []

    KEPT = 1000  # the most recent steps a checkpoint carries (a resumed run's medians include them)

    def state_dict(self) -> dict[str, Any]:
        return {"wall_ms": self.wall_ms[-self.KEPT:], "cpu_ms": self.cpu_ms[-self.KEPT:], "others": self._others,
                "load": self.load[:1]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed segment adds its steps to the earlier ones' (and warms up again first)."""
        self.wall_ms, self.cpu_ms = list(state.get("wall_ms", [])), list(state.get("cpu_ms", []))
        self._others, self.load = list(state.get("others", [0.0, 0.0])), list(state.get("load", []))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.load = self.load[:1] or [os.getloadavg()[0]]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.load.append(os.getloadavg()[0])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._watch = None
        if self._seen >= self.warmup and not any(getattr(cb, "active", False) for cb in trainer.callbacks):
            self._watch = Stopwatch(pl_module.device).__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._watch is not None:
            w = self._watch
            w.__exit__()
            self.wall_ms.append(w.wall_s * 1000.0)
            self.cpu_ms.append(w.cpu_s * 1000.0)
            if w.others_s is not None:
                self._others = [self._others[0] + w.others_s, self._others[1] + w.wall_s]
        self._seen += 1

    def result(self) -> dict[str, Any]:
        """The fields this callback contributes to summary.json."""
        others, wall = self._others
        return {
            "step_time_ms": statistics.median(self.wall_ms) if self.wall_ms else None,
            "step_cpu_ms": statistics.median(self.cpu_ms) if self.cpu_ms else None,
            "timed_steps": len(self.wall_ms),
            "threads": torch.get_num_threads(),
            "others_cpu": round(others / wall, 3) if wall > 0 else None,
            "load_before": self.load[0] if self.load else None,
            "load_after": self.load[-1] if len(self.load) > 1 else None,
            "cpu_count": os.cpu_count(),
        }


class RunInterrupted(Exception):
    """Training was stopped by Ctrl+C or SIGTERM after a batch, with a checkpoint saved."""

    def __init__(self, signame: str, checkpoint: Optional[str]) -> None:
        super().__init__(f"{signame}: stopped; checkpoint {checkpoint}")
        self.signame, self.checkpoint = signame, checkpoint


class RunCheckpoint(ModelCheckpoint):
    """A run's checkpoints, and a graceful stop that leaves one behind.

    At every epoch end ``epochNNN.ckpt`` (named by epoch: ``global_step`` counts batches) and
    ``last.ckpt``; the two newest epoch files are kept, so a damaged file always has a
    predecessor to fall back to. Ctrl+C or SIGTERM finishes the current batch (every block
    stepped, the counters consistent), saves ``last.ckpt`` through the same checkpoint logic, and
    stops with :class:`RunInterrupted`; the run resumes exactly there with ``--ckpt_path last``
    (the training loader's position is part of the checkpoint). Under DDP or a pipeline every
    process stops at the first step where they meet (see ``on_train_batch_end``). A second Ctrl+C stops at once,
    without a checkpoint. The run directory is the run's alone (locked), so files are overwritten
    in place, never versioned.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, keep: int = 2, dirpath: Optional[str] = None) -> None:
        """
        Args:
            keep: how many of the newest epoch checkpoints to keep (beside last.ckpt).
            dirpath: where to write them (default: the run directory's checkpoints/).
        """
        super().__init__(dirpath=dirpath, filename="epoch{epoch:03d}", auto_insert_metric_name=False, save_last=True,
                         monitor="step", mode="max", save_top_k=keep, enable_version_counter=False)
        self.requested: Optional[str] = None
        self._previous: dict[int, Any] = {}
        self._rank = 0

    def _handler(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            self._restore()
            raise KeyboardInterrupt
        self.requested = name
        if self._rank == 0:
            print(f"\n{name}: stopping after this batch and saving a checkpoint (Ctrl+C again stops at once)",
                  file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._rank = trainer.global_rank
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.world_size > 1:
            # Several processes stop together or not at all (the checkpoint is a collective): they
            # agree on the steps where a pipeline's stages meet anyway (glcan.lit.metrics.shared_step),
            # so a signal to any one of them stops all of them within log_every_n_steps batches.
            if not shared_step(pl_module, batch_idx):
                return
            if trainer.strategy.reduce_boolean_decision(self.requested is not None, all=False):
                self.requested = self.requested or "a signal to another process"
        if self.requested is None:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._restore()
        raise RunInterrupted(self.requested, self.last_model_path or None)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._restore()
