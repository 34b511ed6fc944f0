"""The one parser: LightningCLI over GLCanModule and GLCanDataModule.

LightningCLI turns the classes' type hints and docstrings into options, composes YAML configs
(``configs/trainer``, ``configs/data``, ``configs/optim``, ``configs/logger`` and experiment
files) and gives us seeding, checkpointing and precision from Lightning. Every command parses
through this class once: ``fit``/``validate``/``test``/``predict`` and ``memory`` build the
model and data from it, ``compare`` checks its grid with it. It never trains by itself
(``run=False``): the command decides what to do with the parsed config (glcan.cli.run).
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.lit.loggers import WandbOptions
from glcan.parallel.options import ParallelOptions


def precision_name(precision: Any) -> str:
    """``trainer.precision`` as the model's memory predictions name it (a module-level function:
    the parser's links travel with the model to pipeline workers, and a lambda cannot)."""
    return str(precision or "32-true")


class GLCanCLI(LightningCLI):
    """Parse a command's options; build the model and the data (not the trainer).

    Args:
        args: the options after the command name.
        instantiate: false only parses (fast: checks a config or a grid value).
        extra: more arguments for one command, as ``{"--name": {argparse kwargs}}``.
    """

    def __init__(self, args: list[str], instantiate: bool = True, extra: Optional[dict[str, dict]] = None) -> None:
        self._instantiate, self._extra = instantiate, extra or {}
        super().__init__(
            GLCanModule,
            GLCanDataModule,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},  # a typo is not a prefix
            auto_configure_optimizers=False,  # one optimizer per block: --model.optimizer, not --optimizer
            args=args,
            run=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--logger", type=WandbOptions, default=WandbOptions(),
            help="Weights & Biases options (offline without an API key; --logger false turns it off). "
            "The CSV log is always written.",
        )
        parser.add_argument(
            "--run_dir", type=Optional[str], default=None,
            help="Write the run exactly here (default: {trainer.default_root_dir}/{dataset}_{backbone}_{method}.../version_N).",
        )
        parser.add_argument(
            "--ckpt_path", type=Optional[str], default=None,
            help="fit: resume from this checkpoint ('last': the latest run of this config, or --run_dir's); "
            "test/validate/predict: the weights to use.",
        )
        parser.add_argument("--parallel", type=ParallelOptions, default=ParallelOptions(),
                            help="Parallel training: pipeline (block groups in worker processes) or ddp.")
        for name, kwargs in self._extra.items():
            parser.add_argument(name, **kwargs)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")  # the data says what is learnt
        parser.link_arguments("data.batch_size", "model.batch_size")
        parser.link_arguments("trainer.precision", "model.precision", compute_fn=precision_name)

    def _set_seed(self) -> None:
        if self._instantiate:
            super()._set_seed()

    def instantiate_classes(self) -> None:
        """Build the data and the model; the trainer is built by the command that runs it."""
        if not self._instantiate:
            return
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule, self.model = self.config_init.data, self.config_init.model
        backbone = self.config.model.backbone
        if not isinstance(backbone, str) and hasattr(backbone, "class_path"):  # record the user's class_path
            self.model.hparams["backbone"] = {"class_path": backbone.class_path,
                                              "init_args": dict(vars(backbone.get("init_args") or {}))}

    def make_trainer(self, callbacks: list, save_config: bool, **kwargs: Any) -> Any:
        """The Trainer of the parsed config: ``callbacks`` join the config's own, ``kwargs``
        (logger, strategy, ...) override its settings; ``save_config`` writes config.yaml into
        the run directory."""
        self.trainer_defaults = {"callbacks": callbacks}
        if not save_config:
            self.save_config_callback = None
        return self.instantiate_trainer(**kwargs)
