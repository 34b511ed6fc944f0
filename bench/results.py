"""docs/results.md from one command: the default comparison under the protocol.

ResNet-20 on the embedded digits (configs/mnist5k_resnet20_glcan_k4.yaml: 3 epochs, batch 128,
SGD Nesterov + one-cycle), E2E, E2E with recomputation (checkpointing), and local learning at
K=4 with the GLCAN head (memory split), 5 paired seeds: each seed fixes initialisation and data
order over the one fixed split, so rows are paired by seed and each row's difference to E2E is a
mean paired difference with its 95% t-interval (glcan.compare.stats). The table, its plots and
the runs come from ``train.py compare``; rerunning resumes it.

Usage::

    OMP_NUM_THREADS=1 python bench/results.py            # about 20 minutes of one core
    python bench/results.py --report-only                # rebuild docs/results.md from the runs on disk
"""

from __future__ import annotations

import argparse
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

CONFIG = "configs/mnist5k_resnet20_glcan_k4.yaml"
GRID = ["--grid", "model.method=e2e,e2e_recompute,local"]  # the config's K=4, GLCAN head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default="runs/results")
    p.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    args = ["compare", "--config", CONFIG, *GRID, "--seeds", str(a.seeds),
            "--out", a.out, "--name", "results", "--trainer.enable_progress_bar", "false", "--logger", "false",
            *(["--report_only"] if a.report_only else [])]
    code = train_py(args)
    report = (Path(a.out) / "report.md").read_text()
    doc = Path(a.doc)
    figures = doc.parent / doc.stem
    figures.mkdir(parents=True, exist_ok=True)
    for png in Path(a.out).glob("*.png"):
        shutil.copy(png, figures / png.name)
    body = report.split("\n", 1)[1].replace("](", f"]({figures.name}/")
    head = ["# Results: local learning against end-to-end on the embedded digits", "",
            f"Command: `OMP_NUM_THREADS=1 {shlex.join(['python', 'bench/results.py', *sys.argv[1:]])}` (the "
            f"comparison `{shlex.join(['python', 'train.py', *args])}`; machine below).", "",
            "ResNet-20 on mnist5k (4,000 train / 500 val / 500 test real digits, one fixed split), the shipped "
            "recipe: 3 epochs, batch 128, SGD Nesterov with a one-cycle schedule (peak lr 0.1). Every row runs "
            f"seeds 0..{a.seeds - 1}; a seed fixes initialisation and data order, so rows are paired by seed. Local "
            "rows use the memory split, and the last block of every local network trains through the backbone's "
            "own classifier, so every row deploys the same network. **Δ vs E2E** is the mean paired difference "
            "with its 95% t-interval. Peak memory is the exact tensor-byte peak of a steady-state step (CPU tracker), not GPU "
            f"memory; times are process CPU time per batch, one thread ({platform.machine()}).", ""]
    write_text(doc, "\n".join(head) + body)
    print(f"{doc} written from {a.out}/report.md")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
