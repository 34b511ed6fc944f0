"""``python train.py COMMAND ...``: the one place a command line is read and dispatched.

Bad input ends in one line that names what is wrong (``error: ...``, exit status 2) instead of
a traceback; ``GLCAN_DEBUG=1`` shows the traceback behind it. An error nobody foresaw is one
line too (exit status 1), with the hint to rerun under ``GLCAN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from glcan.cli.help import check_config_files, command_help, did_you_mean, parse_error_line
from glcan.core.step import NonFiniteLoss

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

COMMANDS: dict[str, str] = {
    "fit": "Train one run (or pipeline workers, or DDP), then test it and write summary.json.",
    "validate": "Evaluate a checkpoint on the validation set (--ckpt_path).",
    "test": "Evaluate a checkpoint on the test set (--ckpt_path); writes test_<checkpoint>.json beside its run.",
    "predict": "Predict every image under --data.root from a checkpoint: class and probability into a CSV "
               "(super-resolution: upscaled PNGs).",
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
    """What ``python train.py`` with no arguments runs: E2E vs local (K=4, GLCAN) on mnist5k.

    It writes into ``runs/default_comparison``; running it again resumes.
    """
    return ["compare", "--config", str(CONFIGS / "mnist5k_resnet20_glcan_k4.yaml"), "--grid", "model.method=e2e,local",
            "--out", "runs/default_comparison"]


def expand_shorthands(argv: list[str]) -> list[str]:
    """``--logger false`` / ``--logger=false`` is short for ``--logger.enabled false``."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--logger" and i + 1 < len(argv) and argv[i + 1].lower() in ("false", "true"):
            out += ["--logger.enabled", argv[i + 1].lower()]
            i += 2
            continue
        if a.lower() in ("--logger=false", "--logger=true"):
            a = "--logger.enabled=" + a.split("=", 1)[1].lower()
        out.append(a)
        i += 1
    return out


def _handlers() -> dict[str, Callable[[list[str]], int]]:
    from glcan.cli import compare, memory, run

    return {
        "fit": run.fit,
        "validate": lambda a: run.evaluate(a, "validate"),
        "test": lambda a: run.evaluate(a, "test"),
        "predict": run.predict,
        "memory": memory.main,
        "compare": compare.main,
        "check-data": run.check_data,
    }


def _help(command: str, rest: list[str]) -> int:
    from glcan.cli.parser import GLCanCLI

    if command == "compare":
        from glcan.cli.compare import HELP

        print(HELP)
        return 0
    i = next(i for i, a in enumerate(rest) if a in ("-h", "--help"))
    section = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("-") else None
    own = {}
    if command == "memory":
        from glcan.cli.memory import OWN_HELP as own
    if command == "predict":
        own = {"--out FILE": "the CSV to write (default: predictions.csv in the checkpoint's run)"}
    parser = GLCanCLI([], instantiate=False).parser
    print(command_help(command, COMMANDS[command], parser, section, own))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = expand_shorthands(list(sys.argv[1:] if argv is None else argv))
    if not argv:
        argv = default_args()
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE.format(commands="\n".join(f"  {c:<11} {t}" for c, t in COMMANDS.items())))
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        return _fail(f"unknown command {command!r}{did_you_mean(command, COMMANDS)}; commands: {', '.join(COMMANDS)}", 2)
    _quiet()
    try:
        if any(a in ("-h", "--help") for a in rest):
            return _help(command, rest)
        check_config_files(rest)
        return _handlers()[command](rest)
    except argparse.ArgumentError as e:  # jsonargparse's parse errors
        if os.environ.get("GLCAN_DEBUG"):
            raise
        return _fail(parse_error_line(e, _parser_or_none()), 2)
    except (ValueError, OSError, KeyError, NonFiniteLoss) as e:
        if os.environ.get("GLCAN_DEBUG"):
            raise
        return _fail(_first_line(e), 2)
    except Exception as e:  # noqa: BLE001 - an unforeseen error is still one line
        if os.environ.get("GLCAN_DEBUG"):
            raise
        known = _known_misconfiguration(e)
        if known:
            return _fail(known, 2)
        return _fail(f"{type(e).__name__}: {_first_line(e)} (rerun with GLCAN_DEBUG=1 for the traceback)", 1)


def _first_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _known_misconfiguration(e: BaseException) -> Optional[str]:
    """Lightning's own configuration errors (a GPU that is not there, a bad device count)."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return _first_line(e) if isinstance(e, MisconfigurationException) else None


def _parser_or_none():  # noqa: ANN202
    try:
        from glcan.cli.parser import GLCanCLI

        return GLCanCLI([], instantiate=False).parser
    except Exception:  # noqa: BLE001
        return None


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


class _DropLines(logging.Filter):
    """Lightning's info lines that tell a glcan user nothing (advertising, device lists)."""

    NOISE = ("Tip:", "GPU available", "TPU available", "HPU available", "to estimate number of stepping batches")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOISE)


def _quiet() -> None:
    """Silence warnings that are false or not the user's business, where they start."""
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines())
    for pattern in (
        ".*args parameter is intended to run from within Python.*",  # LightningCLI: args= is how we call it
        ".*does not have many workers which may be a bottleneck.*",  # num_workers=0 is our CPU default
        ".*is smaller than the logging interval.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*resuming from a checkpoint that ended before the epoch ended.*",  # ResumeMidEpoch handles it
        ".*LightningCLI.*subclass_mode.*",
        ".*Checkpoint directory .* exists and is not empty.*",  # our run directories are resumed in place
        ".*GPU available but not used.*",
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",  # inside Lightning, not ours to fix
    ):
        warnings.filterwarnings("ignore", message=pattern)
