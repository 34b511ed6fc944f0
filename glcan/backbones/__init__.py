"""Networks as `Backbone`s: ordered units plus a classifier, built by name.

Importing this package registers the built-in networks (CIFAR ResNets, torchvision ResNets
and batch-norm VGGs), so `build_backbone` and `list_backbones` see them without any further
import.
"""

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import build_backbone, list_backbones, register_backbone

# Imported for their side effect: each module registers its factories.
from glcan.backbones import cifar_resnet as _cifar_resnet  # noqa: E402,F401  isort: skip
from glcan.backbones import torchvision_nets as _torchvision_nets  # noqa: E402,F401  isort: skip

__all__ = ["Backbone", "build_backbone", "list_backbones", "register_backbone"]
