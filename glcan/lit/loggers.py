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

import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn


@dataclass
class WandbOptions:
    """Weights & Biases settings (``--logger false`` turns W&B off; the CSV log stays).

    Args:
        enabled: false turns W&B off (``--logger false`` is short for ``--logger.enabled false``).
        project: the W&B project.
        group: runs of one comparison share a group (the comparison sets it).
        job_type: defaults to the method (e2e, e2e_recompute, local).
        tags: extra tags; backbone, dataset, K and head are always added.
        mode: ``auto`` (online with an API key, offline without), ``online``, ``offline`` or ``disabled``.
    """

    enabled: bool = True
    project: str = "glcan"
    group: Optional[str] = None
    job_type: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"


def wandb_options(value: Any) -> WandbOptions:
    """``--logger`` as WandbOptions: the parsed options, ``false`` (off), or a plain mapping."""
    if isinstance(value, WandbOptions):
        return value
    if value is None or value is False:
        return WandbOptions(enabled=False)
    if value is True:
        return WandbOptions()
    fields = vars(value) if hasattr(value, "__dict__") else dict(value)
    return WandbOptions(**{k: v for k, v in fields.items() if k in WandbOptions.__dataclass_fields__})


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


def continue_csv(logger: CSVLogger, resumed_step: int) -> None:
    """A resumed run keeps its metrics.csv: Lightning's CSV writer starts the file afresh, so the
    rows logged up to the checkpoint's step are read first and logged again (later rows belong to
    the part of the run that is redone)."""
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and float(r["step"]) <= resumed_step]
    path.unlink()
    for row in rows:
        step = int(float(row.pop("step")))
        logger.log_metrics({k: v for k, v in row.items() if v not in ("", None)}, step=step)  # as written
    logger.save()


def build_loggers(run_dir: Path, name: str, config: dict[str, Any], options: WandbOptions, job_type: str,
                  record: Optional[dict[str, Any]] = None, resumed_from: Optional[Path] = None,
                  csv: bool = True) -> list[Logger]:
    """The CSV logger of the run directory (first: its directory is the run directory), and
    W&B unless turned off.

    Args:
        run_dir: the run directory (its checkpoints go to ``run_dir/checkpoints``).
        name: the W&B run's name (it says what the run is; unique within a project).
        config: the W&B run config (plain values; see :func:`run_config`).
        options: the ``--logger`` options.
        job_type: the method, or the evaluation (test, validate).
        record: the run's run.json: a resumed run continues its W&B run id.
        resumed_from: the checkpoint a resumed run starts from (its CSV history is kept up to it).
        csv: False for evaluations, which write a JSON record instead.
    """
    loggers: list[Logger] = []
    if csv:
        csv_logger = CSVLogger(save_dir=str(run_dir.parent), name=run_dir.name, version="")
        if resumed_from is not None:
            continue_csv(csv_logger, int(torch_load_step(resumed_from)))
        loggers.append(csv_logger)
    mode = wandb_mode(options)
    if not options.enabled or mode == "disabled":
        return loggers
    # W&B looks for the git repository from its directory: it must exist (else "git root ...
    # does not exist" and no commit in the run's metadata).
    os.makedirs(run_dir, exist_ok=True)
    wandb_id = (record or {}).get("wandb_id")
    h = config
    tags = [str(t) for t in (h.get("backbone_name"), h.get("data.name"), h.get("model.method"),
                             f"K={h['model.num_blocks']}" if h.get("local") else None,
                             h.get("model.head") if h.get("local") else None) if t]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wandb = SafeWandbLogger(
            name=name, save_dir=str(run_dir), project=options.project, offline=mode == "offline", group=options.group,
            job_type=options.job_type or job_type, tags=[*tags, *options.tags], config=config,
            id=wandb_id if csv else None, resume="allow" if wandb_id and csv else None,
        )
    # Lightning passes `anonymous=None` to wandb.init, which wandb now answers with a deprecation
    # warning on every run; the setting does nothing, so it is not passed at all.
    wandb._wandb_init.pop("anonymous", None)
    if wandb.usable:
        loggers.append(wandb)
    return loggers


def torch_load_step(ckpt: Path) -> int:
    """The global step a checkpoint was saved at (read lazily: the file is memory-mapped)."""
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))


def run_config(cfg: Any, model: Any, datamodule: Any) -> dict[str, Any]:
    """The resolved config as flat dotted keys of plain values, as W&B shows it; an E2E run
    without the local-only keys it ignores; plus what was built (K, boundaries, network)."""
    flat = _flat(cfg)
    flat["config"] = ", ".join(str(c) for c in (cfg.get("config") or []))
    if not model.is_local:
        flat = {k: v for k, v in flat.items() if not (k.startswith("model.") and k.split(".")[1] in LOCAL_ONLY)}
    flat.update({"model.method": model.hparams.method, "model.num_blocks": model.net.num_blocks,
                 "model.boundaries": str(list(model.net.boundaries)), "backbone_name": model.backbone_name,
                 "local": model.is_local})
    return flat


LOCAL_ONLY = ("num_blocks", "head", "head_kwargs", "split", "block_lr_scale", "memory_budget", "boundaries", "last_head")


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    items = vars(cfg).items() if hasattr(cfg, "__dict__") else cfg.items()
    for key, value in items:
        if key.startswith("__"):
            continue
        dotted = f"{prefix}{key}"
        if hasattr(value, "__dict__") and not callable(value):
            out.update(_flat(value, dotted + "."))
        elif isinstance(value, (str, int, float, bool, type(None))):
            out[dotted] = value
        else:
            out[dotted] = str(value)
    return out


def finish_wandb(loggers: Optional[list], code: int = 0) -> None:
    """End this command's W&B run (marked failed unless it finished): the loggers' own, or with
    ``loggers=None`` whatever W&B run is current (between the runs of a comparison). Never raises."""
    if loggers is not None:
        for lg in loggers:
            if isinstance(lg, SafeWandbLogger):
                lg.finish(code)
        return
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=code)
    except Exception:  # noqa: BLE001 - W&B trouble must not stop a comparison
        pass


SUMMARY_KEYS = {"test/acc": "test_acc", "memory/peak_bytes": "peak_memory_bytes", "memory/method": "memory_method",
                "memory/peak_block": "memory_peak_block", "time/step_ms": "step_time_ms",
                "time/step_cpu_ms": "step_cpu_ms", "time/threads": "threads", "model/boundaries": "boundaries",
                "model/params": "params", "model/head_params": "head_params", "test/psnr": "test_psnr",
                "test/ssim": "test_ssim", "test/bicubic_psnr": "bicubic_psnr", "test/bicubic_ssim": "bicubic_ssim"}


def log_summary(loggers: list, summary: dict[str, Any]) -> None:
    """The run's final figures as W&B summary metrics."""
    values = {k: summary[v] for k, v in SUMMARY_KEYS.items() if summary.get(v) is not None}
    if "model/boundaries" in values:
        values["model/boundaries"] = str(values["model/boundaries"])
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger):
            lg.log_summary(values)


def wandb_sync_hint(run_dir: Path) -> Optional[str]:
    """The command that uploads every offline W&B directory of a run (one per resumed segment,
    all the same run id), or None."""
    found = sorted(Path(run_dir).glob("wandb/offline-run-*"))
    if not found:
        return None
    return "W&B run saved offline; upload it later with: wandb sync " + " ".join(str(p) for p in found)


def log_image_panels(loggers: list[Logger], key: str, images: list, captions: list[str], step: int) -> None:
    """Image panels side by side in W&B (e.g. super-resolution's LR, bicubic, SR, HR); the CSV
    log has no images, so without W&B this does nothing."""
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger):
            lg.log_image(key, images, step=step, caption=captions)


def log_image_boxes(loggers: list[Logger], key: str, image: torch.Tensor, boxes: dict[str, dict[str, torch.Tensor]],
                    names: list[str], step: int) -> None:
    """One image with box sets overlaid in W&B (wandb's box overlay: e.g. ``predictions`` and
    ``ground_truth``, each ``{"boxes": K x 4 xyxy pixels, "labels": K, optional "scores": K}``);
    nothing without W&B."""
    labels = dict(enumerate(names))

    def box_data(d: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        scores = d.get("scores")
        return [{"position": {"minX": b[0], "minY": b[1], "maxX": b[2], "maxY": b[3]}, "domain": "pixel",
                 "class_id": int(c), "box_caption": labels.get(int(c), str(int(c))) + (f" {scores[i]:.2f}" if scores is not None else ""),
                 **({"scores": {"score": float(scores[i])}} if scores is not None else {})}
                for i, (b, c) in enumerate(zip(d["boxes"].tolist(), d["labels"].tolist()))]

    sets = {name: {"box_data": box_data(d), "class_labels": labels} for name, d in boxes.items()}
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger):
            lg.log_image(key, [image], step=step, boxes=[sets])


def wandb_run_dir(loggers: list[Logger]) -> Optional[str]:
    """The local directory of the W&B run, if there is one."""
    for lg in loggers:
        if isinstance(lg, SafeWandbLogger) and lg.usable:
            return lg._guard(lambda: lg.experiment.dir and os.path.dirname(lg.experiment.dir))
    return None
