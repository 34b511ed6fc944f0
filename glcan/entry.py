"""Dispatch ``train.py``'s commands, and turn bad input into one line instead of a traceback.

Set ``GLCAN_DEBUG=1`` to see the full traceback of such an error.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
USAGE = __doc__ or ""


def default_args() -> list[str]:
    """What ``python train.py`` with no arguments runs: E2E vs local (K=4, GLCAN) on mnist5k.

    It writes into ``runs/default_comparison``; running it again resumes (finished runs are
    skipped and the report is rebuilt).
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = expand_shorthands(list(sys.argv[1:] if argv is None else argv))
    if not argv:
        argv = default_args()
    command, rest = argv[0], argv[1:]
    # LightningCLI warns when given args while sys.argv also has some; here that is by design.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    try:
        if command == "memory":
            from glcan.memory.cli import main as memory_main

            return memory_main(rest)
        if command == "compare":
            from glcan.compare.cli import main as compare_main

            return compare_main(rest)
        # --- glcan.parallel (issue 6): a pipeline run starts its own worker processes
        if command == "fit":
            from glcan.parallel.options import requested_mode

            if requested_mode(rest) == "pipeline":
                from glcan.parallel.launch import main as pipeline_main

                return pipeline_main(rest)
        # --- end glcan.parallel
        from glcan.cli import GLCanCLI

        GLCanCLI(args=argv)
        return 0
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        if os.environ.get("GLCAN_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
