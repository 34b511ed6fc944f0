"""Vision Transformers: torchvision's ViT taken apart into units, token heads, and local learning on it."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision import models as tvm

from conftest import CONFIGS, block_grads, fit, torch_memtracker_peak
from glcan.backbones import build_backbone
from glcan.core.step import local_step
from glcan.heads import build_head
from glcan.heads.tokens import GLCanTokenHead, LinearTokenHead
from glcan.lit import GLCanModule
from glcan.lit.plan import predicted_peak
from glcan.memory.predictor import measure_steps, predict

TOKENS = (65, 128)  # vit_tiny on 32x32: the class token and 8x8 patches, width 128


def _torchvision_name(name: str) -> str:
    """Our unit/classifier parameter name as torchvision's VisionTransformer names it."""
    if name.startswith("units.0."):
        rest = name[len("units.0."):]
        return {"pos_embedding": "encoder.pos_embedding"}.get(rest, rest)
    if name.startswith("units."):
        i, rest = name[len("units."):].split(".", 1)
        return f"encoder.layers.encoder_layer_{int(i) - 1}.{rest}"
    return name.replace("classifier.0.", "encoder.ln.").replace("classifier.2.", "heads.")


@pytest.mark.parametrize("name,builder,size,channels,units", [
    ("vit_tiny", lambda n: tvm.VisionTransformer(32, 4, 6, 4, 128, 256, num_classes=n), 32, 3, 7),
    pytest.param("vit_b_16", lambda n: tvm.vit_b_16(weights=None, image_size=32, num_classes=n), 32, 3, 13,
                 marks=pytest.mark.slow),  # 86M parameters initialised twice
])
def test_units_then_classifier_are_torchvision_vit(name, builder, size, channels, units):
    """Every parameter maps one to one onto torchvision's model; with random values in all of
    them (torchvision zero-initialises the classifier), the outputs match."""
    torch.manual_seed(0)
    ours = build_backbone(name, num_classes=7, in_channels=channels, image_size=(size, size)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.05)
    reference = builder(7).eval()
    mapped = {_torchvision_name(k): v for k, v in ours.state_dict().items()}
    assert set(mapped) == set(reference.state_dict())
    reference.load_state_dict(mapped)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        h = x
        for unit in ours.units:
            h = unit(h)
            assert h.shape == (2, (size // reference.patch_size) ** 2 + 1, reference.hidden_dim)
        torch.testing.assert_close(ours.classifier(h), reference(x), rtol=0, atol=1e-5)
    assert ours.num_units == units  # the patch embedding and each encoder layer


def test_vit_takes_the_data_channels_and_refuses_sizes_it_cannot_patch():
    net = build_backbone("vit_tiny", num_classes=10, in_channels=1, image_size=(32, 32))
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    for size in [(30, 30), (32, 28)]:
        with pytest.raises(ValueError, match="square images whose side is a multiple of 4"):
            build_backbone("vit_tiny", num_classes=10, image_size=size)


@pytest.mark.parametrize("cls", [GLCanTokenHead, LinearTokenHead])
@pytest.mark.parametrize("class_token", [True, False])
def test_token_heads_train_every_parameter(cls, class_token):
    torch.manual_seed(0)
    head = cls(TOKENS, 10, class_token=class_token)
    h = torch.randn(4, *TOKENS, requires_grad=True)
    for _ in range(2):  # the zero-initialised transform passes no gradient back on the first step
        loss, logits = head.loss(h, torch.tensor([0, 1, 2, 3]), torch.zeros(4, 1, 32, 32))
        assert logits.shape == (4, 10)
        head.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in head.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
    missing = [n for n, p in head.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing


def test_token_avg_pooling_is_gc_with_frozen_zero_scores():
    """``pooling: avg`` runs the same attention code with zero scores: the mean of the patch
    tokens, and a gc head whose scores are zeroed computes exactly the same."""
    torch.manual_seed(0)
    gc, avg = GLCanTokenHead(TOKENS, 10), GLCanTokenHead(TOKENS, 10, pooling="avg")
    z = torch.randn(3, *TOKENS)
    torch.testing.assert_close(avg.context(z[:, 1:]), z[:, 1:].mean(1))
    assert not any(p.requires_grad for p in avg.context.parameters())
    with torch.no_grad():
        gc.context.score.weight.zero_()
        gc.context.score.bias.zero_()
    torch.testing.assert_close(gc.context(z), avg.context(z))


def test_glcan_token_head_starts_as_its_local_path():
    torch.manual_seed(0)
    head = GLCanTokenHead(TOKENS, 10)
    h = torch.randn(3, *TOKENS)
    z = head.norm(h)
    expected = head.classifier(torch.cat([torch.nn.functional.gelu(head.local(z[:, 0])), head.context(z[:, 1:])], 1))
    torch.testing.assert_close(head(h), expected)


def test_registry_builds_token_forms_and_refuses_map_heads_on_tokens():
    assert isinstance(build_head("glcan", TOKENS, 10, image_shape=(1, 32, 32)), GLCanTokenHead)
    assert isinstance(build_head("linear", TOKENS, 10, image_shape=(1, 32, 32)), LinearTokenHead)
    for name in ("dgl", "infopro"):
        with pytest.raises(ValueError, match=f"head '{name}' reads feature maps .* token heads: glcan, linear"):
            build_head(name, TOKENS, 10, image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="unknown option"):
        build_head("glcan", TOKENS, 10, image_shape=(1, 32, 32), grid=2)  # a map head's option


def _local_vit(k: int = 4, head: str = "glcan") -> GLCanModule:
    torch.manual_seed(0)
    return GLCanModule.planned(backbone="vit_tiny", method="local", num_blocks=k, split="uniform", head=head,
                               image_shape=(1, 32, 32), num_classes=10, batch_size=4)


@pytest.mark.parametrize("target", [0, 2])
def test_vit_block_gradients_come_only_from_its_own_head(target):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
    with_all = block_grads(_local_vit().net, x, y, target, silence_others=False)
    only_own = block_grads(_local_vit().net, x, y, target, silence_others=True)
    assert with_all and all(torch.equal(a, b) for a, b in zip(with_all, only_own))
    assert any(g.abs().sum() > 0 for g in with_all)


def test_local_vit_deploys_torchvision_network_and_trains_every_block():
    module = _local_vit()
    before = [p.detach().clone() for p in module.net.parameters()]
    optimizers = module.build_optimizers()

    def step(k: int) -> None:
        optimizers[k].step()
        optimizers[k].zero_grad(set_to_none=True)

    local_step(module.net, torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,)), step=step)
    for k, block in enumerate(module.net.blocks):
        assert any(not torch.equal(p, before[i]) for i, p in enumerate(module.net.parameters())
                   if any(p is q for q in block.parameters())), f"block {k} did not train"
    deployed = module.deployable()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), module.eval()(x))


@pytest.mark.slow  # three predictions; the byte-exact agreement below stays in the default suite
def test_predicted_memory_of_a_local_vit_is_below_e2e_and_counts_attention():
    common = {"backbone": "vit_tiny", "image_shape": (1, 32, 32), "num_classes": 10, "batch_size": 16}
    e2e = predicted_peak({**common, "method": "e2e"})
    local = predicted_peak({**common, "method": "local", "num_blocks": 4, "boundaries": [2, 4, 6]})
    k6 = predicted_peak({**common, "method": "local", "num_blocks": 6, "boundaries": list(range(2, 7))})
    assert k6.peak_bytes < local.peak_bytes < e2e.peak_bytes
    # one encoder layer's activations at batch 16: at least the MLP's 256-wide hidden (16 x 65 x 256)
    # and the attention's inputs and outputs
    assert k6.parts["activations"] > 16 * 65 * 256 * 4


@pytest.mark.slow
def test_the_local_vit_config_fits_end_to_end(tmp_path):
    """The shipped local ViT config trains, tests and writes its summary through train.py, shrunk
    to a few batches (test_configs.py instantiates the E2E one)."""
    fit(str(CONFIGS / "mnist5k_vit_tiny_glcan_k4.yaml"), tmp_path, "--data.batch_size", "16")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["backbone"] == "vit_tiny" and summary["num_blocks"] == 4 and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["boundaries"] and summary["peak_memory_bytes"] > 0


def test_vit_meter_and_predictor_agree_with_torchs_memtracker():
    """Attention's saved tensors counted to the byte: the meter on a real ViT step, the predictor on
    fake tensors and torch's own MemTracker agree (local K=4, vit_tiny, batch 4)."""
    module = _local_vit()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    measured = measure_steps(module, x, y).peak_bytes
    predicted = predict(lambda: _local_vit(), 4, (1, 32, 32), 10).peak_bytes
    assert measured == predicted == torch_memtracker_peak(_local_vit(), x, y)
