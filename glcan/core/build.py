"""From a backbone and a method to the SplitNetwork that gets trained.

The feature-map shape each head needs is found by running one example input through the
units, so heads work on any network without the user stating shapes.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from glcan.core.network import RecomputedSequential, SplitNetwork
from glcan.core.split import SplitError, SplitSpec, block_ranges, check_boundaries, check_num_blocks, uniform_boundaries
from glcan.heads import AuxHead, ModuleHead, build_head
from glcan.heads.lookahead import LookaheadHead
from glcan.backbones import Backbone, build_backbone
from glcan.backbones.fcos import feature

METHODS = ("e2e", "e2e_recompute", "local", "local_recompute")
LOCAL_METHODS = ("local", "local_recompute")
LAST_HEADS = ("classifier", "head")


def is_local(method: str) -> bool:
    """Whether ``method`` trains K blocks from their own heads (with or without recomputation)."""
    return method in LOCAL_METHODS


def recomputes(method: str) -> bool:
    """Whether ``method`` recomputes its units' activations in the backward (gradient
    checkpointing: ``e2e_recompute``, ``local_recompute``). "Checkpoint" in glcan means a file."""
    return method in ("e2e_recompute", "local_recompute")

@torch.no_grad()
def probe_shapes(units: Sequence[nn.Module], image_shape: Sequence[int], states: bool = False) -> list[Any]:
    """The output shape (without the batch dimension) of every unit, for one example input.
    A detector's unit also carries the pyramid levels kept so far (glcan.backbones.fcos): its
    shape is its map's, or with ``states`` the tuple of every carried tensor's shape."""
    modes = [u.training for u in units]
    x = torch.zeros(2, *image_shape)
    shapes = []
    try:
        for u in units:
            u.eval()  # no BatchNorm statistics are touched by the probe
            x = u(x)
            if states and isinstance(x, tuple):
                shapes.append(tuple(tuple(t.shape[1:]) for t in x))
            else:
                shapes.append(tuple(feature(x).shape[1:]))
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(
            f"the backbone cannot take inputs of shape {tuple(image_shape)} (unit {len(shapes)}: {first})"
        ) from None
    finally:
        for u, m in zip(units, modes):
            u.train(m)
    return shapes


def make_heads(
    head: str,
    shapes: Sequence[tuple[int, ...]],
    boundaries: Sequence[int],
    num_classes: int,
    image_shape: Sequence[int],
    head_kwargs: Optional[dict[str, Any]] = None,
) -> list[nn.Module]:
    """One head of kind ``head`` on the output of every block."""
    ranges = block_ranges(boundaries, len(shapes))
    return [
        build_head(
            head, tuple(shapes[last - 1]), num_classes, image_shape=tuple(image_shape),
            block_index=k, num_blocks=len(ranges), later_shapes=[tuple(s) for s in shapes[last:]], **(head_kwargs or {}),
        )
        for k, (_, last) in enumerate(ranges)
    ]


def resolve_boundaries(split: SplitSpec, num_units: int, num_blocks: int) -> list[int]:
    """Turn a split into boundaries: ``uniform``, or an explicit list checked against K. The
    ``memory`` policy is not resolved here: it is measured before the model is built
    (glcan.lit.plan), which hands its result in as a list."""
    if isinstance(split, str):
        check_num_blocks(num_units, num_blocks)
        if split == "uniform" or num_blocks == 1:
            return uniform_boundaries(num_units, num_blocks)
        if split == "memory":
            raise SplitError("model.split 'memory' is placed by the planner before the model is built: build with "
                             "GLCanModule.planned(...) (train.py does), or give the boundaries")
        raise SplitError(f"model.split must be 'uniform', 'memory' or a list of unit indices, got {split!r}")
    boundaries = check_boundaries(split, num_units)
    if num_blocks != len(boundaries) + 1:
        raise SplitError(
            f"model.split {boundaries} makes {len(boundaries) + 1} blocks but model.num_blocks is {num_blocks}"
        )
    return boundaries


def as_backbone(spec: Any, num_classes: int, image_shape: Sequence[int], small_input: Optional[bool] = None) -> Backbone:
    """A Backbone from a registry name, a Backbone, an ``nn.Sequential`` or a list of units.

    For a user's units the E2E classifier is global average pooling + a linear layer on the
    last unit's output (the ``linear`` head), whose shape is found by probing.
    """
    if isinstance(spec, dict) and "class_path" in spec:  # as a checkpoint records a config's class_path
        factory = _import(str(spec["class_path"]))
        return as_backbone(factory(**(spec.get("init_args") or {})), num_classes, image_shape, small_input)
    if isinstance(spec, str) and "." in spec:  # a dotted name: your function that returns the units
        factory = _import(spec)
        return as_backbone(factory() if callable(factory) else factory, num_classes, image_shape, small_input)
    if isinstance(spec, str):
        return build_backbone(spec, num_classes, in_channels=image_shape[0], small_input=small_input,
                              image_size=tuple(image_shape[1:]))
    if isinstance(spec, Backbone):
        return spec
    if isinstance(spec, nn.Sequential) or (isinstance(spec, (list, tuple)) and all(isinstance(m, nn.Module) for m in spec)):
        units = list(spec)
        if not units:
            raise ValueError("model.backbone: the network has no units")
        last = probe_shapes(units, image_shape)[-1]
        classifier = build_head("linear", tuple(last), num_classes, image_shape=tuple(image_shape))
        return Backbone(units, classifier, name=type(spec).__name__ if isinstance(spec, nn.Sequential) else "custom")
    raise ValueError(
        f"model.backbone must be a registry name, a glcan Backbone, an nn.Sequential or a list of modules; got {type(spec).__name__}"
    )


def _import(dotted: str) -> Any:
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"model.backbone {dotted!r} cannot be imported: {e}") from None


def build_network(
    backbone: Backbone,
    method: str,
    *,
    num_blocks: int,
    split: SplitSpec,
    head: str,
    head_kwargs: Optional[dict[str, Any]],
    num_classes: int,
    image_shape: Sequence[int],
    last_head: str = "classifier",
    classifier_head: Callable[[nn.Module], AuxHead] = ModuleHead,
    block_head: Callable[[AuxHead], AuxHead] = lambda head: head,
    lookahead: int = 0,
    lookahead_momentum: float = 0.9,
) -> SplitNetwork:
    """The network a method trains.

    E2E keeps one block and the backbone's own classifier. Local learning cuts the units into
    ``num_blocks`` blocks at ``split`` (``uniform`` or boundaries) and puts a ``head`` on each;
    the last block ends in the backbone's own classifier (``last_head="classifier"``: the
    deployed network is then exactly E2E's, with the same parameters) or in a ``head`` like the
    others (``last_head="head"``). The ``_recompute`` methods (gradient checkpointing) recompute every unit's
    activations in its backward (per-unit gradient checkpointing), in the one block of E2E or
    inside each local block. ``classifier_head(module)`` makes the head that trains through the
    backbone's own classifier (the task's: ``glcan.core.task``; cross-entropy by default), and
    ``block_head(head)`` the form a ``head`` trains a block of the task in (detection: a
    classification head learns the image's classes).
    ``lookahead`` blocks before the last also train through a momentum copy of their next block
    and its head (glcan.heads.lookahead); ``-1``: every block but the last.
    """
    if method not in METHODS:
        raise ValueError(f"model.method must be one of {', '.join(METHODS)}, got {method!r}")
    if last_head not in LAST_HEADS:
        raise ValueError(f"model.last_head must be one of {', '.join(LAST_HEADS)}, got {last_head!r}")
    units = list(backbone.units)
    sequential = RecomputedSequential if recomputes(method) else nn.Sequential
    if not is_local(method):
        return SplitNetwork([sequential(*units)], [classifier_head(backbone.classifier)])
    shapes = probe_shapes(units, image_shape)
    boundaries = resolve_boundaries(split, len(shapes), num_blocks)
    heads = [block_head(h) for h in make_heads(head, shapes, boundaries, num_classes, image_shape, head_kwargs)]
    if last_head == "classifier":
        heads[-1] = classifier_head(backbone.classifier)
    blocks = [sequential(*units[a:b]) for a, b in block_ranges(boundaries, len(units))]
    mailbox: dict[int, Any] = {}  # the relaying heads' shared state (the glcan head's collaborative path)
    for h in heads:
        if getattr(h, "relay", None) is not None:
            h.mailbox = mailbox
    ahead = len(blocks) - 1 if lookahead < 0 else min(lookahead, len(blocks) - 1)
    for k in range(len(blocks) - 2, len(blocks) - 2 - ahead, -1):  # from the back: each copies a plain head
        heads[k] = LookaheadHead(heads[k], blocks[k + 1], heads[k + 1], lookahead_momentum)
    return SplitNetwork(blocks, heads, boundaries)
