"""Auxiliary heads for detection: dense predictions on one block's map, with the detector's loss.

A block of a detector's body is trained by what the detector itself is trained for: at every
location of the block's map, class scores and box offsets, with FCOS's own loss (focal loss,
GIoU, centre-ness) on that one level. GLCAN's dense head first fuses the map's global context
(GCNet's attention pooling, glcan.heads.context_block) into its local features: where objects
are, and how many, is a whole-image question. ``context=False`` is the same head without it, the
baseline it must beat.

A classification head (``glcan``, ``linear``, ...) can train a detector's block too, for
comparison: :class:`ImageLabels` trains it on which classes the image holds (multi-label, one
sigmoid per class), not where they are; such a block predicts no boxes, so it has no mAP.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList

from glcan.backbones.fcos import State, anchors, fcos_loss, feature
from glcan.heads.base import AuxHead
from glcan.heads.context_block import ContextBlock, Pooling
from glcan.heads.registry import register_head


class _Loss(nn.Module):
    out_channels = 0  # FCOS asks its backbone for this; the loss never runs a backbone


class DenseHead(AuxHead):
    """Per-location class scores and box offsets on a block's map, trained with FCOS's loss.

    Args:
        channels: channels of the block's map.
        num_classes: the detector's classes (torchvision's convention: 0 is background).
        stride: input pixels per map location (the anchor size of this one level).
        width: channels of the head's convs.
        context: fuse GC context into the local features first (GLCAN's dense head).
        pooling: the context's pooling (``gc`` or ``avg``).
        num_convs: 3x3 convs in each of FCOS's two branches (FCOS uses 4; 1 keeps it light).
    """

    needs_input = True

    def __init__(self, channels: int, num_classes: int, stride: int, width: int = 64, context: bool = True,
                 pooling: Pooling = "gc", num_convs: int = 1) -> None:
        super().__init__()
        self.local = nn.Conv2d(channels, width, kernel_size=1)
        self.context = ContextBlock(channels, pooling=pooling, out_channels=width) if context else None
        self.head = FCOSHead(width, 1, num_classes, num_convs=num_convs)
        loss = FCOS(_Loss(), num_classes, head=self.head, anchor_generator=AnchorGenerator(((stride,),), ((1.0,),)))
        self.__dict__["detector"] = loss  # its head is self.head; the rest holds no parameters

    def _outputs(self, state: State, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[int]]:
        h = feature(state)
        f = self.local(h) if self.context is None else self.context(h, self.local(h))
        images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
        return self.head([f]), anchors(self.detector, images, [f]), [f.shape[2] * f.shape[3]]

    def loss(self, state: State, targets: list[dict[str, torch.Tensor]], x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out, anchors, per_level = self._outputs(state, x)
        return fcos_loss(self.detector, targets, out, anchors, per_level), out["cls_logits"]

    def forward(self, state: State, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out, anchors, per_level = self._outputs(state, x)
        return self.detector.postprocess_detections({k: [v] for k, v in out.items()}, [[a] for a in anchors],
                                                    [tuple(x.shape[-2:])] * x.shape[0])


class ImageLabels(AuxHead):
    """A classification head on a detector's block: the classes present in the image, each its
    own sigmoid with binary cross-entropy (image-level multi-label), read from the boxes' labels.
    Its output is the N x classes logits: no boxes."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, state: State) -> torch.Tensor:
        return self.head(feature(state))

    def loss(self, state: State, targets: list[dict[str, torch.Tensor]], x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        logits = self(state)
        present = torch.stack([torch.zeros_like(row).scatter(0, t["labels"], 1.0) for row, t in zip(logits, targets)])
        return F.binary_cross_entropy_with_logits(logits, present), logits


@register_head("det_glcan")
def det_glcan(in_shape: tuple[int, ...], num_classes: int, image_shape: tuple[int, ...], width: int = 64,
              pooling: Pooling = "gc", num_convs: int = 1) -> DenseHead:
    """GLCAN's dense head: GC context fused into the block's local features, then FCOS's head."""
    return DenseHead(in_shape[0], num_classes, image_shape[-1] // in_shape[-1], width, True, pooling, num_convs)


@register_head("det_conv")
def det_conv(in_shape: tuple[int, ...], num_classes: int, image_shape: tuple[int, ...], width: int = 64,
             num_convs: int = 1) -> DenseHead:
    """The same dense head without context: the baseline det_glcan must beat."""
    return DenseHead(in_shape[0], num_classes, image_shape[-1] // in_shape[-1], width, False, "gc", num_convs)


def is_detection_head(name: str) -> bool:
    """Whether head ``name`` is made for detection (``det_*``)."""
    return name.startswith("det_")
