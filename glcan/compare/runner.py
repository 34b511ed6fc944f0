"""Run the points one after another, in this process, and resume where a previous call stopped.

Each point is ``fit(["--config", ..., *overrides, "--seed_everything", seed, "--run_dir",
out/runs/<id>, "--logger.group", comparison_id])``, where ``fit`` is ``train.py fit`` handed in
by the command layer. A fit tests the model and writes ``summary.json`` atomically, so a run
whose summary.json exists is complete and is skipped on the next call. A run that was
interrupted (a ``last.ckpt`` but no summary) continues from that checkpoint with
``--ckpt_path last``; a run directory with neither is left from a run that never got going and
is started again. A run directory that another process is training in (its lock is held: an
overlapping shard, a second compare on the same folder) is left alone and reported as not run.

Failure policy: a run that raises is reported (one line here, the traceback in
``runs/<id>/error.txt``) and the comparison **continues** with the other points; the report
then lists it as missing and ``compare`` exits 1. Ctrl+C (or a run that exits) stops the
comparison; what finished is still reported, as incomplete. Between runs the W&B run is
finished (guarded), so one run's W&B data never flows into the next.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from glcan.compare.grid import Point
from glcan.lit.loggers import finish_wandb
from glcan.lit.rundir import holder

SUMMARY = "summary.json"
ERROR = "error.txt"
LAST = Path("checkpoints") / "last.ckpt"


@dataclass
class Outcome:
    point: Point
    status: str  # "ok" (ran now), "skipped" (complete before), "failed", "interrupted", "not run"
    error: Optional[str] = None
    seconds: float = 0.0


def run_dir(out: Path, point: Point) -> Path:
    return out / "runs" / point.run_id


def fit_args(point: Point, fixed: list[str], out: Path, comparison_id: str, resume: bool = False) -> list[str]:
    # The model summary table is the same for every run of a grid: once per run is noise.
    return ["--trainer.enable_model_summary", "false", *fixed, *point.args(), "--seed_everything", str(point.seed),
            "--run_dir", str(run_dir(out, point)), "--logger.group", comparison_id,
            *(["--ckpt_path", "last"] if resume else [])]


def run_all(
    points: list[Point], fixed: list[str], out: Path, comparison_id: str, fit: Callable[[list[str]], int],
    say: Callable[[str], None] = print, command: Optional[str] = None,
) -> list[Outcome]:
    """Run every point not already complete; return one outcome per point, in order.

    ``fit(args)`` trains one run and returns its exit status (130: interrupted). ``command`` is
    the comparison's own command line: an interrupted run says to rerun it (GLCAN_RESUME_COMMAND),
    not to resume the one run by hand.
    """
    done = [p for p in points if (run_dir(out, p) / SUMMARY).is_file()]
    if done:
        say(f"skipping {len(done)} complete run(s) (summary.json exists): {', '.join(p.run_id for p in done)}")
    todo = [p for p in points if p not in done]
    outcomes = {id(p): Outcome(p, "skipped") for p in done}
    stopped = False
    for n, point in enumerate(todo, 1):
        if stopped:
            outcomes[id(point)] = Outcome(point, "not run")
            continue
        rd = run_dir(out, point)
        pid = holder(rd)
        if pid is not None:  # never remove or resume a run that is training right now
            outcomes[id(point)] = Outcome(point, "not run", f"in use by another process (pid {pid}); left to it")
            say(f"{point.run_id}: NOT RUN: in use by another process (pid {pid}); left to it")
            continue
        resume = (rd / LAST).is_file()
        if resume:
            say(f"{point.run_id}: resuming the interrupted run from {rd / LAST}")
        elif rd.exists():
            say(f"{point.run_id}: removing the run directory of a run that never saved a checkpoint")
            shutil.rmtree(rd)
        (rd / ERROR).unlink(missing_ok=True)
        args = fit_args(point, fixed, out, comparison_id, resume)
        say(f"[{n}/{len(todo)}] {point.run_id}: {' '.join(args)}")
        start, code = time.perf_counter(), 0
        if command:
            os.environ["GLCAN_RESUME_COMMAND"] = command
        try:
            status = fit(args)
            if status == 130:
                outcome, stopped, code = Outcome(point, "interrupted", "stopped (resumable from its last.ckpt)"), True, 1
            elif (rd / SUMMARY).is_file():
                outcome = Outcome(point, "ok")
            else:
                outcome = Outcome(point, "failed", f"the run ended (status {status}) without writing summary.json")
                code = 1
        except (KeyboardInterrupt, SystemExit) as e:
            outcome, stopped, code = Outcome(point, "interrupted", f"stopped ({type(e).__name__})"), True, 1
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores SIGINT after one
        except Exception as e:  # noqa: BLE001 - one failed point must not lose the others
            code = 1
            message = str(e).strip().splitlines()[0] if str(e).strip() else ""
            outcome = Outcome(point, "failed", f"{type(e).__name__}: {message}"[:300])
            rd.mkdir(parents=True, exist_ok=True)
            (rd / ERROR).write_text(traceback.format_exc())
        finally:
            os.environ.pop("GLCAN_RESUME_COMMAND", None)
            finish_wandb(None, code)
        outcome.seconds = time.perf_counter() - start
        outcomes[id(point)] = outcome
        if outcome.status != "ok":
            where = f" (traceback: {rd / ERROR})" if (rd / ERROR).is_file() else ""
            say(f"{point.run_id}: {outcome.status.upper()}: {outcome.error}{where}")
        else:
            say(f"{point.run_id}: done in {outcome.seconds:.0f} s")
    return [outcomes[id(p)] for p in points]
