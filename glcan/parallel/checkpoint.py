"""Pipeline checkpoints: per-worker shards, one ordinary Lightning checkpoint per epoch.

At the end of every epoch each worker writes a *shard* (its blocks' and heads' state, their
optimizer and scheduler states, its statistics) to ``checkpoints/pipeline/`` *before* it
passes the end-of-epoch marker on; so when the last worker gets the marker, every shard of that
epoch is on disk, and it assembles them into ``checkpoints/epochNNN.ckpt`` and ``last.ckpt``:
the full GLCanModule ``state_dict``, ``hyper_parameters`` and the ``glcan`` description that
``GLCanModule.on_load_checkpoint`` checks, loadable by ``train.py test --ckpt_path`` or
``GLCanModule.load_from_checkpoint``. Every file is written to a temporary name and renamed,
so a checkpoint that exists is complete, and a run that dies keeps its last complete epoch.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from glcan.lit.checks import describe

SHARDS = "shards"


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
    return atomic_save(shard, shard_path(run_dir, epoch, rank))


def load_shards(run_dir: str | Path, epoch: int, workers: int) -> list[dict[str, Any]]:
    return [torch.load(shard_path(run_dir, epoch, r), map_location="cpu", weights_only=False) for r in range(workers)]


def assemble(run_dir: str | Path, epoch: int, workers: int, model: Any, datamodule: Any) -> tuple[Path, list[dict]]:
    """Merge the shards of ``epoch`` (completed epochs) into ``epochNNN.ckpt`` and ``last.ckpt``.

    ``model`` only supplies the structure, hparams and anything outside the blocks; it is not
    changed. Returns the checkpoint path and the shards (their ``stats`` feed the summary).
    """
    shards = load_shards(run_dir, epoch, workers)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    k_total = model.net.num_blocks
    owned = sorted(k for s in shards for k in s["blocks"])
    if owned != list(range(k_total)):
        raise RuntimeError(f"the shards of epoch {epoch} cover blocks {owned}, expected 0..{k_total - 1}")
    optimizer_states: list[Any] = [None] * k_total
    schedulers: list[Any] = [None] * k_total
    for s in shards:
        state.update(s["state_dict"])
        for k, v in s["optimizer_states"].items():
            optimizer_states[k] = v
        for k, v in s["lr_schedulers"].items():
            schedulers[k] = v
    checkpoint: dict[str, Any] = {
        "epoch": epoch - 1,  # the index of the last completed epoch, as ModelCheckpoint saves it
        "global_step": max(s["global_step"] for s in shards),
        "pytorch-lightning_version": L.__version__,
        "state_dict": state,
        "optimizer_states": optimizer_states,
        "lr_schedulers": [s for s in schedulers if s is not None],
        "glcan": describe(model),
        "glcan_pipeline": {"workers": workers, "groups": [s["blocks"] for s in shards]},
    }
    for obj in (model, datamodule):  # their CHECKPOINT_HYPER_PARAMS_* names differ
        if obj is not None and obj.hparams:
            if hasattr(obj, "_hparams_name"):
                checkpoint[obj.CHECKPOINT_HYPER_PARAMS_NAME] = obj._hparams_name
            checkpoint[obj.CHECKPOINT_HYPER_PARAMS_KEY] = init_hparams(obj)
    ckpt_dir = Path(run_dir) / "checkpoints"
    path = atomic_save(checkpoint, ckpt_dir / f"epoch{epoch - 1:03d}.ckpt")
    atomic_save(checkpoint, ckpt_dir / "last.ckpt")
    for old in ckpt_dir.glob("epoch*.ckpt"):  # keep the newest, as ModelCheckpoint(save_top_k=1)
        if old != path:
            old.unlink(missing_ok=True)
    for old in (ckpt_dir / SHARDS).glob("after*.worker*.pt"):
        if int(old.name[5:8]) < epoch:
            old.unlink(missing_ok=True)
    return path, shards


def init_hparams(obj: Any) -> dict[str, Any]:
    """The hparams that are ``__init__`` arguments (plus LightningCLI's ``_instantiator``).

    GLCanModule also records the derived ``arch``; ``train.py test --ckpt_path`` feeds the
    checkpoint's hyper_parameters back to the parser, which rejects a key that is no argument.
    """
    params = inspect.signature(type(obj).__init__).parameters
    out = {k: v for k, v in obj.hparams.items() if k in params or k == "_instantiator"}
    spec = getattr(obj, "_backbone_spec", None)
    if isinstance(spec, str):  # a registry name rebuilds the model (GLCanModule leaves it out)
        out["backbone"] = spec
    return out


def last_complete(run_dir: str | Path) -> Optional[Path]:
    """The last complete checkpoint of a run, if any."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.exists() else None


@torch.no_grad()
def evaluate(model: Any, loader: Any, device: torch.device) -> dict[str, Optional[float]]:
    """Test metrics as GLCanModule logs them: every head's top-1, the last head's loss and top-5."""
    model.eval()
    k_total = model.net.num_blocks
    correct, total, loss_sum, top5 = [0] * k_total, 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model.net.all_logits(x)
        for k, lg in enumerate(logits):
            correct[k] += int((lg.argmax(1) == y).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits[-1].float(), y, reduction="sum"))
        if logits[-1].shape[1] > 10:
            top5 += int((logits[-1].topk(5, dim=1).indices == y[:, None]).any(1).sum())
        total += int(y.shape[0])
    out: dict[str, Optional[float]] = {f"test/block{k}/acc": c / max(total, 1) for k, c in enumerate(correct)}
    out["test/acc"] = correct[-1] / max(total, 1)
    out["test/loss"] = loss_sum / max(total, 1)
    out["test/acc_top5"] = top5 / max(total, 1) if model.hparams.num_classes > 10 else None
    return out
