"""The command layer: ``python train.py COMMAND``.

It reads a command line once (glcan.cli.parser), dispatches it (glcan.cli.main) and turns bad
input into one line. Nothing in the library packages imports it.
"""

from glcan.cli.main import main

__all__ = ["main"]
