"""Auxiliary layers shaped like the network's later layers (AugLocal, Ma et al., ICLR 2024).

A greedy block learns what its own head can read. AugLocal gives the head of layer l a few
freshly initialised residual units with the shapes of layers sampled uniformly from those
after it (indices ``round(l + (n - l - 1) / d * i)``, i = 1..d, stride 2 where the resolution
halves), so the block learns features that layers like the later ones can use. The depth d
shrinks linearly for deeper blocks (``pyramid``: the last block's depth is ``d * pyramid``).

Here the stack is a prefix of a head (the GLCAN head's ``later`` option): it maps the block's
output to the sampled later shape, and the head reads that. The units are plain residual
units (two 3x3 conv-BN layers and a 1x1 projection where the shape changes), whatever the
backbone's own are: only the later layers' shapes are copied, not their weights.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class ResidualUnit(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (a strided 1x1 conv-BN where the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)  # on the sum, a fresh tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def later_depth(depth: int, pyramid: Optional[float], block_index: int, num_blocks: int) -> int:
    """The stack's depth at block ``block_index`` of K: ``depth``, shrinking linearly to
    ``depth * pyramid`` at the last auxiliary block (K-2); at least 1 where ``depth`` >= 1."""
    if depth < 1:
        return 0
    if pyramid is None or num_blocks < 3:
        return depth
    fraction = block_index / (num_blocks - 2)
    return max(1, int(round(depth * (1 - (1 - pyramid) * fraction))))


def later_layers(in_shape: Sequence[int], later_shapes: Sequence[Sequence[int]], depth: int,
                 width: float = 1.0) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """The stack for a block with output ``in_shape`` and these later units' output shapes.

    Args:
        in_shape: the block's output (C, H, W).
        later_shapes: the output shapes of the units after the block, in order.
        depth: units in the stack (at most the number of later units).
        width: the units' channels as a fraction of the sampled layers' (at least 8).

    Returns:
        (the stack, its output shape).
    """
    n = len(later_shapes)
    depth = min(depth, n)
    c, h, w = (int(s) for s in in_shape)
    units: list[nn.Module] = []
    for i in range(1, depth + 1):
        co, ho, wo = (int(s) for s in later_shapes[int(round((n - 1) / depth * i))])
        co = max(8, int(round(co * width)))
        stride = max(1, h // ho) if ho else 1
        units.append(ResidualUnit(c, co, stride))
        c, h, w = co, (h + stride - 1) // stride, (w + stride - 1) // stride
    return nn.Sequential(*units), (c, h, w)
