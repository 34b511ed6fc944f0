"""``python train.py compare``: a grid of training runs, one report.

The package is split by stage, each small enough to read at once:

``grid``      the command line: ``--grid key=v1,v2`` / ``--seeds`` / ``--out``, the expanded
              points (E2E deduplicated) and their run ids (``e2e_s0``, ``local_k4_glcan_s0``).
``validate``  every grid value and pass-through option checked by the fit parser, before any
              training, so a typo costs one line, not an hour.
``runner``    the runs, sequentially and in-process (``GLCanCLI``), resumable: a run whose
              ``summary.json`` exists is skipped.
``results``   summary.json files -> ``comparison.csv`` rows and the per-configuration table.
``report``    ``report.md`` and the terminal (rich) table.
``plots``     ``acc_vs_memory.png``, ``block_acc.png``, ``loss_curves.png`` (matplotlib, Agg).
``tracking``  one extra W&B run (job_type ``comparison``) with the table and a scatter plot.
``cli``       ``main(argv)``, which ties them together.
"""

from glcan.compare.grid import CompareError, Plan, Point, parse_args

__all__ = ["CompareError", "Plan", "Point", "parse_args"]
