"""The GLCAN head: a global-local auxiliary head built on GCNet's global context block.

A block trained by a local loss keeps only what its head can read. A linear head (global
average pooling + FC) reads channel means only, so it pushes the block to be linearly
separable *already* and to drop the spatial layout later blocks would use. This head reads
the map two ways, both cheap:

* **local path** -- average-pool to at most ``pool_size`` x ``pool_size``, 1x1 conv C -> w,
  BN: per-region features. Pooling *first* makes all later work O(pool_size^2), not O(H*W).
* **global path** -- GCNet's attention pooling of the *full-resolution* map gives a context
  vector; its bottleneck transform (C -> C*r -> w, last conv zero-initialised) is fused into
  the local map: ``fused = ReLU(BN(conv(pool(h))) + transform(context))``.

The ReLU comes *after* the fusion: ``pool(local + t) == pool(local) + t`` for a spatially
constant ``t``, so an additive fusion followed by pooling would collapse into a bias the
classifier could learn alone. In the pre-activation the context decides, per sample, which
local responses pass. At initialisation ``t == 0`` and the head is its plain local path.

The classifier sees ``concat[flatten(avgpool_2x2(fused)) (4w), context (C)]``. The raw
context gives the attention a gradient from the first step (the fusion conv starts at
zero). The 2x2 grid keeps the map's coarse layout, as DGL's head does (``grid=1`` is global
average pooling).

Measured in docs/ablation.md (``python bench/ablation.py``, 5 paired seeds): at ResNet-32 K=16
GC pooling and average pooling (the same path, scores frozen at zero) do not differ on the
deployed network (GC minus avg +0.00 +- 0.93 points); what closes most of the large-K gap is
``later`` (AugLocal's later-shaped units) with ``model.lookahead`` (docs/heads.md). The
collaborative path (``relay``) was measured too and gains nothing there.

Cost: O(C*H*W) at full resolution (attention conv, weighted sum), O(w^2 * pool_size^2) for
the rest. For CIFAR ResNet-32 the head stays under 10% of its block's FLOPs at K=4 and K=16,
including K=16's stem-only first block (one 3->16 conv): the binding case, where no 3x3
conv or MLP fits beside the attention (``bench/heads.py``, ``docs/heads.md``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from glcan.heads.base import AuxHead
from glcan.heads.context_block import ContextBlock, Fusion, Pooling, attention_logits
from glcan.heads.later import later_depth, later_layers
from glcan.heads.registry import register_head


class _ReadOnce(torch.autograd.Function):
    """GC attention pooling and average pooling of one map, with a lean backward.

    Three ops read the full-resolution map (the attention conv, the weighted sum, the local
    pooling); autograd gives each its own N x C x H x W input gradient and adds them up: the
    head's peak beyond its input was 25.0 MiB on a 16@32x32 map at batch 128, over three
    maps. Here the three gradients go into one buffer in place: 10.7 MiB, one map (h.grad)
    plus the head's small tensors. Values and gradients are those of the plain ops.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: tuple[int, int]):
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        attn = torch.softmax(attention_logits(x, weight, bias), dim=-1)
        context = torch.matmul(flat, attn.transpose(1, 2)).unsqueeze(-1)  # N x C x 1 x 1
        ctx.save_for_backward(x, weight, attn)
        return context, F.adaptive_avg_pool2d(x, size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_context: torch.Tensor, g_pooled: torch.Tensor):
        x, weight, attn = ctx.saved_tensors
        n, c = x.shape[:2]
        dt = x.dtype
        flat = x.reshape(n, c, -1)
        g_ctx, attn = g_context.reshape(n, c, 1).to(dt), attn.to(dt)
        g_attn = torch.bmm(g_ctx.transpose(1, 2), flat)  # N x 1 x HW
        g_logits = attn * (g_attn - (attn * g_attn).sum(-1, keepdim=True))  # softmax backward
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten._adaptive_avg_pool2d_backward(g_pooled.to(dt), x).contiguous()
            lhs = torch.cat([g_ctx, weight.to(dt).reshape(1, c, 1).expand(n, c, 1)], dim=2)  # N x C x 2
            gx.view(n, c, -1).baddbmm_(lhs, torch.cat([attn, g_logits], dim=1))  # += both outer products
        g_w = torch.bmm(flat, g_logits.transpose(1, 2)).sum(0).reshape(weight.shape).to(weight.dtype)
        return gx, g_w, g_logits.sum().reshape(1).to(weight.dtype), None


@register_head("glcan")
class GLCanHead(AuxHead):
    """Global-local auxiliary head: a pooled local path fused with a GCNet context path.

    Args:
        in_shape: the block's output shape (C, H, W).
        num_classes: number of classes.
        width: channels w of the local path; default ``max(C, 32)``.
        pool_size: side of the local map; the map is pooled to ``min(H, pool_size)`` x
            ``min(W, pool_size)``.
        ratio: bottleneck ratio of the context transform.
        pooling: context pooling: ``"gc"`` (attention, the default), ``"avg"`` or ``"max"``.
        fusion: ``"add"`` (default) or ``"mul"``; see `ContextBlock`.
        hidden: if given, the classifier is Linear -> ReLU -> Linear with this many hidden
            units; otherwise a single Linear.
        grid: the fused map is average-pooled to ``grid`` x ``grid`` (at most the local map's
            size) and flattened for the classifier; 1 is global average pooling.
        local_path: False drops the local path: the classifier sees the context alone.
        context_in_classifier: False keeps the raw context out of the classifier's input (it
            then reaches the classifier only through the fusion).
        attention_heads: heads of the attention pooling (``pooling="gc"``): channel group g is
            pooled with its own attention map; must divide C.
        fuse_input: the context also shifts the pooled map *before* the local conv (a second
            transform), so it shapes which local features are computed, not only which pass.
        later: AugLocal's lever: the head first runs this many fresh residual units shaped like
            layers sampled from the network's later ones (glcan.heads.later), and reads their
            output; 0 (the default) reads the block's output directly.
        later_width: the later units' channels as a fraction of the sampled layers'.
        later_pyramid: the later stack's depth shrinks linearly to ``later * later_pyramid`` at
            the last auxiliary block (AugLocal's pyramid); None keeps it.
        relay: the collaborative path: the size of a global state carried from head to head
            along the blocks. Head k reads the state head k-1 left for this batch (detached: no
            gradient crosses a block boundary), updates it with its own context,
            ``r_k = ReLU(Linear([context_k, r_(k-1)]))``, and its classifier sees ``r_k`` too, so
            each head sees more than its own block. 0 (the default) is off.
        block_index, num_blocks, later_shapes: where the head sits (set by the trainer).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        num_classes: int,
        width: Optional[int] = None,
        pool_size: int = 4,
        ratio: float = 0.25,
        pooling: Pooling = "gc",
        fusion: Fusion = "add",
        hidden: Optional[int] = None,
        grid: int = 2,
        local_path: bool = True,
        context_in_classifier: bool = True,
        attention_heads: int = 1,
        fuse_input: bool = False,
        later: int = 0,
        later_width: float = 1.0,
        later_pyramid: Optional[float] = None,
        relay: int = 0,
        block_index: int = 0,
        num_blocks: int = 1,
        later_shapes: Sequence[Sequence[int]] = (),
    ) -> None:
        super().__init__()
        if later < 0 or later_width <= 0 or (later_pyramid is not None and not 0 < later_pyramid <= 1):
            raise ValueError(f"glcan head needs later >= 0, later_width > 0 and later_pyramid in (0, 1], "
                             f"got {later}, {later_width}, {later_pyramid}")
        self.later, in_shape = later_layers(in_shape, later_shapes,
                                            later_depth(later, later_pyramid, block_index, num_blocks), later_width)
        c, h, w_ = in_shape
        if pool_size < 1 or grid < 1:
            raise ValueError(f"glcan head needs pool_size >= 1 and grid >= 1, got {pool_size}, {grid}")
        w = width or max(c, 32)
        if w < 1 or (hidden is not None and hidden < 1):
            raise ValueError(f"glcan head needs positive width and hidden, got {width}, {hidden}")
        self.in_shape = (c, h, w_)
        self.width = w
        ph, pw = min(h, pool_size), min(w_, pool_size)
        self.pool_hw = (ph, pw)
        self.pool = nn.AdaptiveAvgPool2d((ph, pw))
        gh, gw = min(grid, ph), min(grid, pw)
        self.grid = nn.AdaptiveAvgPool2d((gh, gw))
        if not (local_path or context_in_classifier):
            raise ValueError("glcan head needs the local path or the context in the classifier (or both)")
        self.local_path, self.context_in_classifier = local_path, context_in_classifier
        self.local = nn.Sequential(nn.Conv2d(c, w, kernel_size=1, bias=False), nn.BatchNorm2d(w)) if local_path else None
        self.context_block = ContextBlock(c, ratio=ratio, pooling=pooling, fusion=fusion, out_channels=w,
                                          attention_heads=attention_heads, transform=local_path)
        # The second fusion, into the pooled input (C channels), shares the pooled context.
        self.input_fusion = ContextBlock(c, ratio=ratio, pooling="avg", fusion="add") if fuse_input else None
        self.act = nn.ReLU(inplace=True)  # acts on the fusion's fresh output
        if relay < 0:
            raise ValueError(f"glcan head needs relay >= 0, got {relay}")
        self.relay = nn.Sequential(nn.Linear(c + relay, relay), nn.ReLU()) if relay else None
        self.relay_size, self.block_index = relay, block_index
        # The network's relaying heads share one mailbox (glcan.core.build); a head alone has none.
        self.mailbox: Optional[dict[int, torch.Tensor]] = None
        features = (w * gh * gw if local_path else 0) + (c if context_in_classifier else 0) + relay
        self.classifier: nn.Module
        if hidden is None:
            self.classifier = nn.Linear(features, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )

    def features(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused local map and the context vector.

        Args:
            h: the block's output, N x C x H x W.

        Returns:
            (fused N x w x p x p, context N x C x 1 x 1).
        """
        cb = self.context_block
        if cb.mask is not None and cb.attention_heads == 1:  # gc or avg (frozen scores): both poolings in one op, one-buffer backward
            ctx, pooled = _ReadOnce.apply(h, cb.mask.weight, cb.mask.bias, self.pool_hw)
        else:
            ctx, pooled = cb.context(h), self.pool(h)
        if not self.local_path:
            return None, ctx
        if self.input_fusion is not None:
            pooled = self.input_fusion.fuse(pooled, ctx)
        local = self.local(pooled)  # local path, pre-activation; ctx is the global path
        fused = self.act(self.context_block.fuse(local, ctx))
        return fused, ctx

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        fused, ctx = self.features(self.later(h))
        parts = ([self.grid(fused).flatten(1)] if fused is not None else []) + \
                ([ctx.flatten(1)] if self.context_in_classifier else [])
        if self.relay is not None:
            parts.append(self.relayed(ctx.flatten(1)))
        return self.classifier(torch.cat(parts, dim=1))

    def relayed(self, context: torch.Tensor) -> torch.Tensor:
        """The collaborative path's state after this head: the previous head's state for this
        batch (heads run in block order; zeros for the first head or a head on its own) updated
        with this head's context, and left in the mailbox for the next head, detached."""
        box = self.mailbox if self.mailbox is not None else {}
        previous = box.get(self.block_index - 1)
        if previous is None or previous.shape[0] != context.shape[0]:
            previous = context.new_zeros(context.shape[0], self.relay_size)
        state = self.relay(torch.cat([context, previous.detach()], dim=1))
        box[self.block_index] = state.detach()
        return state
