"""The command layer: ``python train.py COMMAND ...``. Nothing in the library imports it.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's own subcommands
(glcan.cli.cli); ``memory`` and ``check-data`` (here) and ``compare`` (glcan.cli.compare) are
thin entry points over the same parser. Bad input ends in one line that names what is wrong
(``error: ...``, exit status 2) instead of a traceback; ``GLCAN_DEBUG=1`` shows the traceback
behind it. An error nobody foresaw is one line too (exit status 1), with the hint to rerun
under ``GLCAN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from typing import Callable, Optional, Sequence

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.warnings import disable_possible_user_warnings

from glcan.cli import compare
from glcan.cli import help as screen
from glcan.cli.cli import CONFIGS, GLCanCLI
from glcan.core.step import NonFiniteLoss
from glcan.lit.plan import memory_report
from glcan.memory.report import format_report

COMMANDS: dict[str, str] = {
    "fit": "Train one run (in one process, DDP or a pipeline), then test it and write summary.json.",
    "validate": "Evaluate a checkpoint on the validation set (--ckpt_path).",
    "test": "Evaluate a checkpoint on the test set (--ckpt_path); writes test_<checkpoint>.json beside its run.",
    "predict": "Predict every image under --images (or --data.root) from a checkpoint: class and probability "
               "into a CSV (super-resolution: upscaled PNGs; detection: COCO-format boxes).",
    "memory": "Predict training memory without training: every method, and what fits --budget.",
    "compare": "Train a grid of runs (E2E vs local, heads, K, seeds) and write one report.",
    "check-data": "Read every image of the configured data once and list the broken ones.",
}

USAGE = """usage: python train.py COMMAND [options]      (no COMMAND: the default comparison on mnist5k)

commands:
{commands}

python train.py COMMAND --help    options of one command (one screen)
GLCAN_DEBUG=1                     show the traceback behind an error line"""


def default_args() -> list[str]:
    """What ``python train.py`` with no arguments runs: E2E vs local (K=4, GLCAN) on mnist5k,
    into ``runs/default_comparison`` (running it again resumes). About 90 s on an idle 2-core
    machine, 16 minutes on a loaded one."""
    return ["compare", "--config", str(CONFIGS / "mnist5k_resnet20_glcan_k4.yaml"), "--grid", "model.method=e2e,local",
            "--out", "runs/default_comparison"]


def memory(args: list[str]) -> int:
    """``train.py memory``: predict, don't train. The same parser as ``fit`` reads the config and
    the overrides, so any key that trains also predicts (``--data.batch_size 1024``); model and
    data are built for real (cheap: no data is read), then every method is planned and predicted
    under FakeTensorMode (glcan.lit.plan.memory_report)."""
    cli = GLCanCLI(args, run=False)
    cfg, dm, model = cli.config, cli.datamodule, cli.model
    report = memory_report(model, dm.batch_size, dm.image_shape, dm.num_classes,
                           precision=model.hparams.precision,
                           budget=cfg.get("budget") or model.hparams.memory_budget, prefer=model.hparams.memory_policy)
    config = ", ".join(str(c) for c in (cfg.get("config") or [])) or None
    print(json.dumps({"config": config, **report}) if cfg.get("json") else format_report(report, config))
    return 0


def check_data(args: list[str]) -> int:
    """``train.py check-data``: read every image once; list the broken ones (exit 1 if any)."""
    dm = GLCanCLI(args, run=False).datamodule
    count, broken = dm.check()
    if not count:
        print(f"{dm.name}: nothing to check (the data comes from a verified archive or is generated)")
        return 0
    for path, why in broken:
        print(f"broken: {path}: {why}")
    print(f"{dm.name} under {dm.root}: {count} image(s) read, {len(broken)} broken", flush=True)
    return 1 if broken else 0


HANDLERS: dict[str, Callable[[list[str]], int]] = {"memory": memory, "compare": compare.main, "check-data": check_data}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv) or default_args()
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands="\n".join(f"  {c:<11} {t}" for c, t in COMMANDS.items())))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        return fail(f"unknown command {command!r}{screen.did_you_mean(command, COMMANDS)}; commands: {', '.join(COMMANDS)}", 2)
    quiet()
    try:
        if any(a in ("-h", "--help") for a in rest):
            print(compare.HELP if command == "compare" else screen.command_help(command, COMMANDS[command], rest))
            return 0
        if command in HANDLERS:
            return HANDLERS[command](rest)
        return getattr(GLCanCLI([command, *rest]), "exit_code", 0)  # fit, validate, test, predict
    except (Exception, SystemExit) as e:  # noqa: BLE001 - every error is one line; GLCAN_DEBUG=1 shows its traceback
        if os.environ.get("GLCAN_DEBUG") or isinstance(e, SystemExit) and not e.code:
            raise
        if isinstance(e, BrokenPipeError):  # the reader of our output is gone (| head): nothing more to say
            return 0
        if isinstance(e, (argparse.ArgumentError, SystemExit)):  # jsonargparse's parse errors
            return fail(screen.parse_error_line(e, rest), 2)
        if isinstance(e, (ValueError, OSError, KeyError, NonFiniteLoss, MisconfigurationException)):  # bad input
            return fail(screen.first_line(e), 2)
        return fail(f"{type(e).__name__}: {screen.first_line(e)} (rerun with GLCAN_DEBUG=1 for the traceback)", 1)


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


# Lightning's info lines that tell a glcan user nothing (advertising, device lists).
NOISE = ("Tip:", "GPU available", "TPU available", "to estimate number of stepping batches")


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(n in record.getMessage() for n in NOISE)


def quiet() -> None:
    """Silence warnings that are false or not the user's business, where they start."""
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_noise)  # once: a logger keeps a filter once
    disable_possible_user_warnings()  # Lightning's guesses: num_workers=0 is our CPU default, a short epoch, ...
    for pattern in (
        ".*args parameter is intended to run from within Python.*",  # LightningCLI: args= is how we call it
        ".*Checkpoint directory .* exists and is not empty.*",  # our run directories are resumed in place
        ".*Experiment logs directory .* exists and is not empty.*",  # metrics.csv is continued (lit.loggers)
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # inside Lightning, not ours to fix
        ".*'set_vital' is deprecated.*",  # inside torchdata's StatefulDataLoader
    ):
        warnings.filterwarnings("ignore", message=pattern)
