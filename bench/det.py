"""Detection results: E2E vs local learning (K=4), and the dense GLCAN head vs the same head
without context, on the embedded scenes; and the predicted memory of FCOS at its GPU size.

One command makes every figure of ``docs/results_det.md``:

1. ``train.py compare --config configs/det_digits_fcos_glcan_k4.yaml --grid
   model.method=e2e,local --grid model.head=det_glcan,det_conv --seeds 3 --baseline
   model.head=det_conv`` (the protocol of docs/ablation.md: seeds vary initialisation and data
   order over det_digits' one fixed split, rows are paired by seed; the E2E point ignores the
   head; both heads share the memory split K=4 plans for the config, so only the head differs).
   Resumable: finished runs are kept. Several processes can share it with ``--shard i/n``;
   ``--report-only`` trains nothing and reports the runs on disk.
2. the predicted training memory of FCOS with a ResNet-50 FPN at 800 x 1333, batch 4, fp32
   (E2E, E2E with recomputation, local learning at every K), from ``glcan.lit.plan`` (FakeTensor
   mode + the exact tensor-storage tracker: nothing is allocated).

Usage::

    OMP_NUM_THREADS=1 python bench/det.py --runs runs/det             # -> docs/results_det.md
    OMP_NUM_THREADS=1 python bench/det.py --runs runs/det --shard 0/2  # and 1/2 in a second process
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.cli import main as train_py  # noqa: E402
from glcan.compare import stats  # noqa: E402
from glcan.io import write_text  # noqa: E402
from glcan.lit.plan import predicted_peak, variant  # noqa: E402

CONFIG = "configs/det_digits_fcos_glcan_k4.yaml"
GRID = ["--grid", "model.method=e2e,local", "--grid", "model.head=det_glcan,det_conv", "--baseline",
        "model.head=det_conv"]
GIB = 2**30
GPU = {"task": "detection", "backbone": "fcos_resnet50", "head": "det_glcan", "image_shape": [3, 800, 1333],
       "num_classes": 80, "batch_size": 4, "split": "memory", "precision": "32-true"}
TARGETS = {"e2e_map50": 0.80, "gap_points": 3.0, "memory_k4": 0.45, "minutes": 10.0}
ROWS = {"e2e": "E2E", "local_k4_det-glcan": "local K=4, det_glcan", "local_k4_det-conv": "local K=4, det_conv"}


def compare(runs: Path, seeds: int, shard: Optional[str], report_only: bool) -> int:
    """Train (or resume, or only report) the comparison; its exit status."""
    args = ["compare", "--config", CONFIG, *GRID, "--seeds", str(seeds), "--out", str(runs), "--logger", "false",
            "--trainer.enable_progress_bar", "false"]
    args += ["--shard", shard] if shard else []
    args += ["--report_only"] if report_only else []
    return train_py(args)


def summaries(runs: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{row: {seed: summary}}`` of the finished runs."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(runs.glob("runs/*/summary.json")):
        row = path.parent.name.rsplit("_s", 1)[0]
        summary = json.loads(path.read_text())
        out.setdefault(row, {})[int(summary["seed"])] = summary
    return out


def values(rows: dict[str, dict[int, dict[str, Any]]], row: str, key: str) -> dict[int, float]:
    return {seed: float(s[key]) for seed, s in rows.get(row, {}).items() if s.get(key) is not None}


def block_means(lists: list[Optional[list[Optional[float]]]]) -> str:
    """Each block's mean over the seeds (``—`` for a block without boxes: an image-label head)."""
    blocks = [b for b in lists if b]
    if not blocks:
        return "—"
    means = []
    for i in range(min(map(len, blocks))):
        got = [b[i] for b in blocks if b[i] is not None]
        means.append(f"{sum(got) / len(got):.3f}" if got else "—")
    return " / ".join(means)


def accuracy_section(rows: dict[str, dict[int, dict[str, Any]]]) -> tuple[list[str], dict[str, Any]]:
    e2e = values(rows, "e2e", "test_map50")
    lines = ["| row | seeds | test mAP@.5 (mean, 95% interval) | test mAP@[.5:.95] | val mAP@.5 | Δ mAP@.5 vs E2E (points) | "
             "per-block test mAP@.5 | peak memory (MiB) | / E2E | step CPU (ms) | training CPU (min) |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    e2e_peak = [s["peak_memory_bytes"] for s in rows.get("e2e", {}).values() if s.get("peak_memory_bytes")]
    found: dict[str, Any] = {}
    for row, name in ROWS.items():
        if row not in rows:
            lines.append(f"| {name} | 0 | not run | | | | | | | | |")
            continue
        runs = list(rows[row].values())
        mean = lambda key: stats.interval([float(s[key]) for s in runs if s.get(key) is not None])  # noqa: E731
        delta = stats.paired(values(rows, row, "test_map50"), e2e) if row != "e2e" else None
        per_block = block_means([s.get("block_map50") for s in runs]) if row != "e2e" else "—"
        peak = mean("peak_memory_bytes").mean
        cpu_min = [float(s["step_cpu_ms"]) * int(s["global_step"]) / 60000 for s in runs if s.get("step_cpu_ms")]
        lines.append(f"| {name} | {len(runs)} | {mean('test_map50').show(1, 3, False)} | {mean('test_map').mean:.3f} | "
                     f"{mean('val_map50').mean:.3f} | {delta.show(100, 2) if delta else '—'} | {per_block} | "
                     f"{peak / 2**20:.1f} | {peak / (sum(e2e_peak) / len(e2e_peak)) if e2e_peak else float('nan'):.2f} | "
                     f"{mean('step_cpu_ms').mean:.0f} | {max(cpu_min) if cpu_min else float('nan'):.1f} |")
        found[row] = {"map50": mean("test_map50"), "delta": delta, "cpu_min": max(cpu_min) if cpu_min else None}
    heads = stats.paired(values(rows, "local_k4_det-glcan", "test_map50"), values(rows, "local_k4_det-conv", "test_map50"))
    heads_val = stats.paired(values(rows, "local_k4_det-glcan", "val_map50"), values(rows, "local_k4_det-conv", "val_map50"))
    found["heads"], found["heads_val"] = heads, heads_val
    threads = sorted({s.get("threads") for r in rows.values() for s in r.values()})
    split = sorted({str(s.get("boundaries")) for r in rows.values() for s in r.values() if s.get("method") == "local"})
    lines += ["", f"det_glcan − det_conv (paired by seed, mAP@.5, points): test "
              f"{heads.show(100, 2) if heads else 'n/a'}; validation {heads_val.show(100, 2) if heads_val else 'n/a'}.",
              "", f"Local split (unit boundaries, the same for both heads): {', '.join(split) or '—'}. Threads per run: "
              f"{', '.join(map(str, threads))} (`torch.get_num_threads()`). **step CPU**: process CPU time per training "
              "step (glcan's StepTimer); **training CPU**: step CPU × steps, the slowest seed (validation and test "
              "passes not included)."]
    return lines, found


def memory_section(ks: list[int]) -> tuple[list[str], float]:
    e2e = predicted_peak(variant(GPU, "e2e", 1)).peak_bytes
    rows = [("e2e", "—", e2e, None), ("e2e_recompute", "—", predicted_peak(variant(GPU, "e2e_recompute", 1)).peak_bytes, None)]
    for k in ks:
        for method in ("local", "local_recompute"):
            planned = variant({**GPU, "method": method}, method, k)
            rows.append((method, str(k), predicted_peak(planned).peak_bytes, planned["boundaries"]))
    lines = ["| method | K | split | peak (GiB) | / E2E |", "|---|---|---|---:|---:|"]
    lines += [f"| {m} | {k} | {s if s is not None else '—'} | {p / GIB:.3f} | {p / e2e:.3f} |" for m, k, p, s in rows]
    k4 = next(p for m, k, p, _ in rows if m == "local" and k == "4") / e2e
    return lines, k4


def verdict(ok: Optional[bool]) -> str:
    return "not run" if ok is None else ("met" if ok else "**missed**")


def render(runs: Path, command: str, acc: list[str], found: dict[str, Any], memory: list[str], k4: float) -> str:
    e2e, local, heads = found.get("e2e"), found.get("local_k4_det-glcan"), found.get("heads")
    minutes = [r["cpu_min"] for r in found.values() if isinstance(r, dict) and r.get("cpu_min")]
    gap = local["delta"] if local else None
    targets = [
        ("E2E test mAP@.5 ≥ 0.80 in the ≤ 10-minute config", f"{e2e['map50'].show(1, 3, False)}" if e2e else "—",
         verdict(e2e["map50"].mean >= TARGETS["e2e_map50"] if e2e else None)),
        ("local K=4 within 3 points of E2E (mAP@.5, paired)", gap.show(100, 2) if gap else "—",
         verdict(gap.mean >= -TARGETS["gap_points"] / 100 if gap else None)),
        ("det_glcan beats det_conv, interval excluding zero", heads.show(100, 2) if heads else "—",
         verdict(heads.mean > 0 and heads.excludes_zero() if heads else None)),
        ("predicted memory, local K=4 / E2E (FCOS R50-FPN, 800x1333, batch 4) ≤ 0.45", f"{k4:.3f}",
         verdict(k4 <= TARGETS["memory_k4"])),
        ("each config trains in ≤ 10 min on 2 cores (training CPU, 1 thread)", f"{max(minutes):.1f} min" if minutes else "—",
         verdict(max(minutes) <= TARGETS["minutes"] if minutes else None)),
    ]
    stamp = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return "\n".join([
        "# Detection: local learning vs end to end, on the embedded scenes", "",
        f"Generated by `{command}` ({stamp}) on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}, no GPU. The runs are a `train.py compare` (its report.md and run "
        f"directories in `{runs}`): this command without `--report-only` trains that comparison, resumably, and "
        "`--shard i/n` splits it over processes (here: two, one thread each); the memory predictions come from "
        "`glcan.lit.plan` in the same process.", "",
        "**Setting.** det_digits (`glcan/data/det_digits.py`): MNIST digits (10 classes, 1-6 per scene, 16-48 px, "
        "overlaps allowed) on crops of scikit-image's photographs, 128x128, 2,000 training / 250 validation / 250 "
        "test scenes, one fixed split: a small benchmark for checking and comparing, not COCO. Detector: "
        "torchvision's FCOS with a RegNetX-200MF body (BatchNorm, from scratch) and a 64-channel FPN (P3-P7), "
        "2.8M parameters. Training: `configs/det_digits_fcos_glcan_k4.yaml` for every row (12 epochs of batch 16 "
        "= 1,500 steps, SGD lr 0.05 momentum 0.9 on a one-cycle schedule, validated every 4th epoch); E2E is the "
        "same config with `model.method e2e`. Local K=4 has one SGD per block; its last block trains through "
        "FCOS's own FPN and head, which read the earlier levels detached. The heads differ in one thing: "
        "`det_glcan` fuses GC attention context into the block's features before FCOS's head and loss on that "
        "level, `det_conv` does not. Metrics: torchmetrics' `MeanAveragePrecision` (COCO's definition) on the "
        "test scenes; the last validation's for val.", "",
        "## Accuracy", "", *acc, "", "## Memory at FCOS's GPU size (predicted)", "",
        "torchvision's FCOS, ResNet-50 body + FPN (256 channels), 80 classes, 800 x 1333, batch 4, fp32, SGD with "
        "momentum; local rows use `det_glcan`, each K at its own memory split. FCOS's matching depends on the data, "
        "so under FakeTensor mode its loss is counted at a dense upper bound (`glcan.backbones.fcos.fcos_loss`): "
        "the figures can only be too high there. Not checked on a GPU (this project's sessions drew none).", "",
        *memory, "", "## Targets", "", "| target | measured | status |", "|---|---|---|",
        *[f"| {t} | {m} | {s} |" for t, m, s in targets], "",
    ])


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="runs/det", help="the comparison's folder (resumed if it exists)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--shard", default=None, help="i/n: train this process's share only (no report)")
    p.add_argument("--report-only", action="store_true", help="train nothing: report the runs on disk")
    p.add_argument("--ks", default="2,4,8,16", help="the K of the memory table")
    p.add_argument("--out", default=str(ROOT / "docs" / "results_det.md"))
    a = p.parse_args(argv)
    runs = Path(a.runs)
    code = compare(runs, a.seeds, a.shard, a.report_only)
    if a.shard:
        return code
    if code != 0:  # a failed or unfinished comparison is not presented as results
        print(f"the comparison in {runs} is not complete (status {code}); {a.out} is not written", file=sys.stderr)
        return code
    acc, found = accuracy_section(summaries(runs))
    memory, k4 = memory_section([int(k) for k in a.ks.split(",")])
    command = shlex.join(["python", "bench/det.py", *(argv if argv is not None else sys.argv[1:])])
    text = render(runs, command, acc, found, memory, k4)
    write_text(a.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
