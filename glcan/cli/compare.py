"""``python train.py compare``: the fit parser plus compare's own typed options; then glcan.compare.

The whole command line is parsed once, by the fit parser with compare's options added, so a
typo anywhere is caught before anything trains; each grid value is then checked by the same
parser (parse only, nothing built).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from glcan.cli.cli import GLCanCLI, resolve_config_files, run_fit
from glcan.cli.help import parse_error_line
from glcan.compare.comparison import run_comparison
from glcan.compare.grid import CompareError, Options, expand, make_options
from glcan.lit.rundir import drop_options

OWN = ("--grid", "--seeds", "--seed_list", "--out", "--name", "--baseline", "--shard")
FLAGS = ("--report_only",)

HELP = """usage: python train.py compare [--config BASE.yaml] --grid KEY=V1,V2 [--grid ...] [--seeds N | --seed_list 0,3]
                        [--baseline KEY=V] [--out DIR] [--name NAME] [--shard i/n | --report_only]
                        [any fit option, passed to every run]

Trains the cross product of the grid (E2E points, which ignore K/head/split, once per seed),
one run after another in this process, then writes into DIR (default runs/compare_<time>):
  comparison.csv   one row per planned run: summary.json fields, grid values, status
  report.md        the table (accuracy, its paired difference to E2E and to --baseline's row
                   with 95% intervals, validation accuracy, per-block accuracy, peak memory,
                   step time, ratios to E2E), collapsed and missing runs, the command, the machine
  acc_vs_memory.png  block_acc.png  loss_curves.png
  runs/<run id>/   each run (summary.json, metrics.csv, config.yaml, checkpoints, wandb/)
  comparison.json  the plan; running the same command again resumes (finished runs skipped)

Seeds vary initialisation and data order over one fixed data split (data.seed), so rows are
paired by seed. Run ids: e2e_s0, e2e_recompute_s0, local_k4_glcan_s0 (+ _<key>-<value> for
other grid keys). Each run is a W&B run in group NAME (default: DIR's name + a timestamp), plus
one run of job_type "comparison"; offline without an API key; --logger false: no W&B.
A failed run is reported and the others go on; the report then says the comparison is
incomplete, and the exit status is 1. Across machines: n processes with the same command and
--out on a shared folder, each with --shard i/n (i = 0..n-1, e.g. a Slurm array), train their
share; the last to finish, or --report_only, writes the report.

Examples:
  python train.py compare --config configs/mnist5k_resnet20_glcan_k4.yaml \\
      --grid model.method=e2e,local --grid model.num_blocks=2,4,8 --grid model.head=glcan,linear --seeds 3
  python train.py compare --config configs/mnist5k_resnet20_glcan_k4.yaml --grid model.method=e2e,local \\
      --data.name fake --trainer.max_epochs 1 --out runs/smoke
"""


def add_arguments(parser: Any) -> None:
    """compare's own options, typed, on the fit parser (HELP describes them)."""
    parser.add_argument("--grid", type=str, action="append", default=[])
    parser.add_argument("--seeds", type=Optional[int], default=None)
    for flag in ("--seed_list", "--name", "--baseline", "--shard"):
        parser.add_argument(flag, type=Optional[str], default=None)
    parser.add_argument("--report_only", action="store_true")


def options(cfg: Any, argv: list[str]) -> Options:
    """compare's options from the parsed config; every run is given ``argv`` without them."""
    return make_options(**{flag[2:]: cfg.get(flag[2:]) for flag in OWN + FLAGS}, fixed=drop_options(argv, OWN, FLAGS))


def check_grid(cli: GLCanCLI, opts: Options) -> None:
    """Every grid value through the fit parser (parse only) before anything trains."""
    for key, values in opts.grid:
        for value in values:
            try:
                cli.parser.parse_args([*opts.fixed, f"--{key}", value], defaults=True)
            except (argparse.ArgumentError, SystemExit) as e:
                raise CompareError(f"--grid '{key}={','.join(values)}': {parse_error_line(e, p=cli.parser)}") from None


def command_line(argv: list[str]) -> str:
    cmd = shlex.join(["python", "train.py", "compare", *argv])
    if Path(sys.argv[0]).name == "train.py" and not sys.argv[1:]:
        return f"python train.py   # the default comparison, i.e.\n{cmd}"
    return cmd


def parse(argv: list[str]) -> tuple[GLCanCLI, Options]:
    """The command line, parsed once: the parser (to check grid values with) and the options
    (every run is given its config files by absolute path: a resumed comparison finds them)."""
    argv = resolve_config_files(argv)
    cli = GLCanCLI(argv, run=False, instantiate=False, extra=add_arguments)
    return cli, options(cli.config, argv)


def main(argv: list[str]) -> int:
    cli, opts = parse(argv)
    check_grid(cli, opts)
    model = cli.config.model
    plan = expand(opts, {"model.method": model.method, "model.num_blocks": model.num_blocks, "model.head": model.head})
    return run_comparison(opts, plan, cli.config.get("logger"), command_line(argv), fit=lambda args: run_fit(args))
