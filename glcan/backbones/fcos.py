"""torchvision's FCOS as glcan units: the body split into units, the neck and head as the classifier.

A detector's neck reads several stages of the body (C3, C4, C5), so a unit's output is not
always one map: a :class:`Tap` unit also keeps its output as a pyramid level, and from there on
the state that flows from unit to unit is the tuple ``(h, C3, ...)``. The local step detaches
the whole tuple at a block boundary (glcan.core.step.detach), so the neck, trained with the last
block, reads the earlier levels without sending a gradient back into earlier blocks.

The units and the neck are the very modules of a torchvision ``FCOS`` (built first, then taken
apart by reference), so the deployed detector is torchvision's model with the trained weights:
:func:`deployable` returns it, loadable and runnable without glcan. Images come in as [0, 1]
tensors of one size; the first unit normalises them as FCOS's own transform does, and the
transform's resize is the identity (``min_size = max_size =`` the image size).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.regnet import BlockParams, RegNet
from torch._subclasses.fake_tensor import is_fake
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import register_backbone

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # FCOS's transform defaults (ImageNet's)


def feature(state: State) -> torch.Tensor:
    """The map a unit's state carries forward (its first element; the rest are kept levels)."""
    return state[0] if isinstance(state, tuple) else state


class Tap(nn.Module):
    """A unit whose output is also a pyramid level: ``h -> (unit(h), *levels, unit(h))``."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, state: State) -> tuple[torch.Tensor, ...]:
        levels = state[1:] if isinstance(state, tuple) else ()
        h = self.unit(feature(state))
        return (h, *levels, h)


class Carry(nn.Module):
    """A unit that passes the kept levels along: ``(h, *levels) -> (unit(h), *levels)``."""

    def __init__(self, unit: nn.Module) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, state: State) -> State:
        h = self.unit(feature(state))
        return (h, *state[1:]) if isinstance(state, tuple) else h


class Stem(nn.Module):
    """FCOS's normalisation, then the body's stem (ResNet: conv, BN, ReLU, max-pool)."""

    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.stem = stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem((x - self.mean) / self.std)


class FCOSNeck(nn.Module):
    """The last block's head: FPN over (C3, C4, C5) plus P6/P7, FCOS's head, its own loss.

    Only the FPN and the head are submodules; the FCOS object that holds the anchor generator,
    the box coder, the loss and the post-processing is kept by reference, so this head's
    parameters (the last block's optimizer) are the neck's and the head's alone.
    """

    needs_input = True  # anchors are laid out on the network input's size

    def __init__(self, detector: FCOS) -> None:
        super().__init__()
        self.fpn, self.head = detector.backbone.fpn, detector.head
        self.__dict__["detector"] = detector  # not a submodule: its body belongs to the blocks

    def features(self, state: State) -> list[torch.Tensor]:
        c5, *earlier = state
        return list(self.fpn(OrderedDict((str(i), c) for i, c in enumerate([*earlier, c5]))).values())

    def outputs(self, state: State, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[int]]:
        feats = self.features(state)
        images = ImageList(x, [tuple(x.shape[-2:])] * x.shape[0])
        return self.head(feats), anchors(self.detector, images, feats), [f.shape[2] * f.shape[3] for f in feats]

    def loss(self, state: State, targets: list[dict[str, torch.Tensor]], x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out, anchors, per_level = self.outputs(state, x)
        return fcos_loss(self.detector, targets, out, anchors, per_level), out["cls_logits"]

    def forward(self, state: State, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections (boxes xyxy in input pixels, scores, labels) per image, as FCOS returns them."""
        out, anchors, per_level = self.outputs(state, x)
        split_out = {k: list(v.split(per_level, dim=1)) for k, v in out.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        return self.detector.postprocess_detections(split_out, split_anchors, [tuple(x.shape[-2:])] * x.shape[0])


def anchors(detector: FCOS, images: ImageList, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """FCOS's anchor points for these maps. The generator keeps its few base anchors as plain
    tensors made when it was built; they are made afresh here (a handful of numbers) so that
    under the memory predictor's FakeTensorMode they are that mode's tensors too."""
    gen = detector.anchor_generator
    gen.cell_anchors = [gen.generate_anchors(s, a) for s, a in zip(gen.sizes, gen.aspect_ratios)]
    return gen(images, feats)


def fcos_loss(detector: FCOS, targets: list[dict[str, torch.Tensor]], out: dict[str, torch.Tensor],
              anchors: list[torch.Tensor], per_level: list[int]) -> torch.Tensor:
    """FCOS's own loss (focal, GIoU, centre-ness), summed.

    Under FakeTensorMode (the memory predictor) FCOS's matching and loss cannot run: which
    anchors are foreground depends on the data (``.item()``, boolean indexing). There the loss is
    its dense upper bound: every anchor counted as foreground of the image's first box, so the
    large tensors (class logits, decoded boxes, regression targets over all anchors) are made and
    saved as in the real loss, and the foreground-only terms at their largest. The predicted
    peak can only be too high by those terms, never too low.
    """
    if not is_fake(out["cls_logits"]):
        return sum(detector.compute_loss(targets, out, anchors, per_level).values())
    cls, reg, ctr = out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]
    points = torch.stack(anchors)
    gt = torch.stack([t["boxes"][:1].expand(a.shape[0], 4) for t, a in zip(targets, anchors)])
    loss_cls = sigmoid_focal_loss(cls, torch.zeros_like(cls), reduction="sum")
    pred = detector.head.box_coder.decode(reg, points)
    loss_reg = _giou_loss(pred, gt)
    encoded = detector.head.box_coder.encode(points, gt)
    lr, tb = encoded[:, :, [0, 2]], encoded[:, :, [1, 3]]
    centre = torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) * (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))
    loss_ctr = nn.functional.binary_cross_entropy_with_logits(ctr.squeeze(2), centre, reduction="sum")
    return loss_cls + loss_reg + loss_ctr


def _giou_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torchvision's GIoU loss (summed) without its masked assignment, which has no fake form."""
    lo, hi = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    union = (a[..., 2:] - a[..., :2]).prod(dim=-1) + (b[..., 2:] - b[..., :2]).prod(dim=-1) - inter
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).prod(dim=-1)
    eps = 1e-7
    return (1 - inter / (union + eps) + (hull - union) / (hull + eps)).sum()


def _resnet(factory: Any) -> nn.Sequential:
    net = factory(weights=None, norm_layer=nn.BatchNorm2d)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return nn.Sequential(OrderedDict(stem=stem, **{f"stage{i}": getattr(net, f"layer{i}") for i in range(1, 5)}))


def _regnet(params: BlockParams) -> nn.Sequential:
    net = RegNet(params, norm_layer=nn.BatchNorm2d)
    return nn.Sequential(OrderedDict(stem=net.stem, **{f"stage{i}": getattr(net.trunk_output, f"block{i}")
                                                        for i in range(1, 5)}))


# A body is torchvision's network as stem + four stages (C2..C5); the FPN reads stages 2-4.
BODIES: dict[str, Callable[[], nn.Sequential]] = {
    "resnet18": lambda: _resnet(resnet18),
    "resnet50": lambda: _resnet(resnet50),
    # RegNetX-200MF (Radosavovic et al. 2020, the design space's 200 MFLOP model; torchvision
    # ships its builder from 400MF up): a tenth of ResNet-18's compute, for CPUs.
    "regnet_x_200mf": lambda: _regnet(BlockParams.from_init_params(depth=13, w_0=24, w_a=36.44, w_m=2.49,
                                                                   group_width=8)),
}


def stage_channels(body: nn.Sequential) -> list[int]:
    """The output channels of stages 2-4 (what the FPN reads): the last convolution's of each
    stage's last block (ResNet's and RegNet's last blocks end in a convolution and a norm)."""
    return [[m for m in getattr(body, f"stage{i}")[-1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            for i in (2, 3, 4)]


def build_fcos(body: str = "resnet18", num_classes: int = 91, image_size: Sequence[int] = (128, 128),
               fpn_channels: int = 256) -> FCOS:
    """torchvision's FCOS: a torchvision body (BatchNorm, trained from scratch: its statistics
    are learnt with the rest), an FPN over C3-C5 with P6/P7, FCOS's head; no resize for images
    of ``image_size``."""
    net = BODIES[body]()
    backbone = BackboneWithFPN(net, {"stage2": "0", "stage3": "1", "stage4": "2"}, stage_channels(net),
                               fpn_channels, extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    side = min(image_size), max(image_size)
    # score_thresh 0.05 (torchvision's default 0.2): mAP integrates over every score, so COCO
    # evaluations keep the low-scoring detections too (detectron2's FCOS uses 0.05).
    return FCOS(backbone, num_classes=num_classes, min_size=side[0], max_size=side[1], image_mean=list(MEAN),
                image_std=list(STD), score_thresh=0.05)


def fcos_backbone(detector: FCOS, name: str = "fcos") -> Backbone:
    """The detector as units (stem, every residual block; C3 and C4 tapped) and its neck as the
    classifier."""
    body = detector.backbone.body
    units: list[nn.Module] = [Stem(body.stem)]
    for stage in ("stage1", "stage2", "stage3", "stage4"):
        blocks = list(getattr(body, stage))
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            units.append(Tap(block) if last and stage in ("stage2", "stage3") else Carry(block))
    backbone = Backbone(units, FCOSNeck(detector), name=name)
    backbone.__dict__["detector"] = detector
    return backbone


def deployable(backbone: Backbone) -> FCOS:
    """The trained detector as torchvision's ``FCOS`` (the same parameter objects)."""
    return backbone.__dict__["detector"]


def _factory(body: str, fpn_channels: int):
    def build(num_classes: int, in_channels: int = 3, small_input: bool | None = None,
              image_size: Optional[tuple[int, int]] = None) -> Backbone:
        if in_channels != 3:
            raise ValueError(f"fcos_{body}: detectors take RGB images (3 channels), got {in_channels}")
        return fcos_backbone(build_fcos(body, num_classes, image_size or (800, 1333), fpn_channels), f"fcos_{body}")
    return build


# FCOS with a RegNetX-200MF body and a 64-channel FPN: the CPU-sized detector of the embedded set
# (0.2 GFLOPs at 224 px against ResNet-18's 1.8); ResNet-50 with torchvision's 256 channels: the
# detector of the COCO/VOC configs.
register_backbone("fcos_regnet_x_200mf", task="detection")(_factory("regnet_x_200mf", 64))
register_backbone("fcos_resnet18", task="detection")(_factory("resnet18", 64))
register_backbone("fcos_resnet50", task="detection")(_factory("resnet50", 256))
