"""Dispatch ``train.py``'s commands, and turn bad input into one line instead of a traceback.

Set ``GLCAN_DEBUG=1`` to see the full traceback of such an error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
USAGE = __doc__ or ""


def default_args() -> list[str]:
    """What ``python train.py`` with no arguments runs."""
    return ["compare", "--config", str(CONFIGS / "default_comparison.yaml")]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = default_args()
    command, rest = argv[0], argv[1:]
    try:
        if command == "memory":
            from glcan.memory.cli import main as memory_main

            return memory_main(rest)
        if command == "compare":
            from glcan.compare.cli import main as compare_main

            return compare_main(rest)
        from glcan.cli import GLCanCLI

        GLCanCLI(args=argv)
        return 0
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        if os.environ.get("GLCAN_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
