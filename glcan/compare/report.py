"""``report.md`` and the terminal table: one row per configuration, its seeds aggregated.

Test accuracy (for super-resolution: PSNR in dB, with SSIM and bicubic's figures beside it)
is the mean ± sample std over seeds (the plain value for one seed); peak memory
is the mean over seeds in MiB (2^20 bytes) with how it was measured; step time is the median
of the runs' median step times. Ratios are to the E2E row with the same other grid values.
A comparison with missing points says so in its first lines and lists them.
"""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from glcan.compare.results import Group, Run, metric_of
from glcan.core.build import is_local
from glcan.core.task import Metric
from glcan.io import write_text

HEADERS = ["method", "K", "head", "seeds", "test acc (%)", "per-block acc (%)", "params", "head params",
           "peak mem (MiB)", "measured by", "mem / E2E", "step CPU (ms)", "CPU / E2E", "step wall (ms)"]


def _num(v: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{suffix}"


def _count(v: Optional[int]) -> str:
    return "n/a" if v is None else f"{v / 1e6:.2f}M" if v >= 10**6 else f"{v / 1e3:.1f}k" if v >= 1000 else str(v)


def short_method(method: Optional[str]) -> str:
    """``tensor-storage tracker (...)`` -> ``tensor-storage tracker``."""
    return "n/a" if not method else "; ".join(m.split(" (")[0] for m in method.split("; "))


def groups_metric(groups: list[Group]) -> Metric:
    """The primary metric of the comparison (accuracy, or PSNR for super-resolution)."""
    return metric_of([s for g in groups for s in g.ok])


def metric_headers(metric: Metric) -> list[str]:
    """The metric columns: ``test acc (%)``, ``per-block acc (%)``; for PSNR also SSIM and bicubic's;
    for mAP@.5 also COCO's mAP@[.5:.95]."""
    if metric.name == "acc":
        return HEADERS[3:6]
    others = ["test mAP@[.5:.95] (%)"] if metric.name == "map50" else ["SSIM", "bicubic PSNR / SSIM"]
    return [HEADERS[3], metric.label, f"per-block {metric.label.split(' ', 1)[1]}", *others]


def _mean(g: Group, key: str) -> Optional[float]:
    v = g.values(key)
    return sum(v) / len(v) if v else None


def _delta(g: Group, other: Optional[Group], metric: Metric) -> str:
    """The paired difference to another row, ``+0.40 ± 0.61 (n=5)``; ``—`` for the row itself."""
    if other is None:
        return "n/a"
    if other is g:
        return "—"
    d = g.paired(other)
    digits = 2
    return "n/a" if d is None else d.show(metric.factor, digits)


def _seeds(g: Group) -> str:
    n_ok, n, gone = len(g.ok), len(g.runs), len(g.collapsed)
    text = str(n_ok - gone) if n_ok == n else f"{n_ok - gone} of {n}"
    return text + (f" (+{gone} collapsed)" if gone else "")


def table(groups: list[Group], baseline: Optional[str] = None) -> tuple[list[str], list[list[str]]]:
    """The report's rows; ``baseline`` (``key=value``) names the row every other is also paired with."""
    extra_keys = list(dict.fromkeys(k for g in groups for k in g.extras))
    metric = groups_metric(groups)
    name = "acc" if metric.name == "acc" else metric.name.upper()
    deltas = [f"Δ {name} vs E2E"] + ([f"Δ {name} vs {baseline}"] if baseline else [])
    headers = (HEADERS[:3] + [k.rsplit(".", 1)[-1] for k in extra_keys] + metric_headers(metric)[:2] + deltas
               + [f"val {metric.label.split(' ', 1)[1]}"] + metric_headers(metric)[2:] + HEADERS[6:])
    f = metric.factor
    rows = []
    for g in groups:
        mean, std = g.score()
        score = "missing" if mean is None else f"{f * mean:.2f}" + (f" ± {f * std:.2f}" if std is not None else "")
        val = g.values(f"val_{metric.name}")
        paired = [_delta(g, g.ref if g.method != "e2e" else g, metric)]
        if baseline:
            paired.append(_delta(g, g.baseline, metric) if g.baseline is not None else "n/a")
        digits = ".1f" if metric.name == "acc" else ".2f"
        blocks = " / ".join(_num(None if b is None else f * b, digits) for b in g.block_scores()) or "n/a"
        extra = [] if metric.name == "acc" else [_num(None if _mean(g, "test_map") is None else f * _mean(g, "test_map"),
                                                      ".2f")] if metric.name == "map50" else [
            _num(_mean(g, "test_ssim"), ".4f"),
            f"{_num(_mean(g, 'bicubic_psnr'), '.2f')} / {_num(_mean(g, 'bicubic_ssim'), '.4f')}"]
        local = is_local(g.method)
        rows.append([
            g.method, str(g.num_blocks) if local else "—", str(g.head) if local else "—",
            *[g.extras.get(k, "—") for k in extra_keys],
            _seeds(g), score, *paired, _num(f * sum(val) / len(val) if val else None, ".2f"), blocks, *extra,
            _count(g.params()),
            _count(g.params("head_params")),
            _num(g.memory_mib()), short_method(g.memory_method()), _num(g.ratio("memory"), ".2f", "×"),
            _num(g.step_cpu_ms()), _num(g.ratio("time"), ".2f", "×") + ("*" if g.time_caveat() else ""),
            _num(g.step_ms()),
        ])
    return headers, rows


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "os": platform.platform(), "cpu": f"{cpu}, {os.cpu_count()} cores"}
    if hasattr(os, "getloadavg"):  # other work on the machine slows the step times down
        info["load average (1/5/15 min, at the end)"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        import lightning
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
        info.update(gpu=gpu, versions=f"python {platform.python_version()}, torch {torch.__version__}, "
                    f"lightning {lightning.__version__}")
    except Exception:  # noqa: BLE001 - the report is still worth writing
        pass
    return info


def status_line(runs: list[Run]) -> str:
    missing = [r for r in runs if r.summary is None]
    if not missing:
        return f"**Complete:** all {len(runs)} planned runs finished."
    return (f"**INCOMPLETE: {len(missing)} of {len(runs)} planned runs are missing** "
            "(listed below); the table covers only the runs that finished.")


def markdown(path: Path, cid: str, groups: list[Group], runs: list[Run], command: str,
             plots: list[str], notes: Optional[list[str]] = None, info: Optional[dict[str, str]] = None,
             baseline: Optional[str] = None) -> Path:
    headers, rows = table(groups, baseline)
    metric = groups_metric(groups)
    what = ("the last head's test accuracy" if metric.name == "acc" else
            "the detector's (the last head's) test mAP at IoU 0.5, COCO's definition (torchmetrics; COCO's "
            "mAP@[.5:.95] beside it)" if metric.name == "map50" else
            "the last head's test PSNR (dB, Y channel, border shaved; SSIM likewise; bicubic upsampling of the same "
            "LR images beside them)")
    methods = sorted({g.memory_method() for g in groups if g.memory_method()})
    lines = [f"# Comparison `{cid}`", "", status_line(runs), "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", f"- **{metric.label.split(' (')[0]}**: {what}, mean ± sample std over seeds; "
              "**per-block**: each block's own head on the test set (block 1 first; E2E has one).",
              "- **Δ vs E2E**" + (f" / **Δ vs {baseline}**" if baseline else "") + ": the mean *paired* difference "
              "(same seed: same initialisation seed and data order, same data split) with its 95% Student-t "
              "interval, mean ± t(0.975, n-1)·sd/√n over the n seeds both rows finished; a difference is "
              "supported where the interval excludes zero. **val**: the last validation's figure, mean over "
              "seeds: choose variants on it, and read the test columns only for what was chosen.",
              "- **peak memory**: `peak_memory_bytes` of each run's summary.json (mean over seeds), measured by: "
              + ("; ".join(f"`{m}`" for m in methods) or "n/a") + ".",
              "- **params**: the deployed network's parameters (the blocks and the classifier: what E2E trains too); "
              "**head params**: the auxiliary heads', used in training only.",
              "- **step CPU**: median process CPU time of one training batch (all K block updates), median over "
              "seeds; **CPU / E2E** is the ratio to the E2E row with the same other settings, taken from CPU time "
              "(runs made minutes apart on a shared machine differ 2-10x in wall time for the same work). "
              "**step wall**: the median wall time, for reference only."]
    caveats = sorted({c for g in groups if (c := g.time_caveat())})
    if caveats:
        lines.append("- **\\***: not a trustworthy time ratio: " + "; ".join(caveats) + " (summary.json `others_cpu`, "
                     "`threads`). For a ratio you can trust, use `python bench/step_time.py` (interleaved in one "
                     "process).")
    few = sorted({g.label for g in groups for x in g.ok if (x.get("timed_steps") or 10) < 10})
    if few:
        least = min(int(x["timed_steps"]) for g in groups for x in g.ok if x.get("timed_steps") is not None)
        lines.append(f"- **caution**: the step times of {', '.join(few)} come from as few as {least} timed step(s) "
                     "(short runs): read them as rough.")
    resumed = [r.point.run_id for r in runs if (r.summary or {}).get("resumed")]
    if resumed:
        lines.append(f"- **resumed**: {', '.join(f'`{i}`' for i in resumed)} were interrupted and resumed from their "
                     "last checkpoint (same weights as an uninterrupted run; their step times come from the last "
                     "segment).")
    gone = [(g, s) for g in groups for s in g.collapsed]
    if gone:
        lines += ["", "## Collapsed runs (counted apart, in no mean)", ""]
        lines += [f"- `{Path(str(s.get('run_dir', '?'))).name}` ({g.label}, seed {s.get('seed')}): test "
                  f"{metric.show(s.get(f'test_{metric.name}'))}, within 5 points of chance" for g, s in gone]
    missing = [r for r in runs if r.summary is None]
    if missing:
        lines += ["", "## Missing runs", ""]
        lines += [f"- `{r.point.run_id}`: {r.status}" + (f" — {r.error}" if r.error else "") for r in missing]
    key = f"test_{metric.name}"
    lines += ["", "## Runs", "", f"| run id | seed | {metric.label} | peak memory (MiB) | step time (ms) | epochs | steps "
              "| resumed |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r.summary or {}
        mem = s.get("peak_memory_bytes")
        lines.append(f"| `{r.point.run_id}` | {r.point.seed} | "
                     f"{_num(None if s.get(key) is None else metric.factor * s[key], '.2f') if s else r.status} | "
                     f"{_num(None if mem is None else mem / 2**20)} | {_num(s.get('step_time_ms'))} | "
                     f"{s.get('epochs', '')} | {s.get('global_step', '')} | {s.get('resumed') or ''} |")
    lines += ["", "Each run's directory `runs/<run id>/` holds its `summary.json`, `metrics.csv`, `config.yaml` "
              "(resolved) and checkpoints; `comparison.csv` has every summary field, one row per run."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Reproduce", "", "```", command, "```"]
    lines += [f"- {n}" for n in notes or []]
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in (info or machine()).items()]
    write_text(path, "\n".join(lines) + "\n")
    return path


TERMINAL = ("method", "K", "head", "seeds", "peak mem (MiB)", "mem / E2E", "CPU / E2E")


def print_table(groups: list[Group], runs: list[Run], cid: str, file: Any = None, baseline: Optional[str] = None) -> None:
    """The terminal's table: the columns a decision needs (report.md has them all), every cell
    whole (long cells wrap, never cut), at least 120 columns wide."""
    from rich.console import Console
    from rich.table import Table

    headers, rows = table(groups, baseline)
    metric = groups_metric(groups)
    extras = range(3, 3 + len({k for g in groups for k in g.extras}))
    keep = [i for i, h in enumerate(headers) if h in TERMINAL or h == metric.label or h.startswith(("Δ", "val "))
            or i in extras]
    caption = status_line(runs).replace("**", "") + " Δ: paired difference with its 95% interval; peak memory: mean, " \
        "step CPU time: median over seeds; ratios to E2E (* = measured under load or with other thread counts). " \
        "Every column: report.md."
    t = Table(title=f"Comparison {cid}", caption=caption, show_lines=False)
    for i in keep:
        t.add_column(headers[i], justify="left" if headers[i] in ("method", "head") else "right", overflow="fold",
                     min_width=15 if headers[i] == "seeds" else None)
    for r in rows:
        bad = "missing" in r[headers.index(metric.label)] or " of " in r[headers.index("seeds")]
        t.add_row(*[r[i] for i in keep], style="red" if bad else None)
    console = Console(file=file or sys.stdout)
    Console(file=file or sys.stdout, width=max(120, console.width)).print(t)
