"""torchvision's Vision Transformer, taken apart into units.

As for torchvision's ResNets, we build torchvision's own ``VisionTransformer`` (never
pretrained) and hand its module objects, not copies, to a `Backbone`, so chaining the units
and the classifier runs exactly what its ``forward`` runs; the tests check the outputs match.

Units: the patch embedding (``conv_proj``, then the class token prepended and the position
embedding added, as ``VisionTransformer.forward`` and ``Encoder.forward`` do), then each
encoder layer. Every unit after the first maps N x T x D tokens to N x T x D, so a block's
output is a token sequence (T = 1 + patches, the class token first) and its head is a token
head (glcan.heads.tokens). The classifier is the encoder's final LayerNorm, the class token
and torchvision's ``heads``.

Sizes: ``vit_tiny`` is a CPU-sized ViT for 32x32 images: 4-pixel patches (64 of them), 6
layers of width 128 with 4 attention heads and an MLP of 256: smaller than DeiT-Tiny's 12 x 192
(twice the depth, 1.5 times the width), so that a run fits a CPU's minutes
(docs/results_vit.md); ``vit_b_16`` is torchvision's ViT-B/16. Both take the data's image size
(square, a multiple of the patch) and channel count.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import register_backbone


class PatchEmbedding(nn.Module):
    """The first unit: patches -> tokens, the class token first, plus the position embedding.

    Holds torchvision's own ``conv_proj``, ``class_token``, ``encoder.pos_embedding`` and
    ``encoder.dropout`` (the same objects, so a state dict trained here loads into the model).
    """

    def __init__(self, model: tvm.VisionTransformer) -> None:
        super().__init__()
        self.conv_proj, self.class_token = model.conv_proj, model.class_token
        self.pos_embedding, self.dropout = model.encoder.pos_embedding, model.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)  # N x patches x D, row-major as torchvision
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.dropout(tokens + self.pos_embedding)


class ClassToken(nn.Module):
    """Select the class token (position 0) of N x T x D tokens."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


def _sizes(image_size: tuple[int, int] | int | None, patch: int, default: int) -> int:
    h, w = (image_size, image_size) if isinstance(image_size, int) else (image_size or (default, default))
    if h != w or h % patch:
        raise ValueError(f"a Vision Transformer with {patch}-pixel patches needs square images whose side is a "
                         f"multiple of {patch}; the data gives {h}x{w} (set data.image_size)")
    return int(h)


def vision_transformer(builder: Callable[..., tvm.VisionTransformer], name: str, patch: int, default_size: int,
                       num_classes: int, in_channels: int = 3, small_input: bool | None = None,
                       image_size: tuple[int, int] | int | None = None) -> Backbone:
    """Build a torchvision VisionTransformer as a `Backbone`.

    Args:
        builder: makes the model from ``image_size`` and ``num_classes`` (torchvision's).
        name: the registry name.
        patch: the patch side in pixels.
        default_size: the image side when the data does not say.
        num_classes: outputs of the classifier.
        in_channels: channels of the input images (torchvision's patch projection takes 3; any
            other count gets a fresh projection initialised as torchvision initialises it).
        small_input: not used (a ViT's patch size sets its resolution).
        image_size: (H, W) of the input images: square, a multiple of ``patch``.

    Returns:
        A backbone with units ``[patch embedding, *encoder layers]`` and classifier
        ``(encoder.ln, class token, heads)``.
    """
    model = builder(image_size=_sizes(image_size, patch, default_size), num_classes=num_classes)
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, model.hidden_dim, kernel_size=patch, stride=patch)
        nn.init.trunc_normal_(conv.weight, std=math.sqrt(1 / (in_channels * patch * patch)))
        nn.init.zeros_(conv.bias)
        model.conv_proj = conv
    units: list[nn.Module] = [PatchEmbedding(model), *model.encoder.layers]
    return Backbone(units, nn.Sequential(model.encoder.ln, ClassToken(), model.heads), name=name)


def _vit_tiny(image_size: int, num_classes: int) -> tvm.VisionTransformer:
    return tvm.VisionTransformer(image_size=image_size, patch_size=4, num_layers=6, num_heads=4, hidden_dim=128,
                                 mlp_dim=256, num_classes=num_classes)


def _vit_b_16(image_size: int, num_classes: int) -> tvm.VisionTransformer:
    return tvm.vit_b_16(weights=None, image_size=image_size, num_classes=num_classes)


register_backbone("vit_tiny")(partial(vision_transformer, _vit_tiny, "vit_tiny", 4, 32))
register_backbone("vit_b_16")(partial(vision_transformer, _vit_b_16, "vit_b_16", 16, 224))
