"""``python train.py compare``: its own flags, the grid checked by the fit parser, then glcan.compare."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from glcan.cli import run
from glcan.cli.help import did_you_mean, options, parse_error_line
from glcan.cli.parser import GLCanCLI
from glcan.compare.comparison import run_comparison
from glcan.compare.grid import CompareError, Options, expand, split_values

RESERVED = {  # keys compare sets itself -> what to use instead
    "seed_everything": "--seeds N or --seed_list",
    "run_dir": "--out DIR",
    "logger.group": "--name NAME",
    "config": "--config (passed to every run)",
    "ckpt_path": "nothing: an interrupted comparison resumes its runs by itself",
}
OWN_FLAGS = ("--grid", "--seeds", "--seed_list", "--out", "--name")

HELP = """usage: python train.py compare [--config BASE.yaml] --grid KEY=V1,V2 [--grid ...] [--seeds N | --seed_list 0,3]
                        [--out DIR] [--name NAME] [any fit option, passed to every run]

Trains the cross product of the grid (E2E points, which ignore K/head/split, once per seed),
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
      --grid model.method=e2e,local --grid model.num_blocks=2,4,8 --grid model.head=glcan,linear --seeds 3
  python train.py compare --config configs/mnist5k_resnet20_glcan_k4.yaml --grid model.method=e2e,local \\
      --data.name fake --trainer.max_epochs 1 --out runs/smoke
"""



def parse_grid(spec: str) -> tuple[str, list[str]]:
    bad = CompareError(f"--grid '{spec}' needs key=v1,v2 (e.g. --grid model.num_blocks=2,4,8)")
    key, eq, rest = spec.partition("=")
    key = key.strip()
    if key.startswith("--"):
        key = key[2:]
    if not eq or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", key):
        raise bad
    values = split_values(rest)
    if not values or any(v == "" for v in values):
        raise bad
    if key in RESERVED:
        raise CompareError(f"--grid '{spec}': {key} is set by compare; use {RESERVED[key]}")
    if len(set(values)) != len(values):
        raise CompareError(f"--grid '{spec}': a value is repeated")
    return key, values


def _int_list(flag: str, text: str) -> list[int]:
    try:
        seeds = [int(s) for s in split_values(text.strip("[]"))]
    except ValueError:
        raise CompareError(f"{flag} needs integers, got '{text}'") from None
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"{flag} '{text}' repeats a seed")
    return seeds


def parse_args(argv: list[str]) -> Options:
    """Split ``argv`` into compare's own flags and the fit options passed to every run."""
    opts, i, seeds_from = Options(), 0, None
    while i < len(argv):
        arg = argv[i]
        flag, eq, inline = arg.partition("=")
        if flag in OWN_FLAGS or flag in ("--seed_everything", "--run_dir", "--logger.group", "--ckpt_path"):
            if eq:
                value, i = inline, i + 1
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 2
            else:
                raise CompareError(f"{flag} needs a value")
            if flag == "--grid":
                key, values = parse_grid(value)
                if any(k == key for k, _ in opts.grid):
                    raise CompareError(f"--grid '{value}': {key} is already in the grid")
                opts.grid.append((key, values))
            elif flag == "--seeds":
                if not value.isdigit() or int(value) < 1:
                    raise CompareError(f"--seeds needs a positive count (seeds 0..N-1), got '{value}'")
                if seeds_from not in (None, "--seed_everything"):
                    raise CompareError(f"--seeds and {seeds_from} both given; use one")
                opts.seeds, seeds_from = list(range(int(value))), flag
            elif flag in ("--seed_list", "--seed_everything"):
                if seeds_from not in (None, "--seed_everything"):
                    raise CompareError(f"{flag} and {seeds_from} both given; use one")
                if flag == "--seed_list" or seeds_from is None:
                    opts.seeds, seeds_from = _int_list(flag, value), flag
            elif flag == "--out":
                opts.out = value
            elif flag == "--name":
                if not re.fullmatch(r"[\w.+-]+", value):
                    raise CompareError(f"--name '{value}' may only use letters, digits and . _ + -")
                opts.name = value
            else:
                raise CompareError(f"{flag} is set by compare for every run; use {RESERVED[flag[2:]]}")
            continue
        opts.fixed.append(arg)
        i += 1
    return opts




def parse_fit(args: list[str]) -> Any:
    """The resolved ``fit`` config for ``args`` (parsed, nothing built); raises ``argparse.ArgumentError``."""
    return GLCanCLI(args, instantiate=False).config


def check(opts: Options) -> Any:
    """Validate the pass-through options and every grid value with the fit parser before
    anything trains (a typo costs one line, not an hour); return the base config."""
    parser = GLCanCLI([], instantiate=False).parser
    try:
        base = parse_fit(opts.fixed)
    except argparse.ArgumentError as e:
        raise CompareError(f"bad fit option: {parse_error_line(e, parser)}") from None
    known = options(parser)
    for key, values in opts.grid:
        spec = f"{key}={','.join(values)}"
        if key not in known and not any(key.startswith(k + ".") for k in known if "." in k):
            raise CompareError(f"--grid '{spec}': unknown key '{key}'{did_you_mean(key, known)}")
        for value in values:
            try:
                parse_fit([*opts.fixed, f"--{key}", value])
            except argparse.ArgumentError as e:
                raise CompareError(f"--grid '{spec}': bad value '{value}': {parse_error_line(e, parser)}") from None
    return base


def command_line(argv: list[str]) -> str:
    cmd = shlex.join(["python", "train.py", "compare", *argv])
    if Path(sys.argv[0]).name == "train.py" and not sys.argv[1:]:
        return f"python train.py   # the default comparison, i.e.\n{cmd}"
    return cmd


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    base = check(opts)
    plan = expand(opts, {"model.method": base.model.method, "model.num_blocks": base.model.num_blocks,
                         "model.head": base.model.head})
    return run_comparison(opts, plan, base.get("logger"), command_line(argv), fit=run.fit)
