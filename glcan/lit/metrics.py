"""Per-block metrics (torchmetrics), one set per stage so states never mix, and what is logged.

Keys: ``train/loss``, ``train/acc``, ``val/acc``, ``test/acc`` (the last head: the network's
prediction) and, in local mode, ``{stage}/block{k}/acc`` and ``train/block{k}/loss`` for every
block, the layer-wise curve of local learning.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

STAGES = ("train", "val", "test")


class BlockMetrics(nn.Module):
    """Top-1 accuracy of every head for train/val/test, and the last head's top-5 when there are
    more than 10 classes. ``acc(stage)[k]`` is block k's metric.

    ``validate_args=False``: the input checks wait for the device (a sync per block per step);
    the inputs here are the heads' own logits and the loader's labels.
    """

    def __init__(self, num_blocks: int, num_classes: int) -> None:
        super().__init__()
        # ModuleDict keys may not shadow nn.Module methods such as `train`: suffix them.
        self._acc = nn.ModuleDict(
            {f"{s}_acc": nn.ModuleList(MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(num_blocks)) for s in STAGES}
        )
        self._top5 = nn.ModuleDict(
            {f"{s}_top5": MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False) for s in ("val", "test")} if num_classes > 10 else {}
        )

    def acc(self, stage: str) -> nn.ModuleList:
        return self._acc[f"{stage}_acc"]

    def top5(self, stage: str) -> MulticlassAccuracy | None:
        key = f"{stage}_top5"
        return self._top5[key] if key in self._top5 else None

    def log_train(self, module: L.LightningModule, results: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor) -> None:
        """Log every block's (loss, logits) of one training batch; the last block is the network's."""
        local, last = len(results) > 1 or module.is_local, len(results) - 1
        for k, (loss, logits) in enumerate(results):
            acc = self.acc("train")[k]
            acc(logits, y)
            if local:
                module.log(f"train/block{k}/loss", loss, on_step=True, on_epoch=True)
                module.log(f"train/block{k}/acc", acc, on_step=False, on_epoch=True)
            if k == last:
                module.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
                module.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True)

    def log_eval(self, module: L.LightningModule, stage: str, all_logits: list[torch.Tensor], y: torch.Tensor) -> None:
        """Log every head's accuracy on one validation/test batch."""
        local, last = len(all_logits) > 1 or module.is_local, len(all_logits) - 1
        for k, logits in enumerate(all_logits):
            acc = self.acc(stage)[k]
            acc(logits, y)
            if local:
                module.log(f"{stage}/block{k}/acc", acc)
        module.log(f"{stage}/loss", F.cross_entropy(all_logits[-1], y), prog_bar=stage == "val")
        module.log(f"{stage}/acc", self.acc(stage)[last], prog_bar=stage == "val")
        top5 = self.top5(stage)
        if top5 is not None:
            top5(all_logits[-1], y)
            module.log(f"{stage}/acc_top5", top5)
