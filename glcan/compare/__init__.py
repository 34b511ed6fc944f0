"""``python train.py compare``: a grid of training runs, one report.

The package is split by stage, each small enough to read at once:

``grid``        the grid's points (E2E deduplicated) and their run ids
                (``e2e_s0``, ``local_k4_glcan_s0``).
``runner``      the runs, sequentially and in-process, resumable: a run whose ``summary.json``
                exists is skipped, an interrupted one continues from its ``last.ckpt``.
``results``     summary.json files -> ``comparison.csv`` rows and the per-configuration table.
``report``      ``report.md`` and the terminal (rich) table.
``plots``       ``acc_vs_memory.png``, ``block_acc.png``, ``loss_curves.png`` (matplotlib, Agg).
``tracking``    one extra W&B run (job_type ``comparison``) with the table and a scatter plot.
``comparison``  one comparison start to finish; the runs are trained by the ``fit`` the
                command layer hands in (glcan.cli.compare parses the command line).
"""

from glcan.compare.grid import CompareError, Options, Plan, Point, expand

__all__ = ["CompareError", "Options", "Plan", "Point", "expand"]
