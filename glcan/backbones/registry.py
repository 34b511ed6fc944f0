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

A backbone belongs to a task (``register_backbone(name, task=...)``, default
``classification``); `list_backbones` lists one task's. A factory may take keyword options
beyond the three (super-resolution backbones take ``scale``), passed by `build_backbone`.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Optional

from glcan.backbones.backbone import Backbone
from glcan.registry import Registry

BackboneFactory = Callable[[int, int, "bool | None"], Backbone]

def _natural_key(name: str) -> list[int | str]:
    """Sort key comparing digit runs as numbers: resnet18 < resnet20 < resnet110."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


_BACKBONES: Registry[BackboneFactory] = Registry("backbone", sort_key=_natural_key)
_TASKS: dict[str, str] = {}  # name -> the task its networks solve


def register_backbone(name: str, task: str = "classification") -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register a backbone factory under ``name`` for ``task``."""
    register = _BACKBONES.register(name)

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        register(factory)
        _TASKS[name] = task
        return factory

    return decorator


def list_backbones(task: str = "classification") -> list[str]:
    """The registered backbones of ``task``, in natural order."""
    return [n for n in _BACKBONES.names() if _TASKS.get(n) == task]


def backbone_task(name: str) -> str:
    """The task the registered backbone ``name`` is for (an unknown name is one clear line)."""
    _BACKBONES.get(name)
    return _TASKS[name]


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    small_input: bool | None = None,
    image_size: Optional[tuple[int, int]] = None,
    **options: Any,
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: a name from `list_backbones`.
        num_classes: number of output classes of the classifier (at least 2).
        in_channels: channels of the input images (at least 1).
        small_input: adapt an ImageNet-style network to 32x32 inputs (3x3 stem, no max-pool,
            global-pool classifier). ``None`` lets the network choose its natural default:
            False for torchvision networks; CIFAR ResNets are small-input by design.
        image_size: (H, W) of the input images, passed to factories that take it (a Vision
            Transformer's position embedding is sized by it); convolutional networks ignore it.
        **options: keyword options of the factory (``scale`` for super-resolution backbones).

    Returns:
        The `Backbone`, freshly initialised (never pretrained).

    Raises:
        ValueError: on an unknown name, ``num_classes < 2`` or ``in_channels < 1``.
    """
    factory = _BACKBONES.get(name)
    least = 1 if _TASKS.get(name) == "detection" else 2  # one class is a detection task (find every person)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < least:
        raise ValueError(f"num_classes must be an integer >= {least}, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    if small_input is not None and not isinstance(small_input, bool):
        raise ValueError(f"small_input must be True, False or None, got {small_input!r}")
    if image_size is not None and "image_size" in inspect.signature(factory).parameters:
        options["image_size"] = tuple(int(s) for s in image_size)
    backbone = factory(num_classes, in_channels, small_input, **options)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"factory for backbone {name!r} returned {type(backbone).__name__}, not a Backbone")
    return backbone
