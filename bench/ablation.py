"""Does GC pooling earn its place? The head ablation, over seeds, from one command.

Settings (the shipped mnist5k recipe: 3 epochs, batch 128, SGD + one-cycle; the last block
trains through the backbone's own classifier, so every row deploys E2E's network):

- ``r20_k4``: ResNet-20, K=4 (the default setting);
- ``r32_k8``, ``r32_k16``: ResNet-32, K=8 and K=16, where greedy linear heads collapse;
- ``poor``: ResNet-20, K=4, trained on 1,000 images only.

Rows: E2E; the heads linear, dgl, infopro and glcan; GLCAN's pooling (gc / avg / max), fusion
(add / mul / both), grid (2 / 1), without its local path, without the context in its
classifier; and the attempts to make the global path count (multi-head attention pooling, the
context fused into the pooled input too, gating and shifting together). Every row runs at every
seed through ``train.py compare`` (one comparison per setting and family of rows, under
``--out``), so an interrupted ablation resumes where it stopped.

Columns: test accuracy (mean ± sample std over seeds), each block's test accuracy, the auxiliary
heads' parameters, the heads' share of the step time (interleaved timing of the row's model and
the same blocks with linear heads, 1 thread, CPU time), and the measured peak memory.

Usage::

    python bench/ablation.py                       # everything, 3 seeds (hours on 2 CPU cores)
    python bench/ablation.py --settings r32_k16 --seeds 3
    python bench/ablation.py --report-only         # rebuild docs/ablation.md from the runs on disk
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glcan.cli.main import main as train_py  # noqa: E402
from glcan.core.step import BlockUpdate, local_step  # noqa: E402
from glcan.io import write_text  # noqa: E402
from glcan.lit import GLCanModule  # noqa: E402

CONFIG = "configs/mnist5k_resnet20_glcan_k4.yaml"
SETTINGS: dict[str, dict[str, Any]] = {
    "r20_k4": {"title": "ResNet-20, K=4", "args": []},
    "r32_k8": {"title": "ResNet-32, K=8", "args": ["--model.backbone", "resnet32", "--model.num_blocks", "8"]},
    "r32_k16": {"title": "ResNet-32, K=16", "args": ["--model.backbone", "resnet32", "--model.num_blocks", "16"]},
    "poor": {"title": "ResNet-20, K=4, 1,000 training images", "args": ["--data.train_size", "1000"]},
}
# (row id, label, head_kwargs) of the GLCAN family; the first is the default head.
GLCAN_ROWS: list[tuple[str, str, dict]] = [
    ("gc", "glcan (gc pooling, add, grid 2)", {}),
    ("avg", "glcan, avg pooling", {"pooling": "avg"}),
    ("max", "glcan, max pooling", {"pooling": "max"}),
    ("mul", "glcan, fusion mul", {"fusion": "mul"}),
    ("grid1", "glcan, grid 1", {"grid": 1}),
    ("nolocal", "glcan, no local path", {"local_path": False}),
    ("noctx", "glcan, no context in the classifier", {"context_in_classifier": False}),
    ("heads4", "glcan, 4-head attention pooling", {"attention_heads": 4}),
    ("both", "glcan, fusion both (gate + shift)", {"fusion": "both"}),
    ("fuse_in", "glcan, context fused into the input too", {"fuse_input": True}),
    ("all3", "glcan, 4 heads + both + input fusion", {"attention_heads": 4, "fusion": "both", "fuse_input": True}),
]
BASELINES = ["linear", "dgl", "infopro"]
# Which GLCAN rows each setting runs (the component ablation where local learning is hard).
ROWS_OF = {
    "r20_k4": ["gc", "avg", "max"],
    "poor": ["gc", "avg", "max"],
    "r32_k8": ["gc", "avg", "max", "heads4", "both", "fuse_in", "all3"],
    "r32_k16": [r for r, _, _ in GLCAN_ROWS],
}


def _kw(kwargs: dict) -> str:
    return json.dumps(kwargs, separators=(",", ":")) if kwargs else "null"


def run_setting(name: str, seeds: int, out: Path, extra: list[str]) -> None:
    base = ["--config", CONFIG, *SETTINGS[name]["args"], "--trainer.enable_progress_bar", "false", "--logger.enabled",
            "false", "--seeds", str(seeds), *extra]
    rows = [kw for r, _, kw in GLCAN_ROWS if r in ROWS_OF[name]]
    train_py(["compare", *base, "--grid", "model.method=e2e,local", "--grid", f"model.head={','.join(BASELINES)}",
              "--out", str(out / name / "baselines")])
    train_py(["compare", *base, "--grid", "model.head_kwargs=" + ",".join(_kw(k) for k in rows),
              "--out", str(out / name / "glcan")])


def summaries(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("runs/*/summary.json"))]


def _row_of(s: dict[str, Any]) -> str:
    if s["method"] != "local":
        return "e2e"
    if s["head"] != "glcan":
        return s["head"]
    cfg = (Path(s["run_dir"]) / "config.yaml").read_text()
    for row, _, kwargs in GLCAN_ROWS:
        if _config_kwargs(cfg) == kwargs:
            return row
    return "glcan?"


def _config_kwargs(config_text: str) -> dict:
    import yaml

    return yaml.safe_load(config_text)["model"].get("head_kwargs") or {}


def head_time_share(name: str, head: str, kwargs: dict, threads: int = 1, steps: int = 3) -> Optional[float]:
    """The heads' share of a training step: (t(row) - t(linear heads)) / t(row), interleaved."""
    if head == "e2e":
        return None
    torch.set_num_threads(threads)
    settings = dict(zip(SETTINGS[name]["args"][::2], SETTINGS[name]["args"][1::2]))
    arch = settings.get("--model.backbone", "resnet20")
    k = int(settings.get("--model.num_blocks", 4))

    def model(h: str, kw: dict) -> GLCanModule:
        torch.manual_seed(0)
        return GLCanModule(backbone=arch, method="local", num_blocks=k, head=h, head_kwargs=kw or None,
                           image_shape=(1, 32, 32), num_classes=10, batch_size=128)

    pair = [model(head, kwargs), model("linear", {})]
    updates = [BlockUpdate(m.build_optimizers()) for m in pair]
    x, y = torch.randn(128, 1, 32, 32), torch.randint(0, 10, (128,))
    times: list[list[float]] = [[], []]
    for i, (m, u) in enumerate(zip(pair, updates)):  # warm-up
        local_step(m.net, x, y, step=u)
    for _ in range(steps):
        for i, (m, u) in enumerate(zip(pair, updates)):
            t0 = time.process_time()
            local_step(m.net, x, y, step=u)
            times[i].append(time.process_time() - t0)
    row, linear = statistics.median(times[0]), statistics.median(times[1])
    return max(0.0, (row - linear) / row)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def report(out: Path, seeds: int, settings: list[str], command: str, minutes: float, shares: dict) -> str:
    labels = {"e2e": "E2E (reference)", **{h: h for h in BASELINES}, **{r: lab for r, lab, _ in GLCAN_ROWS}}
    lines = ["# Head ablation: does GC pooling earn its place?", "",
             f"Command: `{command}` ({minutes:.0f} min for the runs made by this call). Written by bench/ablation.py.",
             "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}. Data: mnist5k (4,000 training / 500 test digits, embedded), the shipped recipe "
             "(3 epochs, batch 128, SGD Nesterov + one-cycle). The last block trains through the backbone's "
             "classifier in every row, so every row deploys the same network as E2E; the rows differ in the "
             "auxiliary heads of blocks 1..K-1 only.", "",
             "Accuracy: the deployed network's test accuracy (%), mean ± sample std over the seeds. Per block: each "
             "block's own head (mean over seeds). Head params: the auxiliary heads' parameters. Head time: the "
             "heads' share of a training step's CPU time, from the row's model interleaved with the same blocks "
             "under linear heads (1 thread, batch 128). Memory: the measured peak (CPU tensor tracker) at batch 128.", ""]
    for name in settings:
        runs = summaries(out / name / "baselines") + summaries(out / name / "glcan")
        by_row: dict[str, list[dict]] = {}
        for s in runs:
            by_row.setdefault(_row_of(s), []).append(s)
        lines += [f"## {SETTINGS[name]['title']}", "",
                  "| row | seeds | test acc (%) | per-block acc (%) | head params | head time | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        order = ["e2e", *BASELINES, *[r for r, _, _ in GLCAN_ROWS]]
        for row in [r for r in order if r in by_row]:
            ss = by_row[row]
            accs = [s["test_acc"] for s in ss if s.get("test_acc") is not None]
            blocks = [statistics.fmean(b) for b in zip(*[s["block_acc"] for s in ss])] if ss else []
            share = shares.get(f"{name}|{row}")
            lines.append(f"| {labels.get(row, row)} | {len(ss)} | {_mean_std(accs)} | "
                         f"{' / '.join(f'{100 * b:.1f}' for b in blocks)} | {ss[0].get('head_params', 0):,} | "
                         f"{'n/a' if share is None else f'{100 * share:.0f}%'} | "
                         f"{statistics.fmean(s['peak_memory_bytes'] for s in ss) / 2**20:.0f} |")
        lines += ["", verdict(by_row), ""]
    return "\n".join(lines) + "\n"


def verdict(by_row: dict[str, list[dict]]) -> str:
    """GC against avg/max and the best baseline, by more than one std (the issue's target)."""
    def stats(row: str) -> Optional[tuple[float, float]]:
        accs = [s["test_acc"] for s in by_row.get(row, []) if s.get("test_acc") is not None]
        return (statistics.fmean(accs), statistics.stdev(accs)) if len(accs) > 1 else None
    gc = stats("gc")
    if gc is None:
        return "Verdict: not enough seeds yet."
    rivals = {r: stats(r) for r in ("avg", "max", *BASELINES) if stats(r) is not None}
    parts = []
    for r, (m, sd) in rivals.items():
        margin = gc[0] - m
        noise = max(gc[1], sd)
        word = "beats" if margin > noise else "ties with" if margin > -noise else "loses to"
        parts.append(f"{word} {r} ({100 * margin:+.2f} points, one std {100 * noise:.2f})")
    return "Verdict: GC pooling " + "; ".join(parts) + "."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--doc", default=str(ROOT / "docs" / "ablation.md"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--no-timing", action="store_true", help="leave out the head time share")
    p.add_argument("--fit-args", default="", help="more fit options for every run (smoke tests: a tiny fake run)")
    a = p.parse_args()
    out, start = Path(a.out), time.time()
    if not a.report_only:
        for name in a.settings:
            run_setting(name, a.seeds, out, shlex.split(a.fit_args))
    minutes = (time.time() - start) / 60
    shares: dict[str, Optional[float]] = {}
    if not a.no_timing:
        for name in a.settings:
            for head in ["e2e", *BASELINES]:
                shares[f"{name}|{head}"] = head_time_share(name, head, {}) if head != "e2e" else None
            for row, _, kwargs in GLCAN_ROWS:
                if row in ROWS_OF[name]:
                    shares[f"{name}|{row}"] = head_time_share(name, "glcan", kwargs)
    command = shlex.join(["python", "bench/ablation.py", *sys.argv[1:]])
    text = report(out, a.seeds, a.settings, command, minutes, shares)
    write_text(a.doc, text)
    print(text)


if __name__ == "__main__":
    main()
