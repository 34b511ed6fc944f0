"""Auxiliary heads: the GCNet context block, every registered head, the FLOP budget, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glcan.heads import AuxHead, ContextBlock, ModuleHead, build_head, list_heads, register_head
from glcan.heads import registry
from glcan.heads.baselines import InfoProHead

IMAGE = (3, 32, 32)
SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64, 1, 1), (512, 7, 7)]
BUILTIN = ("glcan", "linear", "dgl", "infopro")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("pooling", ["gc", "avg", "max"])
@pytest.mark.parametrize("fusion", ["add", "mul"])
def test_context_block_is_identity_at_init(pooling: str, fusion: str) -> None:
    block = ContextBlock(16, pooling=pooling, fusion=fusion)
    x = torch.randn(3, 16, 7, 5)
    assert torch.equal(block(x), x)


def test_attention_is_a_distribution_over_positions() -> None:
    block = ContextBlock(8)
    nn.init.normal_(block.mask.weight, std=3.0)  # a peaked, non-uniform attention
    x = torch.randn(4, 8, 6, 5)
    a = block.attention(x)
    assert a.shape == (4, 1, 30)
    assert (a >= 0).all()
    assert torch.allclose(a.sum(-1), torch.ones(4, 1))
    expected = (x.flatten(2) * a).sum(-1)  # the context: the attention-weighted sum
    assert torch.allclose(block.context(x).flatten(1), expected, atol=1e-6)
    with pytest.raises(ValueError, match="gc"):
        ContextBlock(8, pooling="max").attention(x)


def test_avg_pooling_is_gc_attention_with_frozen_zero_scores() -> None:
    """avg runs the very ops gc runs, with the attention scores frozen at zero: uniform weights,
    the exact mean, and a mask no optimizer moves. GC against avg then changes one thing."""
    avg = ContextBlock(8, pooling="avg")
    x = torch.randn(4, 8, 6, 5)
    assert torch.allclose(avg.attention(x), torch.full((4, 1, 30), 1 / 30))
    assert torch.allclose(avg.context(x), x.mean(dim=(2, 3), keepdim=True), atol=1e-6)
    assert not any(p.requires_grad for p in avg.mask.parameters())
    head = build_head("glcan", (8, 6, 5), 3, image_shape=IMAGE, pooling="avg")
    before = head.context_block.mask.weight.clone()
    opt = torch.optim.SGD(head.parameters(), lr=1.0)
    for _ in range(2):
        opt.zero_grad()
        head.loss(torch.randn(4, 8, 6, 5), torch.tensor([0, 1, 2, 0]), torch.randn(4, *IMAGE))[0].backward()
        opt.step()
    assert torch.equal(head.context_block.mask.weight, before)


def test_context_block_learns_from_zero_init() -> None:
    block = ContextBlock(8)
    last = block.transform[-1]
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    x, goal = torch.randn(4, 8, 5, 5), torch.randn(4, 8, 5, 5)
    F.mse_loss(block(x), goal).backward()
    opt.step()
    assert last.weight.abs().sum() > 0 and last.bias.abs().sum() > 0
    assert not torch.equal(block(x), x)


def test_context_block_targets_and_bad_options() -> None:
    block = ContextBlock(16, out_channels=24)
    x, target = torch.randn(2, 16, 8, 8), torch.randn(2, 24, 3, 3)
    assert torch.equal(block(x, target), target) and block.context(x).shape == (2, 16, 1, 1)
    with pytest.raises(ValueError, match="24"):
        block(x)  # the default target (x) has 16 channels, not 24
    for kwargs, word in [({"pooling": "mean"}, "pooling"), ({"fusion": "cat"}, "fusion"), ({"ratio": 0}, "ratio")]:
        with pytest.raises(ValueError, match=word):
            ContextBlock(8, **kwargs)


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_head_shapes_and_gradients(name: str, shape: tuple[int, int, int]) -> None:
    head = build_head(name, shape, 10, image_shape=IMAGE, block_index=1, num_blocks=4)
    assert isinstance(head, AuxHead)
    n = 4
    h, x, y = torch.randn(n, *shape, requires_grad=True), torch.randn(n, *IMAGE), torch.randint(0, 10, (n,))
    loss, logits = head.loss(h, y, x)
    assert logits.shape == (n, 10) and loss.dim() == 0
    loss.backward()
    assert h.grad is not None and h.grad.abs().sum() > 0  # the head trains its block
    missing = [k for k, p in head.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing}"
    head.eval()
    with torch.no_grad():
        assert head(h[:1]).shape == (1, 10)  # batch of one in evaluation


@pytest.mark.parametrize("options", [
    {"pooling": "avg"}, {"pooling": "max", "fusion": "mul"}, {"hidden": 64, "grid": 1}, {"fusion": "both"},
    {"attention_heads": 4}, {"fuse_input": True}, {"local_path": False}, {"context_in_classifier": False},
    {"relay": 16},
])
def test_glcan_head_options(options: dict) -> None:
    """Every option trains every parameter it has (two steps: the zero-initialised fusion passes
    no gradient back on the first)."""
    torch.manual_seed(0)
    head = build_head("glcan", (32, 16, 16), 7, image_shape=IMAGE, **options)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        h = torch.randn(4, 32, 16, 16, requires_grad=True)
        loss, logits = head.loss(h, torch.tensor([0, 6, 1, 2]), torch.randn(4, *IMAGE))
        loss.backward()
        opt.step()
    assert logits.shape == (4, 7)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters() if p.requires_grad)


def test_multi_head_attention_pools_each_channel_group_with_its_own_map() -> None:
    block = ContextBlock(8, attention_heads=2).double()
    x = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    attn = block.attention(x)  # N x 2 x HW
    assert attn.shape == (3, 2, 20) and torch.allclose(attn.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    expected = torch.cat([(x[:, :4].flatten(2) * attn[:, :1]).sum(-1), (x[:, 4:].flatten(2) * attn[:, 1:]).sum(-1)], 1)
    torch.testing.assert_close(block.context(x).flatten(1), expected)


def test_glcan_head_starts_as_its_local_path() -> None:
    head = build_head("glcan", (16, 32, 32), 10, image_shape=IMAGE).eval()
    h = torch.randn(2, 16, 32, 32)
    fused, ctx = head.features(h)
    assert torch.equal(fused, torch.relu(head.local(head.pool(h))))
    assert fused.shape == (2, 32, 4, 4) and ctx.shape == (2, 16, 1, 1)


def test_glcan_one_buffer_backward_is_exact() -> None:
    from glcan.heads.glcan import _ReadOnce

    block = ContextBlock(5).double()
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    ctx, pooled = _ReadOnce.apply(x, block.mask.weight, block.mask.bias, (2, 2))
    assert torch.allclose(ctx, block.context(x)) and torch.allclose(pooled, F.adaptive_avg_pool2d(x, 2))
    assert torch.autograd.gradcheck(lambda *t: _ReadOnce.apply(*t, (2, 2)), (x, block.mask.weight, block.mask.bias))


def _glcan_logits_by_convolutions(head, h: torch.Tensor) -> torch.Tensor:
    """The GLCAN head written with the convolutions its fast paths replace: the C -> 1 attention
    conv, the context transform as 1x1 convs and LayerNorm on N x C x 1 x 1 maps."""
    cb = head.context_block
    attn = torch.softmax(F.conv2d(h, cb.mask.weight, cb.mask.bias).flatten(2), dim=-1)
    ctx = torch.matmul(h.flatten(2), attn.transpose(1, 2)).unsqueeze(-1)
    local = head.local(F.adaptive_avg_pool2d(h, head.pool_hw))
    fused = torch.relu(local + cb.transform(ctx))  # nn.Sequential of Conv2d, LayerNorm([C,1,1]), ReLU, Conv2d
    return head.classifier(torch.cat([head.grid(fused).flatten(1), ctx.flatten(1)], dim=1))


def test_glcan_fast_paths_equal_the_convolutions() -> None:
    """Attention as a matmul and the transform as linear layers: same values, same gradients."""
    torch.manual_seed(0)
    fast = build_head("glcan", (16, 8, 8), 10, image_shape=IMAGE).double()
    nn.init.normal_(fast.context_block.transform[-1].weight)  # non-zero: the context path counts
    slow = copy.deepcopy(fast)
    h = torch.randn(3, 16, 8, 8, dtype=torch.float64, requires_grad=True)
    h2 = h.detach().clone().requires_grad_()
    out_fast, out_slow = fast(h), _glcan_logits_by_convolutions(slow, h2)
    torch.testing.assert_close(out_fast, out_slow)
    (out_fast ** 2).sum().backward()
    (out_slow ** 2).sum().backward()
    torch.testing.assert_close(h.grad, h2.grad)
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_context_block_attention_and_transform_equal_the_convolutions() -> None:
    block = ContextBlock(12, pooling="gc").double()
    nn.init.normal_(block.transform[-1].weight)
    x = torch.randn(2, 12, 5, 7, dtype=torch.float64)
    by_conv = torch.softmax(F.conv2d(x, block.mask.weight, block.mask.bias).flatten(2), dim=-1)
    torch.testing.assert_close(block.attention(x), by_conv)
    ctx = torch.randn(2, 12, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(block.transform_context(ctx), block.transform(ctx))


def test_infopro_loss_mixes_reconstruction_and_task() -> None:
    head = build_head("infopro", (16, 32, 32), 10, image_shape=IMAGE)
    assert isinstance(head, InfoProHead) and head.lam == 0.5
    h, x, y = torch.randn(4, 16, 32, 32), torch.randn(4, *IMAGE), torch.randint(0, 10, (4,))
    losses = {}
    for lam in (0.0, 0.5, 1.0):
        head.lam = lam
        losses[lam], logits = head.loss(h, y, x)
    ce, rec = F.cross_entropy(logits, y), F.mse_loss(head.reconstruct(h), x)
    assert torch.equal(losses[0.0], ce) and torch.allclose(losses[1.0], rec)
    assert torch.allclose(losses[0.5], 0.5 * rec + 0.5 * ce) and not torch.allclose(rec, ce)
    with pytest.raises(ValueError, match="lam"):
        build_head("infopro", (16, 32, 32), 10, image_shape=IMAGE, lam=1.5)


def test_heads_run_under_fake_tensors() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode  # the memory predictor's mode

    from torch._subclasses.fake_tensor import FakeTensor

    with FakeTensorMode():
        for name in BUILTIN:
            head = build_head(name, (32, 16, 16), 10, image_shape=IMAGE)
            h = torch.randn(8, 32, 16, 16, requires_grad=True)
            loss, logits = head.loss(h, torch.randint(0, 10, (8,)), torch.randn(8, *IMAGE))
            loss.backward()
            assert isinstance(loss, FakeTensor) and loss.shape == () and logits.shape == (8, 10), name
            assert h.grad is not None and h.grad.shape == h.shape, name
            for pname, p in head.named_parameters():
                assert p.grad is not None and p.grad.shape == p.shape, f"{name}: {pname}"


def _flops(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("c,s", [(16, 32), (32, 16), (64, 8)])
def test_glcan_head_costs_under_ten_percent_of_a_unit(c: int, s: int) -> None:
    x = torch.randn(1, c, s, s)
    conv_bn_relu = [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
    unit = nn.Sequential(*conv_bn_relu, *conv_bn_relu).eval()  # a basic block: shared layers, same FLOPs
    head = build_head("glcan", (c, s, s), 10, image_shape=IMAGE).eval()
    unit_flops, head_flops = _flops(unit, x), _flops(head, x)
    assert unit_flops == 2 * 2 * 9 * c * c * s * s  # 2 FLOPs per MAC
    assert head_flops <= 0.10 * unit_flops, f"head {head_flops} vs unit {unit_flops}"


def test_glcan_head_fits_beside_the_stem() -> None:
    # K=16 on ResNet-32 leaves the stem (one 3x3 conv 3 -> 16) alone in block 0.
    stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    head = build_head("glcan", (16, 32, 32), 10, image_shape=IMAGE).eval()
    assert _flops(head, torch.randn(1, 16, 32, 32)) <= 0.10 * _flops(stem, torch.randn(1, *IMAGE))


def test_unknown_head_name() -> None:
    assert set(BUILTIN) <= set(list_heads())
    with pytest.raises(ValueError, match="unknown head 'nope'; choose one of: .*glcan.*linear"):
        build_head("nope", (16, 8, 8), 10, image_shape=IMAGE)


def test_unknown_head_option() -> None:
    msg = r"head 'linear' got unknown option\(s\): foo; it takes: no options"
    with pytest.raises(ValueError, match=msg):
        build_head("linear", (16, 8, 8), 10, image_shape=IMAGE, foo=1)
    with pytest.raises(ValueError, match=r"unknown option\(s\): widht; it takes: width, pool_size"):
        build_head("glcan", (16, 8, 8), 10, image_shape=IMAGE, widht=8)
    for shape in [(16,), (16, 8, 8, 2), (16, 0, 8)]:  # (T, D) is tokens: glcan's token form (test_vit.py)
        with pytest.raises(ValueError, match="in_shape"):
            build_head("glcan", shape, 10, image_shape=IMAGE)


def test_register_head(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry._HEADS, "_factories", dict(registry._HEADS._factories))
    with pytest.raises(ValueError, match="already registered"):
        register_head("linear")(ModuleHead)

    @register_head("pool_fc")
    def _factory(in_shape: tuple, num_classes: int, *, num_blocks: int, scale: float = 1.0) -> AuxHead:
        assert num_blocks == 2  # placement keywords reach factories that declare them
        return ModuleHead(nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes)))

    assert "pool_fc" in list_heads()
    head = build_head("pool_fc", (8, 4, 4), 3, image_shape=IMAGE, num_blocks=2, scale=2.0)
    assert head(torch.randn(2, 8, 4, 4)).shape == (2, 3)
