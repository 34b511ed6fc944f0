"""Networks as `Backbone`s: ordered units plus a classifier, built by name.

Importing this package registers the built-in networks (CIFAR ResNets, torchvision ResNets
batch-norm VGGs and Vision Transformers for classification; EDSR-style networks for super-resolution), so
`build_backbone` and `list_backbones` see them without any further import.
"""

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import backbone_task, build_backbone, list_backbones, register_backbone

# Imported for their side effect: each module registers its factories.
from glcan.backbones import cifar_resnet as _cifar_resnet  # noqa: E402,F401  isort: skip
from glcan.backbones import torchvision_nets as _torchvision_nets  # noqa: E402,F401  isort: skip
from glcan.backbones import edsr as _edsr  # noqa: E402,F401  isort: skip
from glcan.backbones import vit as _vit  # noqa: E402,F401  isort: skip
from glcan.backbones import fcos as _fcos  # noqa: E402,F401  isort: skip

__all__ = ["Backbone", "backbone_task", "build_backbone", "list_backbones", "register_backbone"]
