"""Backbones by name, so that a config file or a command line can pick one with a string.

Every built-in network registers a factory here under its name; `build_backbone` validates
the arguments once, in one place, so each factory can assume sane values and error messages
look the same whatever the network. A factory takes ``(num_classes, in_channels,
small_input)`` and returns a `Backbone`. Your own networks join the same way::

    @register_backbone("mynet")
    def mynet(num_classes: int, in_channels: int, small_input: bool | None) -> Backbone:
        ...

Names are listed in natural order (``resnet18`` before ``resnet110``) because these lists are
read by people choosing a network, and the numbers in the names are depths.
"""

from __future__ import annotations

import re
from typing import Callable

from glcan.models.backbone import Backbone

BackboneFactory = Callable[[int, int, "bool | None"], Backbone]

_REGISTRY: dict[str, BackboneFactory] = {}


def _natural_key(name: str) -> list[int | str]:
    """Sort key comparing digit runs as numbers: resnet18 < resnet20 < resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator that registers a backbone factory under ``name``.

    Args:
        name: the registry name; must not be taken already.

    Returns:
        A decorator that stores the factory and returns it unchanged.

    Raises:
        ValueError: if ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name must be a non-empty string, got {name!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Every registered backbone name, in natural order.

    Returns:
        The names, e.g. ``["resnet18", "resnet20", ..., "vgg19_bn"]``.
    """
    return sorted(_REGISTRY, key=_natural_key)


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    small_input: bool | None = None,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: a name from `list_backbones`.
        num_classes: number of output classes of the classifier (at least 2).
        in_channels: channels of the input images (at least 1).
        small_input: adapt an ImageNet-style network to 32x32 inputs (3x3 stem, no max-pool,
            global-pool classifier). ``None`` lets the network choose its natural default:
            False for torchvision networks; CIFAR ResNets are small-input by design.

    Returns:
        The `Backbone`, freshly initialised (never pretrained).

    Raises:
        ValueError: on an unknown name, ``num_classes < 2`` or ``in_channels < 1``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    if small_input is not None and not isinstance(small_input, bool):
        raise ValueError(f"small_input must be True, False or None, got {small_input!r}")
    backbone = _REGISTRY[name](num_classes, in_channels, small_input)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"factory for backbone {name!r} returned {type(backbone).__name__}, not a Backbone")
    return backbone
