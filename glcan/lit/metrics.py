"""Per-block metric objects (torchmetrics), one set per stage so states never mix."""

from __future__ import annotations

from torch import nn
from torchmetrics.classification import MulticlassAccuracy

STAGES = ("train", "val", "test")


class BlockMetrics(nn.Module):
    """Top-1 accuracy of every head for train/val/test, and the last head's top-5 when there are
    more than 10 classes. ``acc(stage)[k]`` is block k's metric."""

    def __init__(self, num_blocks: int, num_classes: int) -> None:
        super().__init__()
        # ModuleDict keys may not shadow nn.Module methods such as `train`: suffix them.
        self._acc = nn.ModuleDict(
            {f"{s}_acc": nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in range(num_blocks)) for s in STAGES}
        )
        self._top5 = nn.ModuleDict(
            {f"{s}_top5": MulticlassAccuracy(num_classes, top_k=5, average="micro") for s in ("val", "test")} if num_classes > 10 else {}
        )

    def acc(self, stage: str) -> nn.ModuleList:
        return self._acc[f"{stage}_acc"]

    def top5(self, stage: str) -> MulticlassAccuracy | None:
        key = f"{stage}_top5"
        return self._top5[key] if key in self._top5 else None
