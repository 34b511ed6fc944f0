"""Detection (issue 21, WIP): predicted training memory of FCOS for the GPU setting.

torchvision's FCOS with a ResNet-50 FPN (80 COCO classes) at 800 x 1333, batch 4, fp32, SGD
with momentum: E2E, E2E with per-unit checkpointing, and local learning at every K with GLCAN's
dense heads (each K at its own memory split), with and without recomputation inside blocks. The
predictor builds every model under FakeTensorMode (nothing allocated) and measures one steady-state
step with the exact tensor-storage tracker; FCOS's loss is counted at its dense upper bound
(glcan.backbones.fcos.fcos_loss), so local rows can only be overestimated there.

Usage::

    OMP_NUM_THREADS=2 python bench/det.py --out docs/results_det_memory.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.io import write_text  # noqa: E402
from glcan.lit.plan import predicted_peak, variant  # noqa: E402

GIB = 2**30
GPU = {"task": "detection", "backbone": "fcos_resnet50", "head": "det_glcan", "image_shape": [3, 800, 1333],
       "num_classes": 80, "batch_size": 4, "split": "memory", "precision": "32-true"}
TARGET = 0.45  # local K=4 over E2E


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "results_det_memory.md"))
    p.add_argument("--ks", default="2,4,8,16")
    a = p.parse_args()
    e2e = predicted_peak(variant(GPU, "e2e", 1)).peak_bytes
    rows = [("e2e", "—", e2e, None), ("e2e_recompute", "—", predicted_peak(variant(GPU, "e2e_recompute", 1)).peak_bytes, None)]
    for k in (int(k) for k in a.ks.split(",")):
        for method in ("local", "local_recompute"):
            planned = variant({**GPU, "method": method}, method, k)
            rows.append((method, str(k), predicted_peak(planned).peak_bytes, planned["boundaries"]))
        print(f"K={k} done", flush=True)
    lines = ["# Detection: predicted training memory (FCOS, ResNet-50 FPN)", "",
             f"Command: `{shlex.join(['python', 'bench/det.py', *sys.argv[1:]])}`. Machine: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
             "(the predictor allocates nothing; the figures are tensor bytes, a GPU adds its CUDA context and the "
             "allocator's rounding).", "",
             "Setting: torchvision's FCOS, ResNet-50 body + FPN (P3-P7, 256 channels), 80 classes, 800 x 1333 "
             "images, batch 4, fp32, SGD with momentum; local rows use GLCAN's dense heads (`det_glcan`), each K "
             "at its own memory split. FCOS's loss is counted at its dense upper bound.", "",
             "| method | K | split | peak (GiB) | / E2E |", "|---|---|---|---|---|"]
    for method, k, peak, split in rows:
        lines.append(f"| {method} | {k} | {split if split is not None else '—'} | {peak / GIB:.3f} | {peak / e2e:.3f} |")
    k4 = next(peak for method, k, peak, _ in rows if method == "local" and k == "4") / e2e
    lines += ["", f"Target: local K=4 ≤ {TARGET} of E2E. Measured: {k4:.3f} ({'met' if k4 <= TARGET else 'not met'}).", ""]
    write_text(a.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
