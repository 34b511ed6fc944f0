"""Auxiliary heads by name, so a config can say ``head: dgl`` and ``head_kwargs: {width: 64}``.

A factory (usually the head class itself) is called as
``factory(in_shape, num_classes, **options)``. The keywords that describe *where* the head
sits -- ``image_shape``, ``block_index``, ``num_blocks`` -- are passed to every head that
declares them and silently dropped for the others, so the trainer can call every head the
same way. Everything else is a head option, checked here against the factory's signature:
a misspelt option in a config fails at build time with the list of valid ones, instead of
surfacing as a ``TypeError`` deep in a constructor (a factory that takes ``**kwargs`` gets
everything, placement keywords included, and checks its own options). Your own heads join
the same way::

    @register_head("mine")
    class MyHead(AuxHead):
        def __init__(self, in_shape, num_classes, depth: int = 2): ...

A block of a token backbone (a Vision Transformer) outputs N x T x D tokens, not a map: for
an ``in_shape`` of two dimensions, ``build_head`` builds the name's *token form*
(``register_token_head``, glcan.heads.tokens: ``glcan`` and ``linear``) and refuses a head
that has none in one line.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Sequence

from glcan.heads.base import AuxHead
from glcan.registry import Registry

HeadFactory = Callable[..., AuxHead]

#: Keywords that say where a head sits; a factory receives those it declares (``later_shapes``:
#: the output shapes of the units after the head's block, for heads built from later layers).
PLACEMENT_KEYWORDS: tuple[str, ...] = ("image_shape", "block_index", "num_blocks", "later_shapes")

_HEADS: Registry[HeadFactory] = Registry("head")
register_head = _HEADS.register
list_heads = _HEADS.names
_lookup = _HEADS.get
_TOKEN_HEADS: Registry[HeadFactory] = Registry("token head")
register_token_head = _TOKEN_HEADS.register  # the form of a head for N x T x D tokens (same name)


def _parameters(factory: HeadFactory) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a factory (of ``__init__`` for a class), beyond the shape."""
    params = dict(inspect.signature(factory).parameters)
    for fixed in ("self", "in_shape", "num_classes"):
        params.pop(fixed, None)
    return {
        k: p for k, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }


def head_options(name: str) -> list[str]:
    """The options (beyond placement keywords) that head ``name`` takes.

    Args:
        name: a registered head name.

    Returns:
        Option names in declaration order.
    """
    return [k for k in _parameters(_lookup(name)) if k not in PLACEMENT_KEYWORDS]


def _check_shape(in_shape: Any, num_classes: Any) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in in_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"a head needs in_shape = (C, H, W) or, for tokens, (T, D) of positive sizes, got {in_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"a head needs num_classes >= 1, got {num_classes!r}")
    return shape  # type: ignore[return-value]


def _takes_any_keyword(factory: HeadFactory) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())


def build_head(
    name: str,
    in_shape: tuple[int, int, int],
    num_classes: int,
    *,
    image_shape: tuple[int, int, int],
    block_index: int = 0,
    num_blocks: int = 1,
    later_shapes: Sequence[Sequence[int]] = (),
    **kwargs: Any,
) -> AuxHead:
    """Build a registered head for a block whose output has shape ``in_shape``.

    Args:
        name: a name from `list_heads` (``glcan``, ``linear``, ``dgl``, ``infopro``, ...).
        in_shape: the block's output shape without the batch dimension, (C, H, W), or (T, D)
            for tokens (the head's token form is built).
        num_classes: number of classes the head predicts.
        image_shape: the network input's shape (C, H, W); heads that reconstruct it use it.
        block_index: index k of the block the head sits on (0-based).
        num_blocks: K, the number of blocks.
        later_shapes: the output shapes (C, H, W) of the units after the block.
        **kwargs: head options (see `head_options`).

    Returns:
        The head, an `AuxHead`.

    Raises:
        ValueError: for an unknown name, an unknown option, or a malformed shape.
    """
    factory = _lookup(name)
    shape = _check_shape(in_shape, num_classes)
    if len(shape) == 2:  # tokens: the head's token form
        if name not in _TOKEN_HEADS.names():
            raise ValueError(f"head {name!r} reads feature maps (C, H, W), but this block outputs tokens {shape} "
                             f"(T, D); token heads: {', '.join(_TOKEN_HEADS.names())}")
        factory = _TOKEN_HEADS.get(name)
    params = _parameters(factory)
    options = [k for k in params if k not in PLACEMENT_KEYWORDS]
    open_ended = _takes_any_keyword(factory)  # a ``**kwargs`` factory checks its own options
    unknown = [] if open_ended else sorted(k for k in kwargs if k not in options)
    if unknown:
        takes = ", ".join(options) if options else "no options"
        raise ValueError(f"head {name!r} got unknown option(s): {', '.join(unknown)}; it takes: {takes}")
    placement = {"image_shape": tuple(image_shape), "block_index": block_index, "num_blocks": num_blocks,
                 "later_shapes": [tuple(s) for s in later_shapes]}
    kwargs.update({k: v for k, v in placement.items() if open_ended or k in params})
    try:
        return factory(shape, int(num_classes), **kwargs)
    except ValueError as e:  # say which head the option belongs to (it may come from a nested block)
        raise ValueError(f"head {name!r}: {e}") from e
