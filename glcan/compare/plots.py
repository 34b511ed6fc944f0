"""The comparison's three PNGs, drawn with matplotlib's Agg renderer (no display, no pyplot state).

``acc_vs_memory.png``  test accuracy (%) vs peak training memory (MiB), one point per run,
                       E2E as a black star, each configuration labelled.
``block_acc.png``      each block's head's test accuracy vs block index, one line per local
                       configuration (mean ± std over seeds), E2E as a dashed reference line.
``loss_curves.png``    the final head's training loss vs step, read from each run's metrics.csv.

For super-resolution runs PSNR (dB) takes accuracy's place (the file names stay), with
bicubic upsampling's PSNR as a dotted reference line.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from matplotlib.figure import Figure

from glcan.compare.report import short_method
from glcan.compare.results import MIB, Group, Run, metric_of
from glcan.core.build import is_local

MARKERS = {"glcan": "o", "linear": "s", "dgl": "^", "infopro": "D", "sr_glcan": "o", "sr_conv": "s"}
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def styles(groups: list[Group]) -> dict[str, dict[str, Any]]:
    """Colour and marker of each configuration, shared by the three plots."""
    out, n = {}, 0
    for g in groups:
        if g.method == "e2e":
            out[g.config_id] = {"color": "black", "marker": "*", "size": 260}
        elif not is_local(g.method):
            out[g.config_id] = {"color": "dimgray", "marker": "P", "size": 150}
        else:
            out[g.config_id] = {"color": PALETTE[n % len(PALETTE)], "marker": MARKERS.get(str(g.head), "v"), "size": 80}
            n += 1
    return out


def _subject(runs: list[Run]) -> str:
    s = next((r.summary for r in runs if r.summary), None) or {}
    return f"{s.get('backbone', '?')} on {s.get('dataset', '?')}"  # summary.json names the network `backbone`


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path.name


def _bicubic_line(ax: Any, runs: list[Run], metric: Any) -> None:
    """Super-resolution: bicubic upsampling's figure on the same test images, dotted."""
    values = [r.summary[f"bicubic_{metric.name}"] for r in runs if r.summary and r.summary.get(f"bicubic_{metric.name}") is not None]
    if values:
        ax.axhline(metric.factor * sum(values) / len(values), color="gray", linestyle=":", linewidth=1.4, label="bicubic")


def acc_vs_memory(path: Path, groups: list[Group], runs: list[Run]) -> str:
    fig = Figure(figsize=(8.5, 5.8))
    ax = fig.add_subplot()
    st = styles(groups)
    metric = metric_of([s for g in groups for s in g.ok])
    key = f"test_{metric.name}"
    for g in groups:
        pts = [(s["peak_memory_bytes"] / MIB, metric.factor * s[key]) for s in g.ok
               if s.get("peak_memory_bytes") is not None and s.get(key) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        style = st[g.config_id]
        ax.scatter(xs, ys, s=style["size"], marker=style["marker"], color=style["color"], label=g.label,
                   edgecolors="white" if is_local(g.method) else "black", linewidths=0.6, zorder=3)
        ax.annotate(g.label, (xs[0], ys[0]), xytext=(7, 6), textcoords="offset points", fontsize=9,
                    fontweight="bold" if g.method == "e2e" else "normal", color=style["color"])
    methods = sorted({g.memory_method() for g in groups if g.memory_method()})
    ax.set_xlabel(f"peak training memory (MiB; {short_method('; '.join(methods))})")
    name = "test accuracy" if metric.name == "acc" else "test PSNR"
    ax.set_ylabel(f"{name} ({metric.unit})")
    ax.set_title(f"{name[0].upper()}{name[1:]} vs peak training memory: {_subject(runs)}")
    _bicubic_line(ax, runs, metric)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if ax.collections:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def block_acc(path: Path, groups: list[Group], runs: list[Run]) -> str:
    fig = Figure(figsize=(8.5, 5.8))
    ax = fig.add_subplot()
    st = styles(groups)
    metric = metric_of([s for g in groups for s in g.ok])
    f = metric.factor
    max_k = 1
    for g in groups:
        means, stds = g.block_scores(), g.block_scores_std()
        if not means or all(m is None for m in means):
            continue
        style = st[g.config_id]
        if not is_local(g.method):
            ax.axhline(f * means[-1], color=style["color"], linestyle="--", linewidth=1.4,
                       label=f"{g.label} (whole network)")
            continue
        xs = [i + 1 for i, m in enumerate(means) if m is not None]
        ys = [f * m for m in means if m is not None]
        err = [f * (s or 0.0) for s, m in zip(stds, means) if m is not None]
        max_k = max(max_k, len(means))
        ax.errorbar(xs, ys, yerr=err if any(err) else None, marker=style["marker"], color=style["color"],
                    capsize=3, linewidth=1.6, markersize=7, label=g.label)
    ax.set_xticks(range(1, max_k + 1))
    ax.set_xlabel("block index (1 = nearest the input; the last block's head is the network's output)")
    name = "test accuracy" if metric.name == "acc" else "test PSNR"
    ax.set_ylabel(f"{name} of the block's head ({metric.unit})")
    ax.set_title(f"Per-block {name}: {_subject(runs)}")
    _bicubic_line(ax, runs, metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def read_loss(metrics_csv: Path) -> tuple[list[float], list[float], Optional[str]]:
    """(steps, losses, column) of the final head's training loss; per-step values when logged."""
    try:
        with metrics_csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return [], [], None
    for column in ("train/loss_step", "train/loss_epoch", "train/loss"):
        pts = [(float(r["step"]), float(r[column])) for r in rows if r.get(column) not in (None, "") and r.get("step")]
        if pts:
            pts.sort()
            return [p[0] for p in pts], [p[1] for p in pts], column
    return [], [], None


def loss_curves(path: Path, groups: list[Group], runs: list[Run], out: Path) -> str:
    fig = Figure(figsize=(8.5, 5.8))
    ax = fig.add_subplot()
    st = styles(groups)
    columns = set()
    for g in groups:
        labelled = False
        for r in g.runs:
            if r.summary is None:
                continue
            steps, losses, column = read_loss(out / "runs" / r.point.run_id / "metrics.csv")
            if not steps:
                continue
            columns.add(column)
            ax.plot(steps, losses, color=st[g.config_id]["color"], linewidth=1.5 if is_local(g.method) else 2.2,
                    linestyle="-" if is_local(g.method) else "--", marker="o" if len(steps) < 4 else "." if len(steps) < 30 else None,
                    alpha=0.9, label=None if labelled else g.label)
            labelled = True
    ax.set_xlabel("training step (batches)")
    what = "per logged step" if columns == {"train/loss_step"} else "per epoch where steps were not logged"
    sr = metric_of([s for g in groups for s in g.ok]).name != "acc"
    ax.set_ylabel(f"training loss (final head, {'L1' if sr else 'cross-entropy'})")
    ax.set_title(f"Training loss ({what}): {_subject(runs)}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no training loss logged", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def draw_all(out: Path, groups: list[Group], runs: list[Run]) -> list[str]:
    return [acc_vs_memory(out / "acc_vs_memory.png", groups, runs), block_acc(out / "block_acc.png", groups, runs),
            loss_curves(out / "loss_curves.png", groups, runs, out)]
