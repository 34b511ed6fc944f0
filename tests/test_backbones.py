"""Backbones: the unit decomposition must keep each network's forward pass and parameters.

The torchvision comparisons are the key tests: they show that chaining our units runs
exactly torchvision's network, not something that merely has the right shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision import models as tvm

from glcan.backbones import Backbone, build_backbone, list_backbones, register_backbone

CIFAR_NAMES = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
TV_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]


def test_registry_lists_builtin_backbones() -> None:
    names = list_backbones()
    assert set(CIFAR_NAMES + TV_NAMES) <= set(names)
    assert names.index("resnet18") < names.index("resnet20") < names.index("resnet110")


@pytest.mark.parametrize("name", [n for n in list_backbones() if not n.startswith("vit")])  # ViTs: test_vit.py
def test_every_backbone_is_units_then_classifier(name: str) -> None:
    # Shapes only, so on the meta device: VGG's classifier alone is 120M parameters to initialise.
    with torch.device("meta"):
        backbone = build_backbone(name, num_classes=7).eval()
    assert isinstance(backbone, Backbone) and backbone.name == name
    with torch.no_grad():
        h = torch.randn(2, 3, 32, 32, device="meta")
        for unit in backbone.units:
            h = unit(h)
            assert h.dim() == 4 and h.shape[0] == 2
        assert backbone.classifier(h).shape == (2, 7)


def _reference_cifar_resnet(net: Backbone, x: torch.Tensor) -> torch.Tensor:
    """He et al.'s CIFAR ResNet written out with functional ops on the backbone's own weights:
    conv-BN-ReLU stem; per block relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), the
    shortcut a strided 1x1 conv + BN where the shape changes; global average pool; linear."""
    def bn(m: torch.nn.BatchNorm2d, t: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=m.eps)

    stem_conv, stem_bn = net.units[0][0], net.units[0][1]
    h = F.relu(bn(stem_bn, F.conv2d(x, stem_conv.weight, padding=1)))
    for block in net.units[1:]:
        stride = block.conv1.stride[0]
        out = F.relu(bn(block.bn1, F.conv2d(h, block.conv1.weight, stride=stride, padding=1)))
        out = bn(block.bn2, F.conv2d(out, block.conv2.weight, padding=1))
        if isinstance(block.shortcut, torch.nn.Identity):
            short = h
        else:
            short = bn(block.shortcut[1], F.conv2d(h, block.shortcut[0].weight, stride=stride))
        h = F.relu(out + short)
    linear = net.classifier[-1]
    return F.linear(h.mean(dim=(2, 3)), linear.weight, linear.bias)


@pytest.mark.parametrize("name", CIFAR_NAMES)
def test_cifar_resnet_matches_the_paper_written_out(name: str) -> None:
    torch.manual_seed(0)
    net = build_backbone(name, num_classes=7)
    for m in net.modules():  # non-trivial statistics, so a BatchNorm applied in the wrong place shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _reference_cifar_resnet(net, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TV_NAMES)
def test_small_input_variant_keeps_units_and_forward(name: str) -> None:
    # stem + residual blocks (2-2-2-2, 3-4-6-3, 3-4-23-3, 3-8-36-3) or 5 VGG conv stages
    expected_units = {"resnet18": 9, "resnet34": 17, "resnet50": 17, "resnet101": 34, "resnet152": 51}.get(name, 5)
    backbone = build_backbone(name, num_classes=5, small_input=True).eval()
    assert backbone.num_units == expected_units
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = backbone.classifier(backbone.features(x))
    assert out.shape == (2, 5)


@pytest.mark.parametrize(
    ("name", "tv_builder", "size"),
    [("resnet18", tvm.resnet18, 64), ("resnet50", tvm.resnet50, 64),
     pytest.param("vgg11_bn", tvm.vgg11_bn, 32, marks=pytest.mark.slow)],  # 2 x 130M parameters initialised
)
def test_matches_torchvision_forward(name: str, tv_builder, size: int) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, num_classes=10, small_input=False).eval()
    torch.manual_seed(0)
    reference = tv_builder(weights=None, num_classes=10).eval()
    for ours, theirs in zip(backbone.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)  # same initialisation, so the forward test is meaningful
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), reference(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "units"),
    [("resnet20", 10), ("resnet32", 16), ("resnet110", 55), ("resnet18", 9), ("resnet50", 17), ("vgg16_bn", 5)],
)
def test_unit_counts(name: str, units: int) -> None:
    with torch.device("meta"):  # structure only
        assert build_backbone(name, num_classes=10).num_units == units


@pytest.mark.parametrize(("name", "published"), [("resnet20", 0.27e6), ("resnet110", 1.7e6)])
def test_cifar_parameter_counts(name: str, published: float) -> None:
    count = sum(p.numel() for p in build_backbone(name, num_classes=10).parameters())
    assert abs(count - published) / published < 0.05, count


@pytest.mark.parametrize(
    ("name", "small_input"), [("resnet20", None), ("resnet18", True), ("vgg11_bn", True)]
)
def test_every_parameter_gets_a_gradient(name: str, small_input: bool | None) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(name, num_classes=10, small_input=small_input).train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 3])
    torch.nn.functional.cross_entropy(backbone(x), y).backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


def test_small_input_resnet_keeps_resolution() -> None:
    backbone = build_backbone("resnet18", num_classes=10, small_input=True).eval()
    with torch.no_grad():
        h = backbone.units[0](torch.randn(2, 3, 32, 32))
    assert h.shape == (2, 64, 32, 32)


@pytest.mark.parametrize(("name", "small_input"), [("resnet20", None), ("resnet18", False), ("resnet18", True), ("vgg11_bn", True)])
def test_single_channel_input(name: str, small_input: bool | None) -> None:
    backbone = build_backbone(name, num_classes=10, in_channels=1, small_input=small_input).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 10)


def test_block_does_not_modify_its_input() -> None:
    # Under local learning a unit's input is a detached tensor that other heads may also read.
    backbone = build_backbone("resnet20", num_classes=10).train()
    h = torch.randn(2, 3, 16, 16)
    for unit in backbone.units:
        before = h.clone()
        out = unit(h)
        assert torch.equal(h, before)
        h = out.detach()


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown backbone 'resnt20' \(did you mean resnet20\?\); choose one of: .*resnet20") as info:
        build_backbone("resnt20", num_classes=10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "argument"), [({"num_classes": 1}, "num_classes"), ({"num_classes": 10, "in_channels": 0}, "in_channels")]
)
def test_bad_arguments_are_clear_errors(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        build_backbone("resnet20", **kwargs)


def test_register_custom_backbone_and_reject_duplicates() -> None:
    name = "test_tiny_net"

    @register_backbone(name)
    def tiny(num_classes: int, in_channels: int, small_input: bool | None) -> Backbone:
        units = [torch.nn.Conv2d(in_channels, 4, 3, padding=1)]
        head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, num_classes))
        return Backbone(units, head, name=name)

    try:
        assert name in list_backbones()
        assert build_backbone(name, num_classes=3)(torch.randn(1, 3, 8, 8)).shape == (1, 3)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(name)(tiny)
    finally:
        from glcan.backbones import registry

        registry._BACKBONES._factories.pop(name, None)
