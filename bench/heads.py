"""What each auxiliary head costs beside its block: FLOPs, parameters, activation memory.

Splits CIFAR ResNet-32 (stem + 15 basic blocks = 16 units) uniformly into K blocks and, for
every block, prints the block's and its head's

* forward FLOPs at batch 1, from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
  and matrix products, 2 FLOPs per multiply-add; BN, ReLU, pooling and softmax are not
  counted, for block and head alike);
* parameters;
* activation memory: the bytes of the distinct tensor storages saved for backward during
  one training-mode forward at batch 128 (fp32), seen with
  ``torch.autograd.graph.saved_tensors_hooks``. Parameters are not counted. The block's
  figure includes its input when a layer saves it; the head's excludes the block output
  ``h`` it reads (the block holds it already), so it is what the head *adds*;
* the head's peak: the most bytes its forward + backward at batch 128 hold at once beyond
  ``h`` and the image (saved tensors, transient gradients, ``h.grad``), from
  ``glcan.memory.tracker``. This, not the saved bytes, is what it adds to the block's peak.

Usage::

    python bench/heads.py                 # GLCAN table for K=4 and K=16, then all heads
    python bench/heads.py --ks 4 --batch 64
"""

from __future__ import annotations

import argparse
import platform
from typing import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from glcan.heads import build_head, list_heads

IMAGE = (3, 32, 32)
NUM_CLASSES = 10


def resnet32_units() -> list[nn.Module]:
    """The 16 units of glcan's CIFAR ResNet-32: the stem, then 15 basic blocks."""
    from glcan.backbones import build_backbone

    return list(build_backbone("resnet32", NUM_CLASSES).units)


def uniform_ranges(n: int, k: int) -> list[tuple[int, int]]:
    """Blocks of (near) equal unit counts, the first ones one unit longer if needed."""
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def flops(module: nn.Module, x: torch.Tensor) -> int:
    module.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def saved_bytes(fn, exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of distinct storages saved for backward while ``fn()`` runs (minus ``exclude``)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def head_peak(head: nn.Module, h: torch.Tensor, y: torch.Tensor, image: torch.Tensor) -> int:
    """Peak bytes a head's forward + backward allocate beyond the tensors it is given.

    Uses glcan's exact storage tracker; ``h`` and the image are registered first, so views of
    them are not counted as new memory. Returns -1 if the tracker is not available.
    """
    try:
        from glcan.memory.tracker import MemoryTracker
    except ImportError:
        return -1
    tracker = MemoryTracker()
    tracker.register([h, image], "input")
    with tracker:
        tracker.reset_peak()
        base = tracker.current
        head.loss(h, y, image)[0].backward()
    return tracker.peak - base


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(units: list[nn.Module], k: int, heads: list[str], batch: int) -> list[dict]:
    rows = []
    image = torch.randn(batch, *IMAGE)
    x1, xb = torch.randn(1, *IMAGE), image
    for idx, (a, b) in enumerate(uniform_ranges(len(units), k)):
        block = nn.Sequential(*units[a:b])
        row = {"k": idx, "units": f"{a}-{b - 1}" if b - a > 1 else f"{a}", "shape": None}
        row["block_flops"] = flops(block, x1)
        row["block_params"] = params(block)
        block.train()
        pids = list(block.parameters())
        row["block_saved"] = saved_bytes(lambda: block(xb), exclude=pids)
        with torch.no_grad():
            h1, hb = block(x1), block(xb)
        shape = tuple(hb.shape[1:])
        row["shape"] = "x".join(map(str, shape))
        for name in heads:  # "glcan:avg" is the glcan head with pooling="avg"
            base, _, pooling = name.partition(":")
            opts = {"pooling": pooling} if pooling else {}
            head = build_head(base, shape, NUM_CLASSES, image_shape=IMAGE, block_index=idx, num_blocks=k, **opts)
            y = torch.randint(0, NUM_CLASSES, (batch,))
            hg = hb.clone().requires_grad_(True)
            head.train()
            saved = saved_bytes(lambda: head.loss(hg, y, image)[0], exclude=[hg, *head.parameters()])
            head.train()
            peak = head_peak(head, hb.clone().requires_grad_(True), y, image)
            row[name] = {"flops": flops(head, h1), "params": params(head), "saved": saved, "peak": peak}
        rows.append(row)
        x1, xb = h1, hb
    return rows


def pct(a: float, b: float) -> str:
    return f"{100 * a / b:.1f}%"


def print_glcan(rows: list[dict], k: int) -> None:
    print(f"\nResNet-32, K={k} (uniform split), GLCAN head (default options)\n")
    print("| block | units | output | block MFLOPs | head MFLOPs | FLOPs | block params | head params | params "
          "| block saved MiB | head saved MiB | memory | head peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = r["glcan"]
        print(f"| {r['k']} | {r['units']} | {r['shape']} | {r['block_flops'] / 1e6:.2f} | {g['flops'] / 1e6:.3f} "
              f"| {pct(g['flops'], r['block_flops'])} | {r['block_params']:,} | {g['params']:,} "
              f"| {pct(g['params'], r['block_params'])} | {r['block_saved'] / 2**20:.2f} "
              f"| {g['saved'] / 2**20:.3f} | {pct(g['saved'], r['block_saved'])} | {g['peak'] / 2**20:.2f} |")


def print_all(rows: list[dict], k: int, heads: list[str]) -> None:
    print(f"\nResNet-32, K={k}: every head's FLOPs / saved bytes as % of its block's, head peak MiB\n")
    print("| block | output | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for r in rows:
        cells = [f"{pct(r[n]['flops'], r['block_flops'])} / {pct(r[n]['saved'], r['block_saved'])} / "
                 f"{r[n]['peak'] / 2**20:.2f}" for n in heads]
        print(f"| {r['k']} | {r['shape']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    heads = ["glcan", "glcan:avg"] + [n for n in ("linear", "dgl", "infopro") if n in list_heads()]
    units = resnet32_units()
    print(f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, "
          f"batch {args.batch} for memory, batch 1 for FLOPs")
    for k in args.ks:
        rows = measure(units, k, heads, args.batch)
        print_glcan(rows, k)
        print_all(rows, k, heads)


if __name__ == "__main__":
    main()
