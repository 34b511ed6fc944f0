"""A backbone is an ordered list of indivisible units followed by a classifier.

Everything glcan does with a network goes through this shape: a split into K blocks is a
choice of K-1 unit indices, and chaining every unit then the classifier is exactly the
network's forward pass. A unit is the smallest piece that may sit alone in a block: the
stem, one residual block, one VGG conv stage.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Backbone(nn.Module):
    """Units applied in order, then the classifier.

    Args:
        units: the indivisible pieces, in forward order; each maps a 4-D feature map to the next.
        classifier: maps the last unit's output to class logits (the end-to-end head).
        name: the registry name, kept for summaries and logs.
    """

    def __init__(self, units: Sequence[nn.Module], classifier: nn.Module, name: str = "custom") -> None:
        super().__init__()
        if len(units) == 0:
            raise ValueError(f"backbone {name!r} has no units: give at least one module")
        self.units = nn.ModuleList(units)
        self.classifier = classifier
        self.name = name

    @property
    def num_units(self) -> int:
        return len(self.units)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last unit's output (the classifier's input)."""
        for unit in self.units:
            x = unit(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
