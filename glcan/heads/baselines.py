"""The published auxiliary heads GLCAN is compared against: greedy (linear), DGL, InfoPro.

They span the trade-off local learning lives on: the linear head is nearly free but makes
every block greedily linearly separable, which hurts the network as a whole at large K;
DGL adds a small non-linear network at low resolution; InfoPro adds a stronger classifier
and a decoder that keeps the block from discarding information about its input, at the
price of work at full image resolution.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from glcan.heads.base import AuxHead
from glcan.heads.registry import register_head


def _default_width(channels: int) -> int:
    """Head width when none is given: the block's channels, but never fewer than 32."""
    return max(channels, 32)


@register_head("linear")
class LinearHead(AuxHead):
    """Greedy layer-wise learning's head: global average pooling and one linear layer.

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: number of classes.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_shape[0], num_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


@register_head("dgl")
class DGLHead(AuxHead):
    """DGL's auxiliary network (Belilovsky et al., 2020).

    As in DGL's code: average-pool the map to ``ceil(H / reduce)`` per side (reduce=4 cuts
    the positions 16-fold, so the convs below are cheap), ``num_convs`` 1x1 conv + BN + ReLU
    layers of width ``w``, average-pool to 2x2, then an MLP ``Linear(4w -> hidden), ReLU,
    Linear(hidden -> classes)``. DGL's MLP also has a BatchNorm1d after its hidden layer;
    we leave it out so the head works at any batch size (BatchNorm1d fails at batch 1).

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: number of classes.
        width: conv width w; default ``max(C, 32)`` (DGL uses the block's own width; the
            floor of 32 keeps narrow early blocks from getting a starved head).
        num_convs: number of 1x1 conv layers (DGL's ``n_lin``), at least 0.
        hidden: hidden units of the MLP; default ``4 * w``, DGL's choice.
        reduce: spatial reduction factor of the first pooling.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width: Optional[int] = None,
        num_convs: int = 2,
        hidden: Optional[int] = None,
        reduce: int = 4,
    ) -> None:
        super().__init__()
        c, h, _ = in_shape
        if num_convs < 0 or reduce < 1:
            raise ValueError(f"dgl head needs num_convs >= 0 and reduce >= 1, got {num_convs}, {reduce}")
        w = width or _default_width(c)
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(math.ceil(h / reduce))]
        for i in range(num_convs):
            layers += [nn.Conv2d(c if i == 0 else w, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        feat = w if num_convs else c
        hid = hidden or 4 * feat
        layers += [
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * feat, hid), nn.ReLU(inplace=True), nn.Linear(hid, num_classes),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


@register_head("infopro")
class InfoProHead(AuxHead):
    """InfoPro's two heads (Wang et al., ICLR 2021): a classifier and an image decoder.

    Classifier (InfoPro's "1c2f"): conv3x3 + BN + ReLU, global average pooling, FC 128, ReLU,
    FC. For CIFAR, InfoPro halves the resolution and doubles the width on 16- and 32-channel
    maps and keeps 64@8x8 as it is; we generalise that rule as: stride 2 and 2C channels when
    the map is larger than 8x8, else stride 1 and C channels.

    Decoder: bilinear upsampling to the image size, conv3x3 -> 12, BN, ReLU, conv3x3 -> image
    channels. The loss is ``lam * mse(decoder(h), x) + (1 - lam) * cross_entropy``.

    Deviations, on purpose: InfoPro ends the decoder with a sigmoid and uses BCE against the
    *de-normalised* image; the head does not know the dataset's mean and std, so we regress
    the normalised input ``x`` with MSE and no sigmoid. InfoPro also interpolates the loss
    weights from the first block to the last (and trains the last block on the task loss
    alone); here ``lam`` is one constant, set per run (``lam=0`` for a pure task loss).
    With ``lam == 0`` the decoder is not run at all.

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: number of classes.
        image_shape: the network input's shape (C, H, W), the decoder's target.
        lam: weight of the reconstruction term, in [0, 1].
        feature_dim: hidden units of the classifier's MLP (InfoPro: 128).
        decoder_width: channels of the decoder's hidden conv (InfoPro: 12).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        image_shape: tuple[int, int, int],
        lam: float = 0.5,
        feature_dim: int = 128,
        decoder_width: int = 12,
    ) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"infopro head needs 0 <= lam <= 1, got {lam}")
        c, h, w = in_shape
        self.lam = float(lam)
        self.image_shape = tuple(int(s) for s in image_shape)
        downsample = max(h, w) > 8
        cw = 2 * c if downsample else c
        self.classifier = nn.Sequential(
            nn.Conv2d(c, cw, 3, stride=2 if downsample else 1, padding=1, bias=False),
            nn.BatchNorm2d(cw), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(cw, feature_dim), nn.ReLU(inplace=True), nn.Linear(feature_dim, num_classes),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(c, decoder_width, 3, padding=1), nn.BatchNorm2d(decoder_width), nn.ReLU(inplace=True),
            nn.Conv2d(decoder_width, self.image_shape[0], 3, padding=1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h)

    def reconstruct(self, h: torch.Tensor) -> torch.Tensor:
        """The decoder's estimate of the (normalised) input image, N x image_shape."""
        up = F.interpolate(h, size=self.image_shape[1:], mode="bilinear", align_corners=True)
        return self.decoder(up)

    def loss(self, h: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``lam * mse(reconstruct(h), x) + (1 - lam) * cross_entropy(logits, y)``.

        Args:
            h: the block's output, N x C x H x W.
            y: integer labels, N.
            x: the network input, N x image_shape, which the decoder reconstructs.

        Returns:
            (loss, logits).
        """
        logits = self(h)
        ce = F.cross_entropy(logits, y)
        if self.lam == 0.0:
            return ce, logits
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"infopro head reconstructs images of shape {self.image_shape}, got {tuple(x.shape[1:])}")
        rec = F.mse_loss(self.reconstruct(h), x)
        return self.lam * rec + (1.0 - self.lam) * ce, logits
