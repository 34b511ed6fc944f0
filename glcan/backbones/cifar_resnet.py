"""The CIFAR ResNets of He et al. (2016, section 4.2): resnet20/32/44/56/110.

These are the standard networks of the local-learning literature (DGL, InfoPro, ...), so the
layout follows the paper exactly: a 3x3 stem to 16 channels, then three stages of ``n``
basic blocks with 16, 32 and 64 channels (stride 2 entering stages 2 and 3), global average
pooling and one linear layer: 6n + 2 weighted layers.

Shortcut: when a block changes shape we use **option B**, a 1x1 strided convolution plus
batch norm (the common PyTorch choice), instead of the paper's parameter-free option A
(strided identity with zero-padded channels). It adds two projections, about 2.8k
parameters, and is easier to reason about: every shortcut is an ordinary module.

Units are the stem and then every basic block on its own, so a split into K blocks may cut
between any two residual blocks (resnet110 has 1 + 54 = 55 units).

In-place ReLUs save activation memory, which glcan measures, so blocks use them wherever
they act on a tensor the block created itself. A block never modifies its input: under local
learning a unit's input is often a detached tensor that is also fed to another head.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import register_backbone

#: Blocks per stage for each depth (depth = 6n + 2).
CIFAR_RESNET_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution (2 halves the resolution).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)  # acts on bn1's output, never on the block input
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)  # acts on the residual sum, a fresh tensor
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)  # out-of-place: the shortcut may be x itself
        return self.relu2(out)


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions, unit-weight zero-bias batch norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(depth: int, num_classes: int, in_channels: int = 3, small_input: bool | None = None) -> Backbone:
    """Build a CIFAR ResNet of the given depth as a `Backbone`.

    Args:
        depth: 20, 32, 44, 56 or 110.
        num_classes: outputs of the final linear layer.
        in_channels: channels of the input images.
        small_input: accepted for a uniform factory signature and ignored: these networks
            are designed for 32x32 inputs already.

    Returns:
        A backbone with units ``[stem, block_1, ..., block_3n]``.

    Raises:
        ValueError: if ``depth`` is not one of the supported depths.
    """
    del small_input
    if depth not in CIFAR_RESNET_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(CIFAR_RESNET_DEPTHS)}, got {depth}")
    n = CIFAR_RESNET_DEPTHS[depth]
    stem = nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(inplace=True),
    )
    units: list[nn.Module] = [stem]
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            units.append(CifarBasicBlock(in_planes, planes, stride))
            in_planes = planes
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))
    backbone = Backbone(units, classifier, name=f"resnet{depth}")
    _init_weights(backbone)
    return backbone


for _depth in CIFAR_RESNET_DEPTHS:
    register_backbone(f"resnet{_depth}")(partial(cifar_resnet, _depth))
del _depth
