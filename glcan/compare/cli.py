"""python train.py compare [--config BASE.yaml] --grid KEY=V1,V2 [--grid ...] [--seeds N | --seed_list 0,3]
                        [--out DIR] [--name NAME] [any fit option, passed to every run]

Trains the cross product of the grid (E2E points, which ignore K/aux/split, once per seed),
one run after another in this process, then writes into DIR (default runs/compare_<time>):
  comparison.csv   one row per planned run: summary.json fields, grid values, status
  report.md        the table (accuracy, per-block accuracy, peak memory, step time, ratios
                   to E2E), missing runs, the command, the machine
  acc_vs_memory.png  block_acc.png  loss_curves.png
  runs/<run id>/   each run (summary.json, metrics.csv, config.yaml, checkpoints, wandb/)
  comparison.json  the plan; running the same command again resumes (finished runs skipped)

Run ids: e2e_s0, e2e_checkpoint_s0, local_k4_glcan_s0 (+ _<key>-<value> for other grid keys).
Each run is a W&B run in group NAME (default: DIR's name + a timestamp), plus one run of
job_type "comparison"; offline without an API key; --logger false or WANDB_MODE=disabled: no W&B.
A failed run is reported and the others go on; the report then says the comparison is
incomplete, and the exit status is 1.

Examples:
  python train.py compare --config configs/mnist5k_resnet20_glcan_k4.yaml \\
      --grid model.method=e2e,local --grid model.num_blocks=2,4,8 --grid model.aux=glcan,linear --seeds 3
  python train.py compare --config configs/mnist5k_resnet20_glcan_k4.yaml --grid model.method=e2e,local \\
      --data.name fake --trainer.max_epochs 1 --out runs/smoke
"""

from __future__ import annotations

import glob
import json
import shlex
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from glcan.compare import plots, report, results, runner, tracking
from glcan.compare.grid import CompareError, Options, Plan, expand, parse_args

MANIFEST = "comparison.json"


def _say(text: str) -> None:
    print(f"[compare] {text}", flush=True)


def command_line(argv: list[str]) -> str:
    cmd = shlex.join(["python", "train.py", "compare", *argv])
    if Path(sys.argv[0]).name == "train.py" and not sys.argv[1:]:
        return f"python train.py   # the default comparison, i.e.\n{cmd}"
    return cmd


def comparison_id(opts: Options, out: Path, plan: Plan) -> str:
    """The W&B group: kept in comparison.json so that a resumed comparison stays one group."""
    path = out / MANIFEST
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None:
        if old.get("fixed") != opts.fixed:
            raise CompareError(f"{out} holds a comparison made with other fit options ({shlex.join(old.get('fixed', []))}); "
                               "pass the same options to resume it, or another --out")
        if opts.name and opts.name != old.get("id"):
            raise CompareError(f"{out} holds the comparison '{old.get('id')}'; --name {opts.name} would split its W&B group")
        return str(old["id"])
    if opts.name or opts.out is None:  # the default out is already compare_<time>
        return opts.name or out.name
    return f"{out.name}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"


def write_manifest(out: Path, cid: str, opts: Options, plan: Plan, command: str) -> None:
    data = {"id": cid, "command": command, "fixed": opts.fixed, "grid": dict(plan.grid), "seeds": plan.seeds,
            "runs": [{"run_id": p.run_id, "seed": p.seed, "overrides": p.overrides} for p in plan.points]}
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out / MANIFEST)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    opts = parse_args(argv)
    if opts.help:
        print(__doc__)
        return 0
    from glcan.compare.validate import base_values, check

    base = base_values(check(opts))  # every grid value parsed before anything trains
    plan = expand(opts, base)
    out = Path(opts.out or f"runs/compare_{datetime.now().strftime('%Y%m%d_%H%M%S')}")
    command = command_line(argv)
    cid = comparison_id(opts, out, plan)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, cid, opts, plan, command)
    options = tracking.options_of(base["logger"])
    _say(f"comparison {cid}: {len(plan.points)} run(s) into {out}: {', '.join(p.run_id for p in plan.points)}")

    start = time.perf_counter()
    outcomes = runner.run_all(plan.points, opts.fixed, out, cid, say=_say)
    runs = results.collect(out, plan.points, outcomes)
    groups = results.group_runs(runs)
    results.write_csv(out / "comparison.csv", runs, [k for k, _ in plan.grid])
    try:
        pngs = plots.draw_all(out, groups, runs)
    except Exception as e:  # noqa: BLE001 - the table and CSV are worth more than a plot
        warnings.warn(f"plotting failed ({type(e).__name__}: {e}); report.md and comparison.csv are still written",
                      stacklevel=1)
        pngs = []
    wandb_config = {"grid": dict(plan.grid), "seeds": plan.seeds, "fit_options": shlex.join(opts.fixed),
                    "planned_runs": len(plan.points)}
    wandb_dir = tracking.log_comparison(out, cid, options, runs, pngs, wandb_config)

    reused = sum(o.status == "skipped" for o in outcomes)
    notes = [f"wall time of this call: {time.perf_counter() - start:.0f} s"]
    if reused:
        notes.append(f"{reused} run(s) were complete before this call and were reused (resume)")
    if wandb_dir:
        notes.append(f"W&B: group `{cid}`, comparison run in `{wandb_dir}`")
    report.markdown(out / "report.md", cid, groups, runs, command, pngs, notes)
    report.print_table(groups, runs, cid)
    mode = tracking.wandb_on(options)
    offline = sorted(glob.glob(str(out / "runs" / "*" / "wandb" / "offline-run-*")) + glob.glob(str(out / "wandb" / "offline-run-*")))
    if mode == "offline" and offline:
        print(f"W&B runs saved offline; upload them with: wandb sync {out}/runs/*/wandb/offline-run-* {out}/wandb/offline-run-*")
    print(f"report: {out / 'report.md'}")
    if any(o.status == "interrupted" for o in outcomes):
        return 130
    return 0 if all(r.summary is not None for r in runs) else 1
