"""Predicted training memory of Vision Transformers: E2E, checkpointing and local learning at every K.

The predictor every config uses (``glcan.memory.predictor.predict`` through
``glcan.lit.plan``: the network, its optimizers and one batch under FakeTensorMode, the
steady-state second step measured by the exact tensor-storage tracker), for torchvision's
ViT-B/16 at 224 px, batch 128, fp32, AdamW (two state tensors per parameter), and for the CPU
setting (``vit_tiny`` on 32 px mnist5k, batch 64, as its config). Attention runs through torch's
``scaled_dot_product_attention`` inside ``nn.MultiheadAttention``; what it saves for backward
is what the tracker counts. Local rows use GLCAN token heads (GC attention pooling over the
patch tokens fused with the class token) and the memory split; the last block trains through
the ViT's own LayerNorm and classifier. K=12 for ViT-B/16 is one encoder layer per block (the
patch embedding rides with the first).

Usage::

    python bench/vit_memory.py          # -> docs/benchmarks/memory_vit.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.io import write_text  # noqa: E402
from glcan.lit.plan import predicted_peak, variant  # noqa: E402

GiB = 2**30
ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003, "weight_decay": 0.3}}
SETTINGS = {  # and the K of one encoder layer per block
    "vit_b_16": ({"backbone": "vit_b_16", "image_shape": (3, 224, 224), "num_classes": 1000, "batch_size": 128}, 12),
    "vit_tiny": ({"backbone": "vit_tiny", "image_shape": (1, 32, 32), "num_classes": 10, "batch_size": 64}, 6),
}


def rows(layers: int) -> list[tuple[str, int, str]]:
    """(method, K, head): E2E with and without checkpointing, local at every K up to one layer
    per block, linear heads and recomputation at K=4 and one layer per block."""
    ks = [k for k in (2, 3, 4, 6, 12) if k <= layers]
    return [("e2e", 1, "glcan"), ("e2e_recompute", 1, "glcan"), *[("local", k, "glcan") for k in ks],
            *[(m, k, h) for m, h in (("local", "linear"), ("local_recompute", "glcan")) for k in (4, layers)]]

TARGETS = {("local", 4, "glcan"): 0.35, ("local", 12, "glcan"): 0.15}  # vit_b_16, local / E2E at most


def measure(setting: dict[str, Any], method: str, k: int, head: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    args = variant({**setting, "head": head, "split": "memory", "optimizer": ADAMW, "precision": "32-true"}, method, k)
    est = predicted_peak(args)
    return {"method": method, "k": k, "head": head, "peak": est.peak_bytes, "parts": est.parts,
            "boundaries": args.get("boundaries"), "peak_block": est.peak_block, "s": time.perf_counter() - t0}


def table(name: str, rows: list[dict[str, Any]]) -> list[str]:
    e2e = rows[0]["peak"]
    s = SETTINGS[name][0]
    out = [f"## {name}, {s['image_shape'][1]} px, batch {s['batch_size']}, fp32, AdamW", "",
           "| method | K | head | peak GiB | / E2E | resident GiB | activations GiB | peak block | boundaries |",
           "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        local = r["method"].startswith("local")
        resident = sum(r["parts"].get(p, 0) for p in ("parameters", "optimizer_state", "input"))
        out.append(f"| {r['method']} | {r['k'] if local else ''} | {r['head'] if local else ''} | {r['peak'] / GiB:.3f} | "
                   f"{r['peak'] / e2e:.3f} | {resident / GiB:.3f} | {r['parts'].get('activations', 0) / GiB:.3f} | "
                   f"{r['peak_block'] if local else ''} | {r['boundaries'] if local else ''} |")
    return out + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "memory_vit.md")
    a = p.parse_args()
    started = time.perf_counter()
    results = {}
    for name, (setting, layers) in SETTINGS.items():
        results[name] = []
        for method, k, head in rows(layers):
            r = measure(setting, method, k, head)
            results[name].append(r)
            print(f"[{name}] {method} K={k} {head}: {r['peak'] / GiB:.3f} GiB ({r['s']:.0f} s)", flush=True)
    b16 = results["vit_b_16"]
    targets = ["## Targets (vit_b_16, 224 px, batch 128, fp32)", "", "| target | predicted | |", "|---|---|---|"]
    for (method, k, head), goal in TARGETS.items():
        got = next(r for r in b16 if (r["method"], r["k"], r["head"]) == (method, k, head))["peak"] / b16[0]["peak"]
        targets.append(f"| {method} K={k} / E2E <= {goal} | {got:.3f} | "
                       f"{'met' if got <= goal else f'missed by {got - goal:.3f}'} |")
    e2e = b16[0]
    k12, lin = (next(r for r in b16 if (r["method"], r["k"], r["head"]) == ("local", 12, h)) for h in ("glcan", "linear"))

    def share(r: dict[str, Any], *parts: str) -> float:
        return sum(r["parts"].get(p, 0) for p in parts) / e2e["peak"]

    targets += ["", f"Where K=12 spends it: the resident bytes (parameters, AdamW state, the batch) are "
                f"{share(e2e, 'parameters', 'optimizer_state', 'input'):.3f} of E2E's peak without heads and "
                f"{share(k12, 'parameters', 'optimizer_state', 'input'):.3f} with the eleven GLCAN token heads "
                f"(linear heads: {share(lin, 'parameters', 'optimizer_state', 'input'):.3f}); one block's "
                f"activations, one encoder layer at batch 128, add {share(k12, 'activations'):.3f}. With one layer "
                "per block that sum is the floor, above 0.15 whatever the head: below it needs units smaller than "
                "an encoder layer (its attention and MLP halves) or recomputation inside one, neither built."]
    text = ["# Predicted training memory: Vision Transformers", "",
            f"Command: `python bench/vit_memory.py` ({time.perf_counter() - started:.0f} s). Machine: "
            f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, no GPU: FakeTensorMode "
            "predictor, exact tensor bytes (a GPU adds its CUDA context and the allocator's rounding).", "",
            __doc__.split("\n\n")[1].replace("\n", " "), "",
            "**resident**: parameters, AdamW state and the batch; a local row's resident bytes include its heads. "
            "**peak block**: the block whose step sets the peak.", "",
            *targets, "", *table("vit_b_16", b16), *table("vit_tiny", results["vit_tiny"])]
    write_text(a.out, "\n".join(text) + "\n")
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
