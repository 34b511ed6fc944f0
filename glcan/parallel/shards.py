"""Pipeline checkpoints: per-worker shards, one ordinary Lightning checkpoint per epoch.

At the end of every epoch each worker writes a *shard* (its blocks' and heads' state, their
optimizer and scheduler states, its statistics) to ``checkpoints/shards/`` *before* it passes
the end-of-epoch marker on; so when the last worker gets the marker, every shard of that epoch
is on disk, and it merges them into the model and saves ``checkpoints/epochNNN.ckpt`` and
``last.ckpt`` with Lightning's own ``Trainer.save_checkpoint`` (the format, the hyperparameters
and glcan's checkpoint identity are Lightning's and GLCanModule's, as for a one-process run).
Every file is written atomically, so a checkpoint that exists is complete, and a run that dies
keeps its last complete epoch.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig

from glcan.io import save_torch
from glcan.lit.optim import build_scheduler, schedule_length

SHARDS = "shards"


def shard_path(run_dir: str | Path, epoch: int, rank: int) -> Path:
    """Worker ``rank``'s shard after ``epoch`` completed epochs."""
    return Path(run_dir) / "checkpoints" / SHARDS / f"after{epoch:03d}.worker{rank}.pt"


def block_state(model: Any, blocks: list[int]) -> dict[str, torch.Tensor]:
    """The entries of ``model.state_dict()`` that belong to these blocks and their heads."""
    prefixes = tuple(f"net.{part}.{k}." for k in blocks for part in ("blocks", "heads"))
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k.startswith(prefixes)}


def save_shard(run_dir: str | Path, epoch: int, rank: int, model: Any, blocks: list[int], optimizers: list,
               schedulers: dict[int, Any], global_step: int, stats: dict[str, Any]) -> Path:
    shard = {
        "rank": rank, "blocks": blocks, "epoch": epoch, "global_step": global_step,
        "state_dict": block_state(model, blocks),
        "optimizer_states": {k: optimizers[k].state_dict() for k in blocks},
        "lr_schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "stats": stats,
    }
    return save_torch(shard, shard_path(run_dir, epoch, rank))


def load_shards(run_dir: str | Path, epoch: int, workers: int) -> list[dict[str, Any]]:
    return [torch.load(shard_path(run_dir, epoch, r), map_location="cpu", weights_only=False) for r in range(workers)]


def assemble(run_dir: str | Path, epoch: int, workers: int, model: Any) -> tuple[Path, list[dict]]:
    """Merge the shards of ``epoch`` (completed epochs) into ``epochNNN.ckpt`` and ``last.ckpt``.

    ``model`` receives the merged state (this is the last worker's copy, whose other blocks are
    stale until now). Returns the checkpoint path and the shards (their ``stats`` feed the summary).
    """
    shards = load_shards(run_dir, epoch, workers)
    k_total = model.net.num_blocks
    owned = sorted(k for s in shards for k in s["blocks"])
    if owned != list(range(k_total)):
        raise RuntimeError(f"the shards of epoch {epoch} cover blocks {owned}, expected 0..{k_total - 1}")
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    for s in shards:
        state.update(s["state_dict"])
    model.cpu().load_state_dict(state)
    optimizers = model.build_optimizers()
    # Schedulers first: building one sets its optimizer's learning rate to the schedule's start.
    schedulers = [build_scheduler(model.scheduler_spec, optimizers[k], schedule_length(s["lr_schedulers"][k]))
                  if model.scheduler_spec is not None and k in s["lr_schedulers"] else None
                  for s in shards for k in s["blocks"]]
    for s in shards:
        for k, v in s["optimizer_states"].items():
            optimizers[k].load_state_dict(v)
        for k, v in s["lr_schedulers"].items():
            schedulers[k].load_state_dict(v)
    ckpt_dir = Path(run_dir) / "checkpoints"
    path = ckpt_dir / f"epoch{epoch - 1:03d}.ckpt"
    record = {"glcan_pipeline": {"workers": workers, "groups": [s["blocks"] for s in shards]}}
    for target in (path, ckpt_dir / "last.ckpt"):
        save_lightning_checkpoint(model, optimizers, schedulers, epoch - 1, max(s["global_step"] for s in shards),
                                  target, record)
    for old in ckpt_dir.glob("epoch*.ckpt"):  # keep the newest, as ModelCheckpoint(save_top_k=1)
        if old != path:
            old.unlink(missing_ok=True)
    for old in (ckpt_dir / SHARDS).glob("after*.worker*.pt"):
        if int(old.name[5:8]) < epoch:
            old.unlink(missing_ok=True)
    return path, shards


class _Extra(L.Callback):
    """Adds the pipeline's own record to the checkpoint Lightning writes."""

    def __init__(self, extra: dict[str, Any]) -> None:
        self.extra = extra

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint.update(self.extra)

    @property
    def state_key(self) -> str:
        return "glcan_pipeline_record"


def save_lightning_checkpoint(model: Any, optimizers: list, schedulers: list, epoch: int, global_step: int,
                              path: Path, extra: Optional[dict[str, Any]] = None) -> Path:
    """Save ``model`` with its optimizers and schedulers through ``Trainer.save_checkpoint``.

    A one-process run's ModelCheckpoint saves at the end of epoch ``epoch`` with
    ``global_step`` batches trained; the trainer here is placed at the same point, so the file is
    what that run would have written (``epoch``, ``global_step``, optimizer and scheduler lists,
    hyperparameters, ``glcan`` identity).
    """
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[_Extra(extra or {})])
    trainer.strategy.connect(model)
    model.trainer = trainer
    trainer.strategy.optimizers = optimizers
    trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(s, name=f"lr/block{k}")
                                             for k, s in enumerate(schedulers) if s is not None]
    trainer.fit_loop.epoch_progress.current.completed = epoch
    # ModelCheckpoint saves after the epoch is processed and before it counts as completed
    trainer.fit_loop.epoch_progress.total.processed = trainer.fit_loop.epoch_progress.current.processed = epoch + 1
    trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.total.completed = global_step
    trainer.save_checkpoint(path)
    model.trainer = None
    return path


def remove_shards(run_dir: str | Path) -> None:
    """Remove the shards once the run is finished: everything is in the checkpoint."""
    shutil.rmtree(Path(run_dir) / "checkpoints" / SHARDS, ignore_errors=True)


def last_complete(run_dir: str | Path) -> Optional[Path]:
    """The last complete checkpoint of a run, if any."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.exists() else None
