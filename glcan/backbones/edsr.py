"""EDSR-style super-resolution networks (Lim et al., 2017) as a `Backbone` of units.

Units, in order (what a split cuts between):

* the **head conv**: 3x3 conv, 3 -> F channels;
* **N residual blocks**: conv3x3 - ReLU - conv3x3, the result multiplied by ``res_scale`` and
  added to the block's input (no BatchNorm, as in EDSR);
* the **body conv**: 3x3 conv, F -> F.

The backbone's ``classifier`` is EDSR's **tail**: the pixel-shuffle upsampler (one conv to
``4F`` and a x2 shuffle per factor 2, or one conv to ``9F`` and a x3 shuffle) and a 3x3 conv
F -> 3. Everything before the tail runs at the low resolution.

One change from EDSR: EDSR adds the head conv's output to the body's (a skip across the whole
body). Under local learning that skip would cross every block boundary, so here the image-level
residual takes its place: the tail predicts what bicubic upsampling of the input misses, and the
task's last head adds the bicubic image (``glcan.heads.sr.SRTailHead``; so does every other SR
head). No mean shift either: inputs are RGB in [0, 1].

Sizes (``register_backbone``; for super-resolution ``num_classes`` is the output channels, 3):

* ``edsr_small``: F=32, N=8, res_scale 1 (about 0.2 M parameters at x2): the CPU default;
* ``edsr_baseline``: F=64, N=16, res_scale 1 (about 1.37 M at x2): EDSR's baseline, for a GPU;
* ``edsr``: F=256, N=32, res_scale 0.1 (about 40 M at x2): the full EDSR.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import register_backbone

SIZES: dict[str, tuple[int, int, float]] = {  # name -> (features F, residual blocks N, res_scale)
    "edsr_small": (32, 8, 1.0),
    "edsr_baseline": (64, 16, 1.0),
    "edsr": (256, 32, 0.1),
}


class ResBlock(nn.Module):
    """EDSR's residual block: ``x + res_scale * conv(relu(conv(x)))``, no normalisation."""

    def __init__(self, features: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # acts on conv1's fresh output, never on the block input
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        if self.res_scale != 1.0:
            out = out * self.res_scale
        return x + out  # out-of-place: x may be a detached block input another head reads

    def extra_repr(self) -> str:
        return f"res_scale={self.res_scale}"


def tail(features: int, out_channels: int, scale: int) -> nn.Sequential:
    """EDSR's upsampler (x2 stages for 2 and 4, one x3 stage for 3) and the last conv to ``out_channels``."""
    layers: list[nn.Module] = []
    if scale in (2, 4):
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(features, 4 * features, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(features, 9 * features, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"EDSR upsamples by 2, 3 or 4, got scale {scale!r}")
    return nn.Sequential(*layers, nn.Conv2d(features, out_channels, 3, padding=1))


def edsr(num_classes: int, in_channels: int = 3, scale: int = 2, features: int = 64, num_res_blocks: int = 16,
         res_scale: float = 1.0, name: str = "edsr_baseline") -> Backbone:
    """An EDSR-style network as units (head conv, residual blocks, body conv) and its tail.

    Args:
        num_classes: output channels (3 for RGB).
        in_channels: input channels.
        scale: the upscaling factor: 2, 3 or 4.
        features: F, the channels of every unit.
        num_res_blocks: N.
        res_scale: each residual branch is multiplied by this before the skip.
        name: the name summaries use.
    """
    units: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1)]
    units += [ResBlock(features, res_scale) for _ in range(num_res_blocks)]
    units.append(nn.Conv2d(features, features, 3, padding=1))
    return Backbone(units, tail(features, num_classes, scale), name=name)


def _register(name: str) -> None:
    features, blocks, res_scale = SIZES[name]

    @register_backbone(name, task="super_resolution")
    def factory(num_classes: int, in_channels: int, small_input: bool | None, scale: int = 2) -> Backbone:
        return edsr(num_classes, in_channels, scale, features, blocks, res_scale, name=name)


for _name in SIZES:
    _register(_name)
