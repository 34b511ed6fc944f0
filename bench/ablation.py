"""Does GC pooling earn its place? The head ablation, over seeds, from one command.

Settings (the shipped mnist5k recipe: 3 epochs, batch 128, SGD + one-cycle; the last block
trains through the backbone's own classifier, so every row deploys E2E's network):

- ``r20_k4``: ResNet-20, K=4 (the default setting);
- ``r32_k8``, ``r32_k16``: ResNet-32, K=8 and K=16, where greedy linear heads collapse;
- ``poor``: ResNet-20, K=4, trained on 1,000 images only (12 epochs: the same number of steps).

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
    # As many steps as the others (96 batches): data-poor, not under-trained.
    "poor": {"title": "ResNet-20, K=4, 1,000 training images (12 epochs: the same 96 steps)",
             "args": ["--data.train_size", "1000", "--trainer.max_epochs", "12"]},
}
# (row id, label, head_kwargs) of the GLCAN family. Every row states its fusion, so a row means
# the same head whatever the library's default is.
ADD = {"fusion": "add"}
GLCAN_ROWS: list[tuple[str, str, dict]] = [
    ("gc", "**glcan: gc pooling, fusion add, grid 2 (the default)**", ADD),
    ("avg", "glcan, avg pooling (add)", {**ADD, "pooling": "avg"}),
    ("max", "glcan, max pooling (add)", {**ADD, "pooling": "max"}),
    ("mul", "glcan, fusion mul", {"fusion": "mul"}),
    ("grid1", "glcan, grid 1 (add)", {**ADD, "grid": 1}),
    ("nolocal", "glcan, no local path (add)", {**ADD, "local_path": False}),
    ("noctx", "glcan, no context in the classifier (add)", {**ADD, "context_in_classifier": False}),
    ("heads4", "glcan, 4-head attention pooling (add)", {**ADD, "attention_heads": 4}),
    ("both", "glcan, fusion both (gate + shift)", {"fusion": "both"}),
    ("avg_both", "glcan, avg pooling, fusion both", {"fusion": "both", "pooling": "avg"}),
    ("fuse_in", "glcan, context fused into the input too (add)", {**ADD, "fuse_input": True}),
    ("all3", "glcan, 4 heads + both + input fusion", {"attention_heads": 4, "fusion": "both", "fuse_input": True}),
]
BASELINES = ["linear", "dgl", "infopro"]
# Which GLCAN rows each setting runs (the component ablation where local learning is hard).
ROWS_OF = {
    "r20_k4": ["gc", "avg", "max", "noctx", "both"],
    "poor": ["gc", "avg", "max", "both"],
    "r32_k8": ["gc", "avg", "max", "noctx", "heads4", "both", "avg_both", "fuse_in", "all3"],
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


def diverged(folder: Path) -> list[dict[str, Any]]:
    """Runs stopped by a non-finite loss (no summary.json): their method, head and run dir."""
    import yaml

    found = []
    for err in sorted(folder.glob("runs/*/error.txt")):
        if (err.parent / "summary.json").is_file() or "NonFiniteLoss" not in err.read_text():
            continue
        model = yaml.safe_load((err.parent / "config.yaml").read_text())["model"]
        found.append({"method": model["method"], "head": model["head"], "run_dir": str(err.parent)})
    return found


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


def head_time_share(name: str, head: str, kwargs: dict, threads: int = 1, steps: int = 5) -> Optional[float]:
    """The heads' share of a training step: (t(row) - t(linear heads)) / t(row), interleaved.

    Each is the fastest of ``steps`` steps (CPU time): other load only ever adds time, so the
    minimum is the least disturbed figure. The ``linear`` row times linear heads against
    themselves: its share is the measurement's noise floor."""
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
    row, linear = min(times[0]), min(times[1])
    return max(0.0, (row - linear) / row)


def _aux(runs: list[dict[str, Any]]) -> list[float]:
    """Per run, the mean test accuracy of blocks 1..K-1 on their own auxiliary heads."""
    return [statistics.fmean(s["block_acc"][:-1]) for s in runs if len(s.get("block_acc") or []) > 1]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def report(out: Path, seeds: int, settings: list[str], command: str, minutes: Optional[float], shares: dict) -> str:
    labels = {"e2e": "E2E (reference)", **{h: h for h in BASELINES}, **{r: lab for r, lab, _ in GLCAN_ROWS}}
    lines = ["# Head ablation: does GC pooling earn its place?", "",
             f"Command: `{command}`" + (" (the report from the runs on disk, made by `python bench/ablation.py`; "
                                        "interrupted, it resumes)." if minutes is None else
                                        f" ({minutes:.0f} min for the runs made by this call)."),
             "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
             f"{torch.__version__}. Data: mnist5k (4,000 training / 500 test digits, embedded), the shipped recipe "
             "(3 epochs, batch 128, SGD Nesterov + one-cycle). The last block trains through the backbone's "
             "classifier in every row, so every row deploys the same network as E2E; the rows differ in the "
             "auxiliary heads of blocks 1..K-1 only.", "",
             "Accuracy: the deployed network's test accuracy (%), mean ± sample std over the seeds. Per block: each "
             "block's own head (mean over seeds). Head params: the auxiliary heads' parameters. Head time: the "
             "heads' share of a training step's CPU time, from the row's model interleaved with the same blocks "
             "under linear heads (1 thread, batch 128, fastest of 5 steps each; the linear row, linear against "
             "itself, shows the noise). Memory: the measured peak (CPU tensor tracker) at batch 128.", ""]
    for name in settings:
        runs = summaries(out / name / "baselines") + summaries(out / name / "glcan")
        by_row: dict[str, list[dict]] = {}
        for s in runs:
            by_row.setdefault(_row_of(s), []).append(s)
        failed: dict[str, int] = {}
        for s in diverged(out / name / "baselines") + diverged(out / name / "glcan"):
            failed[_row_of(s)] = failed.get(_row_of(s), 0) + 1
        lines += [f"## {SETTINGS[name]['title']}", "",
                  "| row | seeds | test acc (%) | aux heads' acc (%) | per-block acc (%) | head params | head time | peak MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        order = ["e2e", *BASELINES, *[r for r, _, _ in GLCAN_ROWS]]
        for row in [r for r in order if r in by_row or r in failed]:
            ss = by_row.get(row, [])
            accs = [s["test_acc"] for s in ss if s.get("test_acc") is not None]
            blocks = [statistics.fmean(b) for b in zip(*[s["block_acc"] for s in ss])] if ss else []
            share = shares.get(f"{name}|{row}")
            seeds = f"{len(ss)}" + (f" (+{failed[row]} diverged)" if row in failed else "")
            per_block = " / ".join(f"{100 * b:.1f}" for b in blocks) or "n/a"
            params = f"{ss[0].get('head_params', 0):,}" if ss else "n/a"
            peak = f"{statistics.fmean(s['peak_memory_bytes'] for s in ss) / 2**20:.0f}" if ss else "n/a"
            time_share = "n/a" if share is None else f"{100 * share:.0f}%"
            lines.append(f"| {labels.get(row, row)} | {seeds} | {_mean_std(accs)} | {_mean_std(_aux(ss))} | "
                         f"{per_block} | {params} | {time_share} | {peak} |")
        lines += ["", verdict(by_row, failed), ""]
    return "\n".join(lines) + "\n"


GC_ROWS = [r for r, _, kw in GLCAN_ROWS if kw.get("pooling", "gc") == "gc"]  # the rows that pool with GC attention
DEFAULT_ROW = "gc"


def verdict(by_row: dict[str, list[dict]], failed: dict[str, int]) -> str:
    """The default head (gc) and the best GC-pooling row against avg, max and the best baseline,
    by more than one std (the issue's target), on the deployed network's accuracy and on the
    auxiliary heads' mean accuracy. Rows need two finished seeds to be judged."""
    def on(measure: Any) -> dict[str, tuple[float, float]]:
        stats = {}
        for row, runs in by_row.items():
            values = measure(runs)
            if len(values) > 1:
                stats[row] = (statistics.fmean(values), statistics.stdev(values))
        return stats

    def judge(judged: dict[str, tuple[float, float]], what: str) -> str:
        subjects = [DEFAULT_ROW] if DEFAULT_ROW in judged else []
        if not subjects:
            return f"{what}: not enough seeds yet."
        best_gc = max((r for r in GC_ROWS if r in judged), key=lambda r: judged[r][0])
        subjects += [best_gc] if best_gc not in subjects else []
        baselines = [r for r in BASELINES if r in judged]
        rivals = [r for r in ("avg", "avg_both", "max") if r in judged]
        rivals += [max(baselines, key=lambda r: judged[r][0])] if baselines else []
        sentences = []
        for row in subjects:
            parts = []
            for r in rivals:
                margin, noise = judged[row][0] - judged[r][0], max(judged[row][1], judged[r][1])
                word = "beats" if margin > noise else "ties with" if margin > -noise else "loses to"
                parts.append(f"{word} {r} ({100 * margin:+.2f} points, one std {100 * noise:.2f})")
            name = f"the default ({row})" if row == DEFAULT_ROW else f"the best GC-pooling row ({row})"
            sentences.append(f"{name} " + "; ".join(parts))
        return f"{what}: " + ". ".join(s[0].upper() + s[1:] for s in sentences) + "."

    deployed = judge(on(lambda runs: [s["test_acc"] for s in runs if s.get("test_acc") is not None]),
                     "**Verdict, deployed network**")
    aux = judge(on(_aux), "**Verdict, auxiliary heads**")
    unjudged = [f"{r} ({len(by_row.get(r, []))} finished, {n} diverged)" for r, n in failed.items()
                if len(by_row.get(r, [])) < 2]
    tail = f"\n\nNot judged (fewer than two finished seeds): {', '.join(unjudged)}." if unjudged else ""
    return f"{deployed}\n\n{aux}{tail}"


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
    minutes = None if a.report_only else (time.time() - start) / 60
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
