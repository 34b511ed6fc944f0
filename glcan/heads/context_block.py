"""GCNet's Global Context block (Cao et al. 2019), written to be reused inside heads.

The block answers "what is in the whole image?" with one vector per sample and feeds that
answer back into a feature map. It has three steps:

1. **Context modelling.** A 1x1 conv scores every position, a softmax over all H*W positions
   turns the scores into attention weights, and the weighted sum of the features is the
   context (N x C x 1 x 1). The attention map does not depend on a query position: that is
   GCNet's simplification of the non-local block, and why it costs only O(C*H*W).
   ``pooling="avg"`` is the same attention pooling with the scores frozen at zero: the softmax
   of zeros is uniform, so the context is the global mean, computed by the very ops (and the
   same autograd path) as ``gc``. Comparing the two therefore changes one thing only: whether
   the attention is learnt. ``"max"`` is plain global max pooling (GCNet's other ablation).
2. **Transform.** An SE-style bottleneck: 1x1 conv C -> C*r, LayerNorm over [C*r, 1, 1],
   ReLU, 1x1 conv C*r -> out_channels. LayerNorm (not BatchNorm) because the bottleneck sees
   one value per sample and channel, and the paper found it eases optimisation.
3. **Fusion** into a target map: ``add`` gives ``target + t``; ``both`` gates and shifts,
   ``target * 2*sigmoid(t_gate) + t_shift`` (the transform outputs both halves); ``mul`` gives
   ``target * 2*sigmoid(t)``.

The last conv of the transform is zero-initialised (weight and bias), so at initialisation
``t == 0`` and the block is *exactly* the identity on its target: it can be dropped into a
working network without disturbing it, and learns how much context to add. GCNet's own
``mul`` is ``target * sigmoid(t)``, which halves the target at init; we scale the gate by 2
so that ``mul`` is the identity at init too (a gate in (0, 2) that can also amplify).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

Pooling = Literal["gc", "avg", "max"]
Fusion = Literal["add", "mul", "both"]
POOLINGS: tuple[str, ...] = ("gc", "avg", "max")
FUSIONS: tuple[str, ...] = ("add", "mul", "both")


def bottleneck_width(channels: int, ratio: float) -> int:
    """Width of the transform's bottleneck: ``max(1, round(channels * ratio))``."""
    return max(1, int(round(channels * ratio)))


def attention_logits(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """GCNet's attention scores, N x A x (H*W) for A attention heads: the C -> A 1x1 conv as one
    batched matrix product.

    The same arithmetic as ``F.conv2d(x, weight, bias)``; as a convolution it costs about as much
    as a 3x3 conv of the block on a CPU (oneDNN's 1-output-channel path), as a matmul a fraction.
    """
    n, c = x.shape[:2]
    a = weight.shape[0]
    logits = torch.matmul(weight.reshape(1, a, c), x.reshape(n, c, -1))
    return logits if bias is None else logits + bias.reshape(1, a, 1)


class ContextBlock(nn.Module):
    """The GCNet global context block: context pooling, bottleneck transform, fusion.

    Args:
        channels: channels C of the map the context is pooled from.
        ratio: bottleneck ratio r of the transform (GCNet uses 1/16 and 1/4); the bottleneck
            has ``max(1, round(C * r))`` channels.
        pooling: ``"gc"`` attention pooling (GCNet), ``"avg"`` or ``"max"`` global pooling.
        fusion: ``"add"`` (``target + t``), ``"mul"`` (``target * 2*sigmoid(t)``) or ``"both"``
            (``target * 2*sigmoid(t_gate) + t_shift``).
        out_channels: channels of the transform's output, hence of the fusion target
            (default ``channels``, fusing back into the input itself).
        attention_heads: attention heads of the ``gc`` pooling: channel group g (of C/heads
            channels) is pooled with its own attention map (multi-head attention pooling); 1 is
            GCNet's. (Not the auxiliary heads of glcan's blocks.)
        transform: False builds the pooling only (no transform, no fusion).

    Raises:
        ValueError: on a non-positive size, a ratio outside (0, 1], or an unknown mode.
    """

    def __init__(
        self,
        channels: int,
        ratio: float = 0.25,
        pooling: Pooling = "gc",
        fusion: Fusion = "add",
        out_channels: Optional[int] = None,
        attention_heads: int = 1,
        transform: bool = True,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ContextBlock channels must be >= 1, got {channels}")
        if not 0 < ratio <= 1:
            raise ValueError(f"ContextBlock ratio must be in (0, 1], got {ratio}")
        if pooling not in POOLINGS:
            raise ValueError(f"ContextBlock pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"ContextBlock fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        out = channels if out_channels is None else out_channels
        if out < 1:
            raise ValueError(f"ContextBlock out_channels must be >= 1, got {out}")
        if attention_heads < 1 or channels % attention_heads:
            raise ValueError(f"ContextBlock attention_heads must divide the {channels} channels, got {attention_heads}")
        self.channels, self.out_channels = channels, out
        self.pooling, self.fusion, self.attention_heads = pooling, fusion, attention_heads
        mid = bottleneck_width(channels, ratio)
        # The attention mask: one score per position and head. "avg" keeps it frozen at zero
        # (uniform weights: the mean), so both poolings run the same code.
        self.mask = nn.Conv2d(channels, attention_heads, kernel_size=1) if pooling in ("gc", "avg") else None
        if pooling == "avg":
            nn.init.zeros_(self.mask.weight)
            nn.init.zeros_(self.mask.bias)
            self.mask.requires_grad_(False)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, mid, kernel_size=1),
            nn.LayerNorm([mid, 1, 1]),
            nn.ReLU(inplace=True),  # acts on the LayerNorm's fresh output
            nn.Conv2d(mid, 2 * out if fusion == "both" else out, kernel_size=1),
        ) if transform else None
        if transform:
            self.reset_transform()

    def reset_transform(self) -> None:
        """Zero the transform's last conv, making the block the identity on its target."""
        last = self.transform[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"ContextBlock expects an N x {self.channels} x H x W map, got shape {tuple(x.shape)}"
            )

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention weights over the H*W positions (``pooling="gc"`` only).

        Args:
            x: feature map, N x C x H x W.

        Returns:
            N x A x (H*W) weights (A attention heads), non-negative, summing to one per sample
            and head.
        """
        if self.mask is None:
            raise ValueError(f"attention weights exist only for pooling 'gc' and 'avg', this block pools with {self.pooling!r}")
        self._check(x)
        return torch.softmax(attention_logits(x, self.mask.weight, self.mask.bias), dim=-1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The global context vector of every sample.

        Args:
            x: feature map, N x C x H x W.

        Returns:
            N x C x 1 x 1: the attention-weighted sum (gc; avg: with uniform weights, the mean) or
            the max (max).
        """
        self._check(x)
        if self.pooling == "max":
            return x.amax(dim=(2, 3), keepdim=True)
        weights = self.attention(x)  # N x A x HW
        n, c, a = x.shape[0], x.shape[1], self.attention_heads
        if a == 1:  # (N x C x HW) @ (N x HW x 1): one batched matmul, counted by FLOP counters.
            return torch.matmul(x.flatten(2), weights.transpose(1, 2)).unsqueeze(-1)
        # Multi-head: channel group g is pooled with head g's attention map.
        groups = x.reshape(n, a, c // a, -1)  # N x A x C/A x HW
        ctx = torch.matmul(groups, weights.unsqueeze(-1))  # N x A x C/A x 1
        return ctx.reshape(n, c, 1, 1)

    def fuse(self, target: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Fuse an already pooled context into ``target`` (lets callers reuse the context).

        Args:
            target: N x out_channels x H' x W' (any spatial size).
            ctx: N x C x 1 x 1, from `context`.

        Returns:
            A new tensor shaped like ``target``.
        """
        if target.dim() != 4 or target.shape[1] != self.out_channels:
            raise ValueError(
                f"ContextBlock fuses into an N x {self.out_channels} x H x W target, got {tuple(target.shape)}"
            )
        t = self.transform_context(ctx)  # N x out x 1 x 1, broadcast over the target's positions
        if self.fusion == "add":
            return target + t
        if self.fusion == "mul":
            return target * (2.0 * torch.sigmoid(t))
        gate, shift = t.chunk(2, dim=1)  # "both": the context gates, then shifts
        return target * (2.0 * torch.sigmoid(gate)) + shift

    def transform_context(self, ctx: torch.Tensor) -> torch.Tensor:
        """The bottleneck transform of an N x C x 1 x 1 context, as ``self.transform(ctx)``.

        On a 1 x 1 map a 1x1 conv is a linear layer: computed as one (same weights, same
        result), it skips the convolution machinery, which costs more than the arithmetic here.
        """
        conv1, norm, _, conv2 = self.transform
        t = F.linear(ctx.flatten(1), conv1.weight.flatten(1), conv1.bias)
        t = F.relu(F.layer_norm(t, (t.shape[1],), norm.weight.flatten(), norm.bias.flatten(), norm.eps))
        return F.linear(t, conv2.weight.flatten(1), conv2.bias)[:, :, None, None]

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pool the context of ``x`` and fuse its transform into ``target``.

        Args:
            x: the map the context is pooled from, N x C x H x W.
            target: the map to fuse into (default ``x``); it needs ``out_channels`` channels
                and may have another spatial size (the context broadcasts).

        Returns:
            A tensor shaped like ``target``; equal to it at initialisation.
        """
        return self.fuse(x if target is None else target, self.context(x))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, fusion={self.fusion!r}"
