"""Heads for token backbones (Vision Transformers): a block's output is N x T x D tokens.

GCNet's attention pooling is native to tokens: a linear score per token, a softmax over the
positions, and the tokens weighted into one context vector. The GLCAN token head fuses that
global context with a local summary, as the map head does with its pooled local path:

* **local** -- the class token (token 0), or the mean token for a transformer without one;
* **global** -- GC attention pooling over the patch tokens gives a context vector ``c``; its
  bottleneck transform (D -> rD, LayerNorm, ReLU, rD -> w, last layer zero-initialised, as
  GCNet's) is added to the projected local summary before the non-linearity:
  ``fused = GELU(W local + transform(c))``. At initialisation the transform is zero and the
  head is its plain local path;
* the classifier sees ``concat[fused, c]``: the raw context gives the attention a gradient
  from the first step.

Every token head first applies a LayerNorm, as the ViT's own classifier does (an encoder
layer's output is an un-normalised residual stream). ``pooling: avg`` freezes the attention
scores at zero: the same code, a uniform mean. The ``linear`` token head (LayerNorm, class
or mean token, one linear layer) is the baseline the GLCAN head must beat.

The registry (glcan.heads.registry) builds these for a block whose output has two
dimensions (T, D) when the config says ``head: glcan`` or ``head: linear``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from glcan.heads.base import AuxHead
from glcan.heads.registry import register_token_head


class TokenContext(nn.Module):
    """GCNet's attention pooling over tokens: ``softmax_t(w . z_t + b)``-weighted sum of ``z_t``.

    Args:
        dim: the token width D.
        pooling: ``gc`` (learned scores) or ``avg`` (scores frozen at zero: the mean token).
    """

    def __init__(self, dim: int, pooling: Literal["gc", "avg"] = "gc") -> None:
        super().__init__()
        if pooling not in ("gc", "avg"):
            raise ValueError(f"token pooling must be 'gc' or 'avg', got {pooling!r}")
        self.score = nn.Linear(dim, 1)
        if pooling == "avg":
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)
            self.score.requires_grad_(False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(self.score(z).squeeze(-1), dim=1)  # N x T
        return torch.bmm(attn.unsqueeze(1), z).squeeze(1)  # N x D


def _summary(z: torch.Tensor, class_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(local summary N x D, the tokens global pooling reads): the class token and the patch
    tokens, or the mean token and all tokens."""
    return (z[:, 0], z[:, 1:]) if class_token and z.shape[1] > 1 else (z.mean(1), z)


class GLCanTokenHead(AuxHead):
    """Global-local head on tokens: GC attention pooling fused with the class token.

    Args:
        in_shape: the block's output shape (T, D).
        num_classes: number of classes.
        width: features w of the fused local path; default D.
        ratio: bottleneck ratio of the context transform.
        pooling: ``gc`` (attention, the default) or ``avg`` (scores frozen at zero).
        class_token: token 0 is a class token (the local summary; pooling reads the others);
            False: the mean token is the local summary and pooling reads every token.
    """

    def __init__(self, in_shape: tuple[int, int], num_classes: int, width: Optional[int] = None, ratio: float = 0.25,
                 pooling: Literal["gc", "avg"] = "gc", class_token: bool = True) -> None:
        super().__init__()
        _, d = in_shape
        w = width or d
        if w < 1 or not 0 < ratio <= 1:
            raise ValueError(f"glcan token head needs width >= 1 and ratio in (0, 1], got {width}, {ratio}")
        hidden = max(1, int(round(d * ratio)))
        self.class_token = class_token
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.context = TokenContext(d, pooling)
        self.local = nn.Linear(d, w)
        self.transform = nn.Sequential(nn.Linear(d, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, w))
        nn.init.zeros_(self.transform[-1].weight)  # GCNet: the fusion starts as the identity
        nn.init.zeros_(self.transform[-1].bias)
        self.classifier = nn.Linear(w + d, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        local, tokens = _summary(self.norm(h), self.class_token)
        context = self.context(tokens)
        fused = F.gelu(self.local(local) + self.transform(context))
        return self.classifier(torch.cat([fused, context], dim=1))


class LinearTokenHead(AuxHead):
    """The baseline token head: LayerNorm, the class token (or the mean token), one linear layer.

    Args:
        in_shape: the block's output shape (T, D).
        num_classes: number of classes.
        class_token: read token 0 (the class token); False: the mean token.
    """

    def __init__(self, in_shape: tuple[int, int], num_classes: int, class_token: bool = True) -> None:
        super().__init__()
        self.class_token = class_token
        self.norm = nn.LayerNorm(in_shape[1], eps=1e-6)
        self.classifier = nn.Linear(in_shape[1], num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(_summary(self.norm(h), self.class_token)[0])


register_token_head("glcan")(GLCanTokenHead)
register_token_head("linear")(LinearTokenHead)
