"""Loggers: a CSV log always, Weights & Biases when it can work.

W&B must never cost a user their training run: with no API key it runs offline (and says how
to sync later), ``WANDB_MODE=disabled`` or ``--logger false`` turns it off, and any W&B error
(bad key, no network, an unwritable directory) is reported once while training carries on with
the CSV log. Results are always read back from the CSV log and summary.json, never from W&B.
"""

from __future__ import annotations

import csv
import netrc
import os
import warnings
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_warn

from glcan.io import write_csv


@dataclass
class WandbOptions:
    """Weights & Biases settings (``--logger false`` turns W&B off; the CSV log stays).

    Args:
        enabled: false turns W&B off (``--logger false`` is short for ``--logger.enabled false``).
        project: the W&B project.
        group: runs of one comparison share a group (the comparison sets it).
        job_type: defaults to the method (e2e, e2e_checkpoint, local).
        tags: extra tags; backbone, dataset, K and head are always added.
        mode: ``auto`` (online with an API key, offline without), ``online``, ``offline`` or ``disabled``.
    """

    enabled: bool = True
    project: str = "glcan"
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"


def has_api_key() -> bool:
    """True if W&B has a key without asking the network: the environment or ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_mode(options: WandbOptions) -> str:
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("disabled", "offline", "online"):
        return env
    if options.mode != "auto":
        return options.mode
    return "online" if has_api_key() else "offline"


class SafeWandbLogger(WandbLogger):
    """A WandbLogger whose failures turn into one warning and silence, never a crashed run."""

    _failed = False

    def _guard(self, fn: Callable[[], Any]) -> Any:
        if self._failed:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any W&B failure must not stop training
            self._failed = True
            rank_zero_warn(f"W&B failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "training continues with the CSV log only")
            return None

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        self._guard(lambda: WandbLogger.log_metrics(self, metrics, step))

    def log_hyperparams(self, params: Any) -> None:
        self._guard(lambda: WandbLogger.log_hyperparams(self, params))

    def log_image(self, key: str, images: list, step: Optional[int] = None, **kwargs: Any) -> None:
        self._guard(lambda: WandbLogger.log_image(self, key, images, step, **kwargs))

    def log_summary(self, values: dict[str, Any]) -> None:
        """Set W&B summary metrics (the run's final figures)."""
        def update() -> None:
            self.experiment.summary.update(values)
        self._guard(update)

    def finalize(self, status: str) -> None:
        self._guard(lambda: WandbLogger.finalize(self, status))

    def finish(self, exit_code: int = 0) -> None:
        """End the W&B run (a command's run ends with the command; the next one starts afresh)."""
        if self._experiment is not None:
            self._guard(lambda: self._experiment.finish(exit_code=exit_code))

    @property
    def usable(self) -> bool:
        return not self._failed and self._guard(lambda: self.experiment) is not None


class ContinuingCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it continues the run's metrics.csv.

    Lightning's own writer deletes an existing metrics.csv (with a warning) when its directory
    is not empty; a resumed run must keep its history instead. Rows logged after the
    checkpoint a run resumes from are dropped first (:meth:`drop_after`), so no step appears twice.
    """

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def drop_after(self, step: int) -> None:
        """Keep only the rows logged at or before ``step`` (the resumed checkpoint's)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if not r.get("step") or float(r["step"]) <= step]
        write_csv(self.metrics_file_path, rows, self.metrics_keys)


class RunCSVLogger(CSVLogger):
    """The CSV log of one run directory, continued on resume (see :class:`ContinuingCSVWriter`)."""

    @property
    def experiment(self) -> ContinuingCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuingCSVWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(
    run_dir: str, name: str, options: Any, run_config: dict[str, Any], tags: list[str], job_type: str,
    wandb_id: Optional[str] = None, resumed_step: Optional[int] = None,
) -> list[Logger]:
    """The CSV logger (first: its directory is the run directory), and W&B unless turned off.

    Args:
        run_dir: the run directory.
        name: the run's name in W&B.
        options: the ``--logger`` options.
        run_config: the W&B run config (plain values).
        tags, job_type: W&B grouping.
        wandb_id: the W&B run id; a resumed run passes the id it had, so W&B continues that run.
        resumed_step: the global step of the checkpoint a run resumes from (CSV rows after it are dropped).
    """
    path = Path(run_dir)
    csv_logger = RunCSVLogger(save_dir=str(path.parent), name=path.name, version="")
    if resumed_step is not None:
        csv_logger.experiment.drop_after(resumed_step)
    loggers: list[Logger] = [csv_logger]
    if not isinstance(options, WandbOptions):
        fields = {k: v for k, v in vars(options).items() if not k.startswith("__")} if options is not None else {"enabled": False}
        options = WandbOptions(**fields)
    mode = wandb_mode(options)
    if not options.enabled or mode == "disabled":
        return loggers
    # W&B looks for the git repository from its directory: it must exist (else "git root ...
    # does not exist" and no commit in the run's metadata).
    os.makedirs(run_dir, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wandb = SafeWandbLogger(
            name=name, save_dir=run_dir, project=options.project, offline=mode == "offline", group=options.group,
            job_type=options.job_type or job_type, tags=[*tags, *options.tags], config=run_config,
            id=wandb_id, resume="allow" if wandb_id else None,
        )
    # Lightning passes `anonymous=None` to wandb.init, which wandb now answers with a deprecation
    # warning on every run; the setting does nothing, so it is not passed at all.
    wandb._wandb_init.pop("anonymous", None)
    if wandb.usable:
        loggers.append(wandb)
    return loggers


def log_image_panels(loggers: list[Logger], key: str, images: list, captions: list[str], step: int) -> None:
    """Image panels side by side in W&B (e.g. super-resolution's LR, bicubic, SR, HR); the CSV
    log has no images, so without W&B this does nothing."""
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger):
            lg.log_image(key, images, step=step, caption=captions)


def wandb_run_dir(loggers: list[Logger]) -> Optional[str]:
    """The local directory of the W&B run, if there is one."""
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger) and lg.usable:
            return lg._guard(lambda: lg.experiment.dir and os.path.dirname(lg.experiment.dir))
    return None
