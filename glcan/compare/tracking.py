"""The comparison's own W&B run: job_type ``comparison``, in the runs' group.

It logs the per-run results as a ``wandb.Table``, a ``wandb.plot.scatter`` of test accuracy vs
peak memory, the report's PNGs, and whether the comparison is complete. Like the runs' logger
it is best effort: any W&B failure is one warning and the comparison's files stand. Offline
without an API key; nothing at all with ``--logger false`` or ``WANDB_MODE=disabled``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Optional

from glcan.compare.results import MIB, Run, metric_of
from glcan.lit.loggers import WandbOptions, wandb_mode

COLUMNS = ["run_id", "method", "num_blocks", "head", "seed", "test_acc", "peak_memory_mib", "step_time_ms", "memory_method"]


def columns(runs: list[Run]) -> list[str]:
    """COLUMNS with the runs' primary metric in ``test_acc``'s place (``test_psnr`` for super-resolution)."""
    key = f"test_{metric_of([r.summary for r in runs if r.summary]).name}"
    return [key if c == "test_acc" else c for c in COLUMNS]


def wandb_on(options: WandbOptions) -> Optional[str]:
    """The W&B mode the comparison uses, or None when W&B is off."""
    mode = wandb_mode(options)
    return None if not options.enabled or mode == "disabled" else mode


def table_rows(runs: list[Run]) -> list[list[Any]]:
    key = columns(runs)[COLUMNS.index("test_acc")]
    rows = []
    for r in runs:
        s = r.summary
        if s is None:
            continue
        mem = s.get("peak_memory_bytes")
        rows.append([r.point.run_id, s.get("method"), s.get("num_blocks"), s.get("head") or "none", s.get("seed"),
                     s.get(key), None if mem is None else mem / MIB, s.get("step_time_ms"), s.get("memory_method")])
    return rows


def log_comparison(out: Path, cid: str, options: WandbOptions, runs: list[Run], plots: list[str],
                   config: dict[str, Any], run_id: Optional[str] = None) -> Optional[str]:
    """Log the comparison run; return its local directory (None when off or failed).

    ``run_id`` is kept in comparison.json: a resumed comparison updates the same W&B run, so
    its group holds one comparison run however often the command was rerun.
    """
    mode = wandb_on(options)
    if mode is None:
        return None
    try:
        import wandb

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = wandb.init(project=options.project, group=cid, job_type="comparison", name=f"{cid}/comparison",
                             dir=str(out), mode=mode, config=config, tags=["comparison", *options.tags],
                             reinit="finish_previous", id=run_id, resume="allow" if run_id else None)
        cols = columns(runs)
        key = cols[COLUMNS.index("test_acc")]
        table = wandb.Table(columns=cols, data=table_rows(runs))
        run.log({
            "comparison/runs": table,
            "comparison/acc_vs_memory": wandb.plot.scatter(table, "peak_memory_mib", key,
                                                           title="Test accuracy vs peak memory (MiB)" if key == "test_acc"
                                                           else "Test PSNR (dB) vs peak memory (MiB)"),
            **{f"comparison/{Path(p).stem}": wandb.Image(str(out / p)) for p in plots if (out / p).is_file()},
        })
        missing = [r.point.run_id for r in runs if r.summary is None]
        run.summary.update({"complete": not missing, "missing_runs": missing, "planned_runs": len(runs)})
        where = os.path.dirname(run.dir) if run.dir else None
        run.finish()
        return where
    except Exception as e:  # noqa: BLE001 - W&B must never cost the comparison
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        warnings.warn(f"W&B comparison run failed ({type(e).__name__}: {first}); the comparison's files are complete",
                      stacklevel=2)
        try:
            import wandb

            if wandb.run is not None:
                wandb.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass
        return None
