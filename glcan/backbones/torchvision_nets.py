"""torchvision's ResNets and batch-norm VGGs, taken apart into units.

We build torchvision's own model (``weights=None``: glcan never downloads weights) and hand
its module objects, not copies, to a `Backbone`. Chaining the units and the classifier then
runs exactly the layers torchvision's ``forward`` runs, in the same order, so these backbones
are torchvision's networks, not lookalikes; the tests check the outputs match.

Units: for ResNets the stem (conv1, bn1, relu, maxpool) and then every BasicBlock or
Bottleneck of layer1..layer4; for VGGs each conv stage, i.e. the conv-BN-ReLU layers up to
and including a max-pool (5 units).

``small_input=True`` applies the usual adaptation to 32x32 images, where an ImageNet stem
would leave almost nothing to convolve: ResNets get a 3x3 stride-1 stem without max-pool;
VGGs get a global-average-pool + linear classifier instead of the 7x7x512 -> 4096 MLP.
``in_channels != 3`` replaces the first convolution, keeping its shape otherwise.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn
from torchvision import models as tvm

from glcan.backbones.backbone import Backbone
from glcan.backbones.registry import register_backbone

_RESNETS: dict[str, Callable[..., tvm.ResNet]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
    "resnet152": tvm.resnet152,
}

# Builder and torchvision's layer-config key (``torchvision.models.vgg.cfgs``) per VGG.
_VGGS: dict[str, tuple[Callable[..., tvm.VGG], str]] = {
    "vgg11_bn": (tvm.vgg11_bn, "A"),
    "vgg13_bn": (tvm.vgg13_bn, "B"),
    "vgg16_bn": (tvm.vgg16_bn, "D"),
    "vgg19_bn": (tvm.vgg19_bn, "E"),
}


def _fresh_conv(old: nn.Conv2d, in_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Conv2d:
    """A new first conv with ``old``'s output channels and bias, initialised like torchvision's."""
    conv = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        bias=old.bias is not None,
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def torchvision_resnet(
    arch: str, num_classes: int, in_channels: int = 3, small_input: bool | None = None
) -> Backbone:
    """Build a torchvision ResNet as a `Backbone`.

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        num_classes: outputs of the final linear layer.
        in_channels: channels of the input images.
        small_input: True for 32x32 inputs: 3x3 stride-1 stem, no max-pool. None means False.

    Returns:
        A backbone with units ``[stem, *layer1, *layer2, *layer3, *layer4]`` and classifier
        ``(avgpool, flatten, fc)``, all torchvision's own modules.
    """
    model = _RESNETS[arch](weights=None, num_classes=num_classes)
    if small_input:
        model.conv1 = _fresh_conv(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        stem = nn.Sequential(model.conv1, model.bn1, model.relu)
    else:
        if in_channels != 3:
            model.conv1 = _fresh_conv(model.conv1, in_channels, kernel_size=7, stride=2, padding=3)
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    units: list[nn.Module] = [stem]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        units.extend(layer)
    classifier = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
    return Backbone(units, classifier, name=arch)


def torchvision_vgg(arch: str, num_classes: int, in_channels: int = 3, small_input: bool | None = None) -> Backbone:
    """Build a torchvision batch-norm VGG as a `Backbone`.

    Args:
        arch: ``vgg11_bn``, ``vgg13_bn``, ``vgg16_bn`` or ``vgg19_bn``.
        num_classes: outputs of the final linear layer.
        in_channels: channels of the input images.
        small_input: True for 32x32 inputs: classifier is global-average-pool + one linear
            layer from 512 features. None means False (torchvision's own classifier).

    Returns:
        A backbone with 5 units, one per conv stage, each ending in its max-pool.
    """
    builder, cfg = _VGGS[arch]
    model: tvm.VGG | None = None
    if small_input:
        # Only the conv layers are kept, so skip building (and initialising) torchvision's
        # ~120M-parameter MLP classifier; initialise exactly as torchvision's VGG does.
        features = tvm.vgg.make_layers(tvm.vgg.cfgs[cfg], batch_norm=True)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    else:
        model = builder(weights=None, num_classes=num_classes)
        features = model.features
    layers = list(features)
    if in_channels != 3:
        first = layers[0]
        assert isinstance(first, nn.Conv2d)
        layers[0] = _fresh_conv(first, in_channels, kernel_size=3, stride=1, padding=1)
    units: list[nn.Module] = []
    stage: list[nn.Module] = []
    for layer in layers:
        stage.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            units.append(nn.Sequential(*stage))
            stage = []
    if stage:  # torchvision's configs end in a max-pool; keep anything after it all the same
        units.append(nn.Sequential(*stage))
    if model is None:
        linear = nn.Linear(512, num_classes)
        nn.init.normal_(linear.weight, 0, 0.01)  # as torchvision initialises VGG's linears
        nn.init.zeros_(linear.bias)
        classifier: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), linear)
    else:
        classifier = nn.Sequential(model.avgpool, nn.Flatten(1), model.classifier)
    return Backbone(units, classifier, name=arch)


for _name in _RESNETS:
    register_backbone(_name)(partial(torchvision_resnet, _name))
for _name in _VGGS:
    register_backbone(_name)(partial(torchvision_vgg, _name))
del _name
