"""The interface every auxiliary head follows.

A head turns the feature map that its block produced into class logits, and defines the
block's local objective. Most heads are trained with cross-entropy alone; InfoPro's also
reconstructs the input image, which is why `loss` receives the network input `x`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AuxHead(nn.Module):
    """Base class: subclasses implement `forward(h) -> logits`; `loss` may be overridden."""

    def loss(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The local objective of the block that produced `h`.

        Args:
            h: the block's output feature map, N x C x H x W.
            y: integer class labels, N.
            x: the network input (only heads that reconstruct it use it).

        Returns:
            (loss, logits), the loss a scalar with a graph, the logits N x num_classes.
        """
        logits = self(h)
        return F.cross_entropy(logits, y), logits


class ModuleHead(AuxHead):
    """Wraps any module that maps features to logits (a backbone's own classifier) as a head."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h)
