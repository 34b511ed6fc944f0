"""The command line: LightningCLI over GLCanModule and GLCanDataModule.

LightningCLI turns the classes' type hints and docstrings into ``--help``, composes YAML configs
(``configs/trainer``, ``configs/data``, ``configs/model``, ``configs/logger``) and gives us
seeding, checkpointing and precision from Lightning. We add: the model's shape arguments linked
from the data, the loggers (CSV always, W&B when possible), the callbacks every run carries
(memory meter, step timer, checkpoints) and, after ``fit``, a test pass and summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from glcan.callbacks import StepTimer
from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.loggers import SafeWandbLogger, WandbOptions, build_loggers, wandb_run_dir
from glcan.memory.meter import MemoryMeter
from glcan.parallel.options import ParallelOptions, ddp_trainer_kwargs
from glcan.summary import build_summary, write_json_atomic


def run_name(model: GLCanModule, datamodule: Any) -> str:
    """``mnist5k_resnet20_local_k4_glcan``: what was trained, readable in a directory listing."""
    h = model.hparams
    name = f"{getattr(datamodule, 'name', 'data')}_{model.arch}_{h.method}"
    return name + (f"_k{model.net.num_blocks}_{h.aux}" if h.method == "local" else "")


class GLCanCLI(LightningCLI):
    """``python train.py fit|validate|test --config configs/X.yaml [--section.key value ...]``."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        super().__init__(
            GLCanModule,
            GLCanDataModule,
            trainer_defaults={
                "callbacks": [
                    MemoryMeter(),
                    StepTimer(),
                    LearningRateMonitor(logging_interval="epoch"),
                    # Names by epoch: global_step counts batches here (see GLCanModule._block_step)
                    # but an epoch number is what a user looks for when resuming.
                    ModelCheckpoint(filename="epoch{epoch:03d}", auto_insert_metric_name=False, save_last=True),
                ]
            },
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--logger", type=WandbOptions, default=WandbOptions(),
            help="Weights & Biases options (offline without an API key; --logger false turns it off). "
            "The CSV log is always written.",
        )
        parser.add_argument(
            "--run_dir", type=Optional[str], default=None,
            help="Write the run exactly here (default: {trainer.default_root_dir}/{dataset}_{arch}_{method}.../version_N).",
        )
        # glcan.parallel (issue 6): --parallel.mode pipeline|ddp, --parallel.workers P, ...
        parser.add_argument("--parallel", type=ParallelOptions, default=ParallelOptions(),
                            help="Parallel training: pipeline (block groups in worker processes) or ddp.")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.batch_size")

    def _cfg(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        cfg = self._cfg()
        kwargs.update(ddp_trainer_kwargs(cfg.get("parallel")))  # glcan.parallel: --parallel.mode ddp
        if cfg.trainer.get("logger") is not False:
            root = cfg.trainer.get("default_root_dir") or "runs"
            name, version = run_name(self.model, self.datamodule), None
            if cfg.get("run_dir"):
                root, name, version = str(Path(cfg.run_dir).parent), Path(cfg.run_dir).name, ""
            h, k = self.model.hparams, self.model.net.num_blocks
            tags = [self.model.arch, str(self.datamodule.name), f"K={k}", str(h.aux if h.method == "local" else "none")]
            run_config = _flat(cfg)
            run_config.update(method=h.method, arch=self.model.arch, num_blocks=k, aux=h.aux if h.method == "local" else None)
            kwargs["logger"] = build_loggers(root, name, version, cfg.get("logger"), run_config, tags, h.method)
        trainer = super().instantiate_trainer(**kwargs)
        if cfg.trainer.get("enable_progress_bar") is not False and trainer.progress_bar_callback is not None:
            # Rich bars, unless the user turned bars off (a persistent callback would refuse that).
            trainer.callbacks = [RichProgressBar(leave=True) if c is trainer.progress_bar_callback else c for c in trainer.callbacks]
        return trainer

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return  # no summary for an interrupted run: a partial one would look complete
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self.write_summary()

    def after_test(self) -> None:
        self.write_summary()

    def write_summary(self) -> Optional[Path]:
        trainer = self.trainer
        # glcan.parallel (ddp): trainer.log_dir is a collective under DDP, so every rank builds the
        # summary (build_summary reads log_dir too) and rank 0 alone writes it.
        log_dir = trainer.log_dir
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        seed = self._cfg().get("seed_everything")
        wandb_dir = wandb_run_dir(trainer.loggers) if trainer.is_global_zero else None
        summary = build_summary(trainer, self.model, self.datamodule, seed, metrics, wandb_dir)
        if not trainer.is_global_zero or log_dir is None:
            return None
        path = write_json_atomic(Path(log_dir) / "summary.json", summary)
        for lg in trainer.loggers:
            if isinstance(lg, SafeWandbLogger):
                lg.log_summary({"test/acc": summary["test_acc"], "memory/peak_bytes": summary["peak_memory_bytes"],
                                "time/step_ms": summary["step_time_ms"]})
        acc = summary["test_acc"]
        mem = summary["peak_memory_bytes"]
        print(f"test/acc {acc:.4f}" if acc is not None else "test/acc n/a",
              f"| peak memory {mem / 2**20:.1f} MiB" if mem else "| peak memory not measured",
              f"| summary: {path}")
        if summary["wandb_dir"] and "offline-run" in summary["wandb_dir"]:
            print(f"W&B run saved offline; upload it later with: wandb sync {summary['wandb_dir']}")
        return path


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """The resolved config as flat dotted keys (W&B run config)."""
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
