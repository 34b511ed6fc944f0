"""docs/results.md (and docs/results_vit.md) from one command: the default comparison under the protocol.

``--setting resnet20`` (the default): ResNet-20 on the embedded digits (configs/mnist5k_resnet20_glcan_k4.yaml: 3 epochs, batch 128,
SGD Nesterov + one-cycle), E2E, E2E with recomputation (checkpointing), and local learning at
K=4 with the GLCAN head (memory split), 5 paired seeds: each seed fixes initialisation and data
order over the one fixed split, so rows are paired by seed and each row's difference to E2E is a
mean paired difference with its 95% t-interval (glcan.compare.stats). The table, its plots and
the runs come from ``train.py compare``; rerunning resumes it.

``--setting vit``: the tiny Vision Transformer on the same digits
(configs/mnist5k_vit_tiny_glcan_k4.yaml: 10 epochs, batch 64, AdamW + one-cycle), E2E and local
K=4 with the GLCAN token head and with the linear token head (the baseline it must beat:
``--baseline model.head=linear``), -> docs/results_vit.md.

Usage::

    OMP_NUM_THREADS=1 python bench/results.py            # about 20 minutes of one core
    python bench/results.py --report-only                # rebuild docs/results.md from the runs on disk
    OMP_NUM_THREADS=2 python bench/results.py --setting vit --seeds 3   # hours on 2 cores
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.cli import main as train_py  # noqa: E402
from glcan.io import write_text  # noqa: E402

# setting -> (config, grid, doc, title, recipe)
SETTINGS = {
    "resnet20": ("configs/mnist5k_resnet20_glcan_k4.yaml", ["--grid", "model.method=e2e,e2e_recompute,local"],
                 "results.md", "local learning against end-to-end on the embedded digits",
                 "ResNet-20 on mnist5k (4,000 train / 500 val / 500 test real digits, one fixed split), the shipped "
                 "recipe: 3 epochs, batch 128, SGD Nesterov with a one-cycle schedule (peak lr 0.1)."),
    "vit": ("configs/mnist5k_vit_tiny_glcan_k4.yaml",
            ["--grid", "model.method=e2e,local", "--grid", "model.head=glcan,linear", "--baseline", "model.head=linear"],
            "results_vit.md", "a Vision Transformer, local against end-to-end, on the embedded digits",
            "vit_tiny (torchvision's VisionTransformer: 6 layers, width 128, 4 attention heads, MLP 256, 4-pixel "
            "patches) on mnist5k (4,000 train / 500 val / 500 test real digits, one fixed split): 10 epochs, batch 64, "
            "AdamW (lr 0.001, weight decay 0.05) with a one-cycle schedule. Local: K=4, the token form of the head "
            "(glcan: GC attention pooling over the patch tokens fused with the class token; linear: the class "
            "token alone)."),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="resnet20")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default=None, help="default: runs/results (runs/results_vit for --setting vit)")
    p.add_argument("--doc", default=None, help="default: docs/results.md (docs/results_vit.md)")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    config, grid, doc_name, title, recipe = SETTINGS[a.setting]
    a.out = a.out or ("runs/results" if a.setting == "resnet20" else f"runs/results_{a.setting}")
    a.doc = a.doc or str(ROOT / "docs" / doc_name)
    args = ["compare", "--config", config, *grid, "--seeds", str(a.seeds),
            "--out", a.out, "--name", Path(a.out).name, "--trainer.enable_progress_bar", "false", "--logger", "false",
            *(["--report_only"] if a.report_only else [])]
    code = train_py(args)
    report = (Path(a.out) / "report.md").read_text()
    doc = Path(a.doc)
    figures = doc.parent / doc.stem
    figures.mkdir(parents=True, exist_ok=True)
    for png in Path(a.out).glob("*.png"):
        shutil.copy(png, figures / png.name)
    body = report.split("\n", 1)[1].replace("](", f"]({figures.name}/")
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if os.environ.get("OMP_NUM_THREADS") else ""
    head = [f"# Results: {title}", "",
            f"Command: `{threads}{shlex.join(['python', 'bench/results.py', *sys.argv[1:]])}` (the "
            f"comparison `{shlex.join(['python', 'train.py', *args])}`; machine below).", "",
            f"{recipe} Every row runs seeds 0..{a.seeds - 1}; a seed fixes initialisation and data order, so rows are paired by seed. Local "
            "rows use the memory split, and the last block of every local network trains through the backbone's "
            "own classifier, so every row deploys the same network. **Δ vs E2E** is the mean paired difference "
            "with its 95% t-interval. Peak memory is the exact tensor-byte peak of a steady-state step (CPU tracker), not GPU "
            f"memory; times are process CPU time per batch ({platform.machine()}).", ""]
    write_text(doc, "\n".join(head) + body)
    print(f"{doc} written from {a.out}/report.md")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
