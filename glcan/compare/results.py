"""From the runs' summary.json files to ``comparison.csv`` and the per-configuration table.

Every planned point gets a CSV row: complete runs carry their summary.json fields (nested dicts
flattened to ``a.b`` columns, lists as JSON strings), missing ones only their id, grid values
and ``status`` (``failed``, ``interrupted``, ``not run``), so a partial comparison never reads
as a complete one. Table rows (``Group``) aggregate the seeds of one configuration; ratios are
taken to the E2E configuration with the same other grid values.

A run's primary metric is the one its summary names (``metric``: ``acc`` for classification,
``psnr`` for super-resolution; ``acc`` when absent): ``test_<metric>`` and ``block_<metric>``.

Accuracy follows the protocol of glcan.compare.stats: a classification run that collapsed (test
accuracy within 5 points of chance) is counted apart and left out of every mean and difference;
rows are compared by paired differences over the seeds they share, with 95% t-intervals.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from glcan.compare import stats
from glcan.compare.grid import STRUCTURAL, Point
from glcan.compare.runner import SUMMARY, Outcome, run_dir
from glcan.core.build import is_local
from glcan.core.task import METRICS, Metric
from glcan.io import write_csv

MIB = 2**20
LOAD_LIMIT = 0.25  # cores used by other processes above which a time is "measured under load"


@dataclass
class Run:
    point: Point
    status: str  # "ok" or why it is missing
    summary: Optional[dict[str, Any]]
    error: Optional[str] = None


@dataclass
class Group:
    """One configuration (a table row) over its seeds."""

    config_id: str
    method: str
    num_blocks: Optional[int]
    head: Optional[str]
    extras: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    ref: Optional["Group"] = None  # the E2E group to compare with
    baseline: Optional["Group"] = None  # the --baseline row with the same other grid values

    @property
    def ok(self) -> list[dict[str, Any]]:
        """Every finished run's summary (memory and time are valid even for a collapsed run)."""
        return [r.summary for r in self.runs if r.summary is not None]

    @property
    def counted(self) -> list[dict[str, Any]]:
        """The finished runs that did not collapse: what accuracy means and differences use."""
        return [s for s in self.ok if not is_collapsed(s)]

    @property
    def collapsed(self) -> list[dict[str, Any]]:
        return [s for s in self.ok if is_collapsed(s)]

    def values(self, key: str) -> list[float]:
        runs = self.counted if key.startswith(("test_", "val_", "block_")) else self.ok
        return [float(s[key]) for s in runs if s.get(key) is not None]

    def by_seed(self, key: str) -> dict[int, float]:
        """``{seed: value}`` of a metric over the counted runs (for paired differences)."""
        return {int(s["seed"]): float(s[key]) for s in self.counted if s.get(key) is not None and s.get("seed") is not None}

    def paired(self, other: Optional["Group"], stage: str = "test") -> Optional[stats.Interval]:
        """This row minus ``other`` on the primary metric, paired by seed, with its 95% interval."""
        if other is None or other is self:
            return None
        key = f"{stage}_{self.metric.name}"
        return stats.paired(self.by_seed(key), other.by_seed(key))

    @property
    def label(self) -> str:
        if is_local(self.method):
            text = f"{self.method.replace('_', ' ')} K={self.num_blocks} {self.head}"
        else:
            text = "E2E" if self.method == "e2e" else "E2E (checkpointed)" if self.method == "e2e_recompute" else self.method
        return text + "".join(f" {k.rsplit('.', 1)[-1]}={v}" for k, v in self.extras.items())

    @property
    def metric(self) -> Metric:
        """The primary metric of this configuration's runs (accuracy, or PSNR for super-resolution)."""
        return metric_of(self.ok)

    def score(self) -> tuple[Optional[float], Optional[float]]:
        """The primary metric on the test set (``test_<metric>``): mean and sample std over seeds."""
        v = self.values(f"test_{self.metric.name}")
        return (statistics.fmean(v) if v else None, statistics.stdev(v) if len(v) > 1 else None)

    def block_scores(self) -> list[Optional[float]]:
        """Each block's head's primary metric (``block_<metric>``), mean over seeds."""
        lists = [s.get(f"block_{self.metric.name}") or [] for s in self.ok]
        width = max((len(x) for x in lists), default=0)
        cols = [[x[i] for x in lists if i < len(x) and x[i] is not None] for i in range(width)]
        return [statistics.fmean(c) if c else None for c in cols]

    def block_scores_std(self) -> list[Optional[float]]:
        lists = [s.get(f"block_{self.metric.name}") or [] for s in self.ok]
        width = max((len(x) for x in lists), default=0)
        cols = [[x[i] for x in lists if i < len(x) and x[i] is not None] for i in range(width)]
        return [statistics.stdev(c) if len(c) > 1 else None for c in cols]

    def memory_mib(self) -> Optional[float]:
        v = self.values("peak_memory_bytes")
        return statistics.fmean(v) / MIB if v else None

    def memory_method(self) -> Optional[str]:
        methods = sorted({s["memory_method"] for s in self.ok if s.get("memory_method")})
        return "; ".join(methods) if methods else None

    def step_ms(self) -> Optional[float]:
        """Median wall-clock time per batch (what a user waits; not comparable across runs made
        at different times on a shared machine)."""
        v = self.values("step_time_ms")
        return statistics.median(v) if v else None

    def step_cpu_ms(self) -> Optional[float]:
        """Median process CPU time per batch: what time ratios are taken from."""
        v = self.values("step_cpu_ms")
        return statistics.median(v) if v else None

    def params(self, key: str = "params") -> Optional[int]:
        v = self.values(key)
        return int(v[0]) if v else None

    def under_load(self) -> bool:
        """Other processes used the CPU while these runs were timed (over LOAD_LIMIT cores)."""
        return any((s.get("others_cpu") or 0) > LOAD_LIMIT for s in self.ok)

    def threads(self) -> set:
        return {s.get("threads") for s in self.ok}

    def ratio(self, what: str) -> Optional[float]:
        """To the E2E reference: ``memory`` (peak bytes) or ``time`` (process CPU time per batch)."""
        if self.ref is None:
            return None
        mine, ref = (self.memory_mib(), self.ref.memory_mib()) if what == "memory" else (self.step_cpu_ms(), self.ref.step_cpu_ms())
        return mine / ref if mine is not None and ref else None

    def time_caveat(self) -> Optional[str]:
        """Why this row's time ratio should not be trusted, or None."""
        if self.ref is None:
            return None
        if self.under_load() or self.ref.under_load():
            return "measured while other processes used the CPU"
        if self.threads() != self.ref.threads() or len(self.threads()) > 1:
            return "runs used different thread counts"
        return None


def is_collapsed(summary: dict[str, Any]) -> bool:
    """A classification run whose test accuracy is within 5 points of chance (glcan.compare.stats)."""
    acc, classes = summary.get("test_acc"), summary.get("num_classes")
    return (summary.get("metric") or "acc") == "acc" and acc is not None and classes is not None \
        and stats.collapsed(float(acc), int(classes))


def metric_of(summaries: list[dict[str, Any]]) -> Metric:
    """The primary metric the summaries name (``acc`` when they name none)."""
    names = {s.get("metric") or "acc" for s in summaries}
    return METRICS[names.pop()] if len(names) == 1 and next(iter(names)) in METRICS else METRICS["acc"]


def load_summary(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(out: Path, points: list[Point], outcomes: Optional[list[Outcome]] = None) -> list[Run]:
    """One ``Run`` per planned point, read from its summary.json (the truth, whatever ran now)."""
    why = {o.point.run_id: (o.status, o.error) for o in outcomes or []}
    runs = []
    for p in points:
        summary = load_summary(run_dir(out, p) / SUMMARY)
        if summary is not None:
            runs.append(Run(p, "ok", summary))
        else:
            status, error = why.get(p.run_id, ("not run", None))
            runs.append(Run(p, status if status not in ("ok", "skipped") else "failed", None, error))
    return runs


def group_runs(runs: list[Run], baseline: Optional[tuple[str, str]] = None) -> list[Group]:
    """Table rows: the runs of one configuration over their seeds, each with its E2E reference
    and, given ``baseline = (grid key, value)``, the row that differs from it in that key only."""
    groups: dict[str, Group] = {}
    for r in runs:
        p = r.point
        g = groups.setdefault(p.config_id, Group(p.config_id, p.method, p.num_blocks, p.head, p.extras))
        g.runs.append(r)
    e2e = [g for g in groups.values() if g.method == "e2e"]
    for g in groups.values():
        shared = {k: v for k, v in g.extras.items() if k not in STRUCTURAL}
        g.ref = next((e for e in e2e if e.extras == shared), e2e[0] if len(e2e) == 1 else None)
    if baseline is not None:
        key, value = baseline
        for g in groups.values():
            want = {**_settings(g), key: value}
            g.baseline = next((b for b in groups.values() if _settings(b) == want), None)
    return list(groups.values())


def _settings(g: Group) -> dict[str, Any]:
    """A row's grid values (method, K and head included) as strings."""
    return {"model.method": g.method, "model.num_blocks": str(g.num_blocks), "model.head": str(g.head), **g.extras}


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[prefix + key] = json.dumps(value)
        else:
            out[prefix + key] = "" if value is None else value
    return out


def write_comparison_csv(path: Path, runs: list[Run], grid_keys: list[str]) -> Path:
    rows, columns = [], ["run_id", "status", *grid_keys]
    for r in runs:
        row = {"run_id": r.point.run_id, "status": r.status, **{k: r.point.overrides.get(k, "") for k in grid_keys}}
        row.update(flatten(r.summary or {"seed": r.point.seed}))
        if r.error:
            row["error"] = r.error
        rows.append(row)
        columns += [c for c in row if c not in columns]
    write_csv(path, rows, columns)
    return path
