"""One comparison, start to finish: the plan, the runs, the CSV, the plots, the report, W&B.

The runs go through ``fit(args)``, which the command layer hands in (it is ``train.py fit``
in this process), so this package trains nothing by itself and imports no command code.
"""

from __future__ import annotations

import glob
import json
import shlex
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from glcan.compare import plots, report, results, runner, tracking
from glcan.compare.grid import CompareError, Options, Plan
from glcan.io import write_json
from glcan.lit.loggers import wandb_options

MANIFEST = "comparison.json"


def _say(text: str) -> None:
    print(f"[compare] {text}", flush=True)


def _manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def comparison_id(opts: Options, out: Path) -> str:
    """The W&B group: kept in comparison.json so that a resumed comparison stays one group."""
    old = _manifest(out)
    if old:
        if old.get("fixed") != opts.fixed:
            raise CompareError(f"{out} holds a comparison made with other fit options ({shlex.join(old.get('fixed', []))}); "
                               "pass the same options to resume it, or another --out")
        if opts.name and opts.name != old.get("id"):
            raise CompareError(f"{out} holds the comparison '{old.get('id')}'; --name {opts.name} would split its W&B group")
        return str(old["id"])
    if opts.name or opts.out is None or opts.shard is not None:  # the default out is already compare_<time>;
        return opts.name or out.name  # shards started apart must agree on their group without a timestamp
    return f"{out.name}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


def write_manifest(out: Path, cid: str, opts: Options, plan: Plan, command: str) -> dict[str, Any]:
    data = {"id": cid, "command": command, "fixed": opts.fixed, "grid": dict(plan.grid), "seeds": plan.seeds,
            "wandb_id": _manifest(out).get("wandb_id") or uuid.uuid4().hex[:12],
            "runs": [{"run_id": p.run_id, "seed": p.seed, "overrides": p.overrides} for p in plan.points]}
    write_json(out / MANIFEST, data)
    return data


def run_comparison(opts: Options, plan: Plan, logger_options: Any, command: str,
                   fit: Callable[[list[str]], int]) -> int:
    """Train what is missing of ``plan``, then write every result; the exit status.

    0 when every run is complete, 1 when some failed (the report says so), 130 when interrupted.
    """
    out = Path(opts.out or f"runs/compare_{datetime.now().strftime('%Y%m%d_%H%M%S')}")
    cid = comparison_id(opts, out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(out, cid, opts, plan, command)
    options = wandb_options(logger_options)
    _say(f"comparison {cid}: {len(plan.points)} run(s) into {out}: {', '.join(p.run_id for p in plan.points)}")

    start = time.perf_counter()
    mine = [] if opts.report_only else plan.points if opts.shard is None else \
        [p for j, p in enumerate(plan.points) if j % opts.shard[1] == opts.shard[0]]
    if opts.shard is not None:
        _say(f"shard {opts.shard[0]}/{opts.shard[1]}: {len(mine)} of the {len(plan.points)} run(s)")
    outcomes = runner.run_all(mine, opts.fixed, out, cid, fit, say=_say, command=command)
    runs = results.collect(out, plan.points, outcomes)
    if opts.shard is not None and any(r.summary is None for r in runs) and \
            all(o.status in ("ok", "skipped") for o in outcomes):
        missing = sum(r.summary is None for r in runs)
        print(f"shard {opts.shard[0]}/{opts.shard[1]} done; {missing} run(s) of other shards still missing: when they "
              f"are done, `{command.splitlines()[-1]} --report-only` writes the report (any shard finishing last "
              "writes it too)")
        return 0
    baseline = tuple(opts.baseline.split("=", 1)) if opts.baseline else None
    groups = results.group_runs(runs, baseline)
    results.write_comparison_csv(out / "comparison.csv", runs, [k for k, _ in plan.grid])
    try:
        pngs = plots.draw_all(out, groups, runs)
    except Exception as e:  # noqa: BLE001 - the table and CSV are worth more than a plot
        warnings.warn(f"plotting failed ({type(e).__name__}: {e}); report.md and comparison.csv are still written",
                      stacklevel=1)
        pngs = []
    wandb_config = {"grid": dict(plan.grid), "seeds": plan.seeds, "fit_options": shlex.join(opts.fixed),
                    "planned_runs": len(plan.points)}
    wandb_dir = tracking.log_comparison(out, cid, options, runs, pngs, wandb_config, run_id=manifest["wandb_id"])

    reused = sum(o.status == "skipped" for o in outcomes)
    notes = [f"wall time of this call: {time.perf_counter() - start:.0f} s"]
    if reused:
        notes.append(f"{reused} run(s) were complete before this call and were reused (resume)")
    if wandb_dir:
        notes.append(f"W&B: group `{cid}`, comparison run in `{wandb_dir}`")
    report.markdown(out / "report.md", cid, groups, runs, command, pngs, notes, baseline=opts.baseline)
    report.print_table(groups, runs, cid, baseline=opts.baseline)
    mode = tracking.wandb_on(options)
    offline = sorted(glob.glob(str(out / "runs" / "*" / "wandb" / "offline-run-*")) + glob.glob(str(out / "wandb" / "offline-run-*")))
    if mode == "offline" and offline:
        print(f"W&B runs saved offline; upload them with: wandb sync {out}/runs/*/wandb/offline-run-* {out}/wandb/offline-run-*")
    print(f"report: {out / 'report.md'}")
    if any(o.status == "interrupted" for o in outcomes):
        return 130
    return 0 if all(r.summary is not None for r in runs) else 1
