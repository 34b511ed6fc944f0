"""Per-block metric objects (torchmetrics), one set per stage so states never mix."""

from __future__ import annotations

from torch import nn
from torchmetrics.classification import MulticlassAccuracy


class BlockMetrics(nn.Module):
    """Top-1 accuracy of every head for train/val/test, and the last head's top-5 when there are
    more than 10 classes."""

    def __init__(self, num_blocks: int, num_classes: int) -> None:
        super().__init__()
        def accs() -> nn.ModuleList:
            return nn.ModuleList(MulticlassAccuracy(num_classes) for _ in range(num_blocks))
        self.acc = nn.ModuleDict({stage: accs() for stage in ("train", "val", "test")})
        self.top5 = nn.ModuleDict(
            {stage: MulticlassAccuracy(num_classes, top_k=5) for stage in ("val", "test")} if num_classes > 10 else {}
        )
