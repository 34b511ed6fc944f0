"""Tasks: what the network learns, as far as the trainer needs to know it.

glcan trains any task given by its data, its backbone's units, its heads (which hold the
loss: ``AuxHead.loss``) and its metrics (``glcan.lit.metrics``). The data module names the
task (``data.task``, linked into ``model.task``: one owner); this module says, per task, what the
parts that never see real data need:

* an **example batch** of the right shapes (the memory predictor, the memory split, timing
  probes): class labels for classification, HR images for super-resolution;
* the **backbone**: which registered networks fit the task, with the options their factories
  take (the SR scale);
* the **heads** it accepts, the options they need, and the head that trains the last block
  through the backbone's own output module (``classifier_head``);
* what the network's output is at **predict** time (class probabilities, an image);
* the **primary metric**: its key in summary.json (``test_<name>``, ``block_<name>``), how a
  report shows it, and whether higher is better.

Three tasks exist: ``classification``, ``detection`` and ``sr_x2`` / ``sr_x3`` / ``sr_x4``
(super-resolution by that factor). For super-resolution ``num_classes`` is the number of output channels (3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from glcan.backbones import Backbone, backbone_task, build_backbone, list_backbones
from glcan.core.build import as_backbone
from glcan.core.network import DeployedNetwork, SplitNetwork
from glcan.heads import AuxHead, ModuleHead
from glcan.heads.dense import DenseHead, ImageLabels, is_detection_head
from glcan.heads.sr import SRTailHead, is_sr_head

TASKS: tuple[str, ...] = ("classification", "sr_x2", "sr_x3", "sr_x4", "detection")


@dataclass(frozen=True)
class Metric:
    """A task's primary metric: ``name`` keys summary.json (``test_<name>``, ``block_<name>``).

    ``factor`` and ``unit`` say how a report shows a value (accuracy 0.93 as ``93.00 %``).
    """

    name: str
    label: str
    factor: float
    unit: str
    higher_is_better: bool = True

    def show(self, value: Optional[float], digits: int = 2) -> str:
        return "n/a" if value is None else f"{self.factor * value:.{digits}f}"


METRICS: dict[str, Metric] = {
    "acc": Metric("acc", "test acc (%)", 100.0, "%"),
    "psnr": Metric("psnr", "test PSNR (dB)", 1.0, "dB"),
    "map50": Metric("map50", "test mAP@.5 (%)", 100.0, "%"),
}


class Task:
    """What the trainer needs to know about a task; :class:`Classification` and
    :class:`SuperResolution` are the two there are."""

    name: str
    kind: str
    metric: Metric
    costly_classifier: bool  # whether the memory split must count the last block's classifier head

    def example_batch(self, batch_size: int, image_shape: Sequence[int], num_classes: int,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Random inputs and targets of a training batch's shapes."""
        raise NotImplementedError

    def backbone(self, spec: Any, num_classes: int, image_shape: Sequence[int], small_input: Optional[bool]) -> Backbone:
        """The network ``model.backbone`` names (a registry name must be one of this task's)."""
        if isinstance(spec, str) and "." not in spec:
            self.check_backbone(spec)
        return as_backbone(spec, num_classes, image_shape, small_input)

    def check_backbone(self, name: str) -> None:
        """Refuse, in one line, a registered backbone made for the other task."""
        if backbone_task(name) != self.kind:
            raise ValueError(f"model.backbone {name!r} is a {backbone_task(name).replace('_', '-')} network but the data "
                             f"is for {self.kind.replace('_', '-')}; choose one of: {', '.join(list_backbones(self.kind))}")

    def head_kwargs(self, head_kwargs: Optional[dict[str, Any]]) -> dict[str, Any]:
        """The options every head of this task is built with (the user's, plus the task's own)."""
        return dict(head_kwargs or {})

    def check_head(self, head: str) -> None:
        """Refuse, in one line, a registered head made for another task (a classification head
        may train a detector's blocks: image-level multi-label, see :meth:`block_head`)."""
        if is_detection_head(head) and self.kind != "detection":
            raise ValueError(f"model.head {head!r} is a detection head but the data is for "
                             f"{self.kind.replace('_', '-')}")
        if is_sr_head(head) != (self.kind == "super_resolution"):
            others = "det_glcan, det_conv, glcan, linear, dgl or infopro" if self.kind == "detection" else \
                "glcan, linear, dgl or infopro"
            made_for, use = ("super-resolution", others) if is_sr_head(head) else ("classification", "sr_glcan or sr_conv")
            raise ValueError(f"model.head {head!r} is a {made_for} head but the data is for "
                             f"{self.kind.replace('_', '-')}; use {use}")

    def classifier_head(self, module: nn.Module) -> AuxHead:
        """The last block's head around the backbone's own output module (its ``classifier``)."""
        raise NotImplementedError

    def block_head(self, head: AuxHead) -> AuxHead:
        """A registered head as it trains a block of this task (here: as it is)."""
        return head

    def deployable(self, net: SplitNetwork) -> nn.Module:
        """The trained network as deployed: the blocks' units, then the last head (a head that
        also reads the input, super-resolution's residual on bicubic, gets it there too)."""
        units = [m for b in net.blocks for m in (b if isinstance(b, nn.Sequential) else [b])]
        if getattr(net.heads[-1], "needs_input", False):
            return DeployedNetwork(units, net.heads[-1])
        return nn.Sequential(*units, net.heads[-1])

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        """What ``predict`` returns for the network's output."""
        raise NotImplementedError


class Classification(Task):
    """Class labels; cross-entropy heads; accuracy."""

    name = kind = "classification"
    metric = METRICS["acc"]
    costly_classifier = False  # global pooling and a linear layer: the memory split takes it as free

    def example_batch(self, batch_size: int, image_shape: Sequence[int], num_classes: int,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch_size, *image_shape, generator=generator)
        return x, torch.randint(0, num_classes, (batch_size,), generator=generator)

    def classifier_head(self, module: nn.Module) -> AuxHead:
        return ModuleHead(module)  # cross-entropy on the classifier's logits

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output.float(), dim=1)  # class probabilities


class SuperResolution(Task):
    """HR images from LR ones (``scale`` x); SR heads (L1, residual on bicubic); PSNR and SSIM."""

    kind = "super_resolution"
    metric = METRICS["psnr"]
    costly_classifier = True  # EDSR's tail works at the high resolution: the memory split counts it

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.name = f"sr_x{scale}"

    def example_batch(self, batch_size: int, image_shape: Sequence[int], num_classes: int,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """LR inputs and HR targets (``num_classes`` channels, ``scale`` times larger), in [0, 1]."""
        c, h, w = image_shape
        x = torch.rand(batch_size, c, h, w, generator=generator)
        return x, torch.rand(batch_size, num_classes, h * self.scale, w * self.scale, generator=generator)

    def backbone(self, spec: Any, num_classes: int, image_shape: Sequence[int], small_input: Optional[bool]) -> Backbone:
        if isinstance(spec, str) and "." not in spec:
            self.check_backbone(spec)
            return build_backbone(spec, num_classes, in_channels=image_shape[0], small_input=small_input, scale=self.scale)
        if isinstance(spec, (nn.Sequential, list, tuple)):
            raise ValueError("model.backbone: super-resolution needs a glcan Backbone(units, tail) whose tail makes the "
                             "HR residual, or a registry name (" + ", ".join(list_backbones(self.kind)) + ")")
        return as_backbone(spec, num_classes, image_shape, small_input)

    def head_kwargs(self, head_kwargs: Optional[dict[str, Any]]) -> dict[str, Any]:
        return {**dict(head_kwargs or {}), "scale": self.scale}

    def classifier_head(self, module: nn.Module) -> AuxHead:
        return SRTailHead(module, self.scale)  # the tail's residual + bicubic, L1

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        return output.float().clamp(0.0, 1.0)  # the HR image


class Detection(Task):
    """Boxes and their classes; the detector's own loss (FCOS's) in every head; mAP.

    Targets are a list of ``{"boxes": K x 4 xyxy pixels, "labels": K}`` per image; the network's
    output is FCOS's detections per image. Labels are 0-based (``num_classes`` of them): FCOS
    scores every class with its own sigmoid and needs no background class.
    """

    name = kind = "detection"
    metric = METRICS["map50"]
    costly_classifier = True  # the FPN and FCOS's head run on every level at full width: the split counts them

    def example_batch(self, batch_size: int, image_shape: Sequence[int], num_classes: int,
                      generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Random images in [0, 1] and 1-3 random boxes of random classes per image."""
        c, h, w = image_shape
        x = torch.rand(batch_size, c, h, w, generator=generator)
        targets = []
        for i in range(batch_size):
            k = 1 + i % 3  # not drawn: the memory predictor builds this batch under FakeTensorMode
            lo = torch.rand(k, 2, generator=generator) * torch.tensor([w / 2, h / 2])
            size = (0.1 + 0.4 * torch.rand(k, 2, generator=generator)) * torch.tensor([w, h])
            targets.append({"boxes": torch.cat([lo, lo + size], dim=1),
                            "labels": torch.randint(0, num_classes, (k,), generator=generator)})
        return x, targets

    def backbone(self, spec: Any, num_classes: int, image_shape: Sequence[int], small_input: Optional[bool]) -> Backbone:
        if isinstance(spec, str) and "." not in spec:
            self.check_backbone(spec)
            return build_backbone(spec, num_classes, in_channels=image_shape[0], image_size=tuple(image_shape[1:]))
        return as_backbone(spec, num_classes, image_shape, small_input)

    def classifier_head(self, module: nn.Module) -> AuxHead:
        return module  # type: ignore[return-value]  # the detector's neck and head hold their own loss

    def block_head(self, head: AuxHead) -> AuxHead:
        """A dense head as it is; a classification head learns the image's classes (ImageLabels)."""
        return head if isinstance(head, DenseHead) else ImageLabels(head)

    def deployable(self, net: SplitNetwork) -> nn.Module:
        """torchvision's ``FCOS`` itself: the blocks and the neck are its modules."""
        return net.heads[-1].detector

    def prediction(self, output: Any) -> Any:
        return output  # FCOS's detections per image


def get_task(name: str) -> Task:
    """The task called ``name`` (one of :data:`TASKS`)."""
    if name == "classification":
        return Classification()
    if name == "detection":
        return Detection()
    if name in TASKS:
        return SuperResolution(int(name.rsplit("x", 1)[1]))
    raise ValueError(f"model.task must be one of {', '.join(TASKS)}, got {name!r}")
