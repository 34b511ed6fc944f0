"""Super-resolution heads: each block of an SR network predicts the high-resolution image.

Every SR head maps a block's low-resolution feature map ``h`` (N x C x H x W) and the
network's input ``x`` (the LR image, N x 3 x H x W) to an HR image (N x 3 x sH x sW): a
residual predicted from ``h``, upsampled by pixel shuffle, added to the bicubic upsampling of
``x``. The residual form means a head that has learnt nothing yet predicts bicubic, and a
block only has to learn what bicubic misses. The loss is L1 (EDSR's).

* ``sr_glcan`` -- the GLCAN idea for SR: GCNet's attention-pooled context of the block's
  features (``ContextBlock``, zero-initialised transform) fused into a local 3x3 conv path,
  ``fused = ReLU(conv3x3(h) + transform(context))``, then a light upsampler (one 3x3 conv to
  ``3 s^2`` channels and a pixel shuffle). At initialisation the context adds nothing and the
  head is its local path.
* ``sr_conv`` -- the plain baseline: the same local path and upsampler, no context.
* :class:`SRTailHead` -- not registered: the last block's head, the backbone's own
  pixel-shuffle tail plus the same bicubic residual, so the deployed network is the backbone's.

SR heads say ``needs_input = True``: the network passes them its input (``SplitNetwork``), and
their ``forward`` is ``forward(h, x)``. :func:`bicubic_upscale` is the one bicubic upsampling of
glcan (the heads' residual, the bicubic baseline the metrics report); the LR images are made by
``glcan.data.sr_images.bicubic_downscale``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from glcan.heads.base import AuxHead
from glcan.heads.context_block import ContextBlock, Pooling
from glcan.heads.registry import _lookup, register_head

SCALES = (2, 3, 4)
#: How glcan makes LR images and the bicubic baseline, named beside every PSNR it reports:
#: published SR tables use MATLAB's imresize (a = -0.5), so their bicubic rows differ from ours.
BICUBIC_KERNEL = "torch bicubic (a = -0.75, antialiased downscaling), not MATLAB imresize (a = -0.5)"


def bicubic_upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upsampling by ``scale`` (``F.interpolate``, ``align_corners=False``), clamped to [0, 1]."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


def check_scale(scale: object) -> int:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise ValueError(f"super-resolution scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
    return scale


def upsampler(channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """One 3x3 conv to ``out_channels * scale^2`` channels and a pixel shuffle (ESPCN's upsampler)."""
    return nn.Sequential(nn.Conv2d(channels, out_channels * scale * scale, 3, padding=1), nn.PixelShuffle(scale))


class SRHead(AuxHead):
    """Base class of the SR heads: ``forward(h, x)`` is the HR prediction; L1 loss."""

    needs_input = True
    scale: int

    def residual(self, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.residual(h) + bicubic_upscale(x, self.scale)

    def loss(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L1 between the HR prediction and the HR target ``y``; returns (loss, prediction)."""
        out = self(h, x)
        return F.l1_loss(out, y), out


def is_sr_head(name: str) -> bool:
    """Whether the registered head ``name`` is an SR head (an unknown name raises the registry's error)."""
    factory = _lookup(name)
    return isinstance(factory, type) and issubclass(factory, SRHead)


@register_head("sr_conv")
class ConvSRHead(SRHead):
    """The plain SR head: 3x3 conv C -> w, ReLU, then the upsampler, plus bicubic.

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: output channels (3 for RGB).
        scale: the upscaling factor (set by the task).
        width: channels w of the local path; default ``C``.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, scale: int = 2,
                 width: Optional[int] = None) -> None:
        super().__init__()
        c = in_shape[0]
        self.scale, w = check_scale(scale), width or c
        self.local = nn.Conv2d(c, w, 3, padding=1)
        self.act = nn.ReLU(inplace=True)  # acts on the conv's fresh output
        self.up = upsampler(w, num_classes, self.scale)

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.local(h)))


@register_head("sr_glcan")
class GLCanSRHead(SRHead):
    """The GLCAN SR head: a GC context fused into a local 3x3 conv path, then the upsampler.

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: output channels (3 for RGB).
        scale: the upscaling factor (set by the task).
        width: channels w of the local path; default ``C``.
        ratio: bottleneck ratio of the context transform.
        pooling: context pooling: ``gc`` (attention, default), ``avg`` or ``max``.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, scale: int = 2,
                 width: Optional[int] = None, ratio: float = 0.25, pooling: Pooling = "gc") -> None:
        super().__init__()
        c = in_shape[0]
        self.scale, w = check_scale(scale), width or c
        self.local = nn.Conv2d(c, w, 3, padding=1)
        self.context_block = ContextBlock(c, ratio=ratio, pooling=pooling, fusion="add", out_channels=w)
        self.act = nn.ReLU(inplace=True)  # after the fusion (see glcan.heads.glcan): context gates the local map
        self.up = upsampler(w, num_classes, self.scale)

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        fused = self.context_block.fuse(self.local(h), self.context_block.context(h))
        return self.up(self.act(fused))


class SRTailHead(SRHead):
    """The last block's head: the backbone's own tail (its ``classifier``) plus bicubic.

    Args:
        tail: maps the last unit's features to the HR residual (EDSR: upsampler + conv).
        scale: the upscaling factor.
    """

    def __init__(self, tail: nn.Module, scale: int) -> None:
        super().__init__()
        self.module = tail  # named as ModuleHead names it: the same state-dict keys
        self.scale = check_scale(scale)

    def residual(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h)
