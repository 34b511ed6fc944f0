"""The GLCAN head: a global-local auxiliary head built on GCNet's global context block.

A block trained by a local loss only sees what its head can read from its output. A linear
head (global average pooling + FC) reads only channel means, so it rewards a block for
making classes separable *already*, greedily, and discards the spatial layout later blocks
would use. This head reads the map two ways, both cheap:

* **local path** -- average-pool to a small map (at most ``pool_size`` x ``pool_size``),
  1x1 conv C -> w and BN: per-region features that keep coarse spatial detail. Pooling
  *first* makes every later op cost O(pool_size^2), not O(H*W).
* **global path** -- GCNet's attention pooling over the *full-resolution* map gives a
  context vector (what the whole image contains, weighted by where it matters), and its
  bottleneck transform (C -> C*r -> w, last conv zero-initialised) is fused into the local
  map: ``fused = ReLU(BN(conv(pool(h))) + transform(context))``.

Why the ReLU comes *after* the fusion (the local path's own ReLU moved past the add): after
global average pooling, ``GAP(local + t) == GAP(local) + t`` -- an additive fusion followed
by pooling collapses into a bias the classifier could learn anyway. Fusing into the
pre-activation lets the context decide, per sample, which local responses pass the ReLU
(a context-conditioned threshold), so the two paths really interact. At initialisation the
transform is zero and the head is exactly the plain local path.

The classifier sees ``concat[GAP(fused) (w), context (C)]``: the raw context too, so the
attention pooling gets a direct gradient from the start (through the fusion it gets none
until the zero-initialised conv has moved).

Cost. Every op on the full map is O(C*H*W) (the attention conv and the weighted sum), the
rest is O(w^2 * pool_size^2): for CIFAR ResNets the head stays under 10% of one residual
unit's FLOPs at every stage (``bench/heads.py``, ``docs/heads.md``). A 3x3 conv on the small
map was left out: at 64 channels it alone would cost ~12% of a unit.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from glcan.heads.base import AuxHead
from glcan.heads.context_block import ContextBlock, Fusion, Pooling
from glcan.heads.registry import register_head


@register_head("glcan")
class GLCANHead(AuxHead):
    """Global-local auxiliary head: a pooled local path fused with a GCNet context path.

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: number of classes.
        width: channels w of the local path; default ``max(C, 32)``.
        pool_size: side of the local map; the map is pooled to ``min(H, pool_size)`` x
            ``min(W, pool_size)``.
        ratio: bottleneck ratio of the context transform.
        pooling: context pooling: ``"gc"`` (attention, the default), ``"avg"`` or ``"max"``.
        fusion: ``"add"`` (default) or ``"mul"``; see `ContextBlock`.
        hidden: if given, the classifier is Linear -> ReLU -> Linear with this many hidden
            units; otherwise a single Linear.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width: Optional[int] = None,
        pool_size: int = 4,
        ratio: float = 0.25,
        pooling: Pooling = "gc",
        fusion: Fusion = "add",
        hidden: Optional[int] = None,
    ) -> None:
        super().__init__()
        c, h, w_ = in_shape
        if pool_size < 1:
            raise ValueError(f"glcan head needs pool_size >= 1, got {pool_size}")
        w = width or max(c, 32)
        if w < 1 or (hidden is not None and hidden < 1):
            raise ValueError(f"glcan head needs positive width and hidden, got {width}, {hidden}")
        self.in_shape = (c, h, w_)
        self.width = w
        self.pool = nn.AdaptiveAvgPool2d((min(h, pool_size), min(w_, pool_size)))
        self.local = nn.Sequential(nn.Conv2d(c, w, kernel_size=1, bias=False), nn.BatchNorm2d(w))
        self.context_block = ContextBlock(c, ratio=ratio, pooling=pooling, fusion=fusion, out_channels=w)
        self.act = nn.ReLU(inplace=True)  # acts on the fusion's fresh output
        features = w + c
        self.classifier: nn.Module
        if hidden is None:
            self.classifier = nn.Linear(features, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )

    def features(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused local map and the context vector.

        Args:
            h: the block's output, N x C x H x W.

        Returns:
            (fused N x w x p x p, context N x C x 1 x 1).
        """
        ctx = self.context_block.context(h)  # global path, on the full-resolution map
        local = self.local(self.pool(h))  # local path, pre-activation
        fused = self.act(self.context_block.fuse(local, ctx))
        return fused, ctx

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        fused, ctx = self.features(h)
        return self.classifier(torch.cat([fused.mean(dim=(2, 3)), ctx.flatten(1)], dim=1))
