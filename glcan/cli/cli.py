"""GLCanCLI: LightningCLI's own subcommands (fit, validate, test, predict) over glcan's classes.

LightningCLI turns GLCanModule's and GLCanDataModule's signatures into options, composes the
YAML configs (``configs/defaults.yaml`` first, then ``--config`` files, then the command line),
seeds, and runs the Trainer method of the subcommand. glcan adds only what is its own:

- the model is *planned, then built* (``GLCanModule.planned``: ``split: memory``,
  ``num_blocks: auto``), through a jsonargparse instantiator;
- ``fit`` writes into a run directory it places and locks (glcan.lit.rundir; ``--ckpt_path
  last`` resumes the latest run of the same experiment in place), attaches the CSV and W&B
  loggers there, trains (in this process, DDP replicas or pipeline stages), then tests and writes
  summary.json; Ctrl+C or SIGTERM leaves a checkpoint and the command that resumes;
- ``validate``/``test``/``predict`` take the checkpoint's own run config when no ``--config``
  is given, and leave a record beside the checkpoint's run.

The callbacks of every run are listed in ``configs/defaults.yaml``, not here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import yaml
from jsonargparse import Namespace, namespace_to_dict
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from glcan.lit import rundir
from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.lit.callbacks import RunInterrupted
from glcan.lit.records import EvaluationRecord, PredictionWriter
from glcan.lit.loggers import WandbOptions, build_loggers, finish_wandb, run_config, wandb_options
from glcan.lit.summary import finish_fit
from glcan.parallel.options import ParallelOptions, trainer_kwargs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULTS = CONFIGS / "defaults.yaml"


def precision_name(precision: Any) -> str:
    """``trainer.precision`` as the model's memory predictions name it (the parser's link)."""
    return str(precision or "32-true")


class GLCanCLI(LightningCLI):
    """``train.py fit|validate|test|predict``; ``run=False`` parses and builds model and data only
    (what ``memory`` and ``check-data`` need), with no subcommand; ``instantiate=False`` only
    parses (what ``compare`` checks its grid with)."""

    def __init__(self, args: list[str], run: bool = True, instantiate: bool = True,
                 extra: Optional[Callable[[LightningArgumentParser], None]] = None) -> None:
        self._instantiate, self._extra = instantiate, extra
        defaults = {"default_config_files": [str(DEFAULTS)], "exit_on_error": False, "allow_abbrev": False}
        kwargs = {s: dict(defaults) for s in self.subcommands()} if run else defaults
        super().__init__(GLCanModule, GLCanDataModule, seed_everything_default=0, save_config_kwargs={"overwrite": True},
                         parser_kwargs={"exit_on_error": False, "allow_abbrev": False, **kwargs},
                         auto_configure_optimizers=False, args=args,
                         run=run, load_from_checkpoint_support=False)

    # ---------------------------------------------------------------- parsing
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--logger", type=Union[bool, WandbOptions], default=WandbOptions(),
                            help="Weights & Biases (offline without an API key; false turns it off; the CSV log is always written).")
        parser.add_argument("--run_dir", type=Optional[str], default=None,
                            help="write the run exactly here (default: {trainer.default_root_dir}/{experiment}/version_N).")
        parser.add_argument("--parallel", type=ParallelOptions, default=ParallelOptions(),
                            help="Parallel training: pipeline (block groups in worker processes) or ddp.")
        parser.add_argument("--out", type=Optional[str], default=None,
                            help="predict: the CSV to write (super-resolution: the folder for the PNGs); compare: its folder.")
        parser.add_argument("--images", type=Optional[str], default=None,
                            help="the folder of images to predict (default: data.root).")
        parser.add_argument("--budget", type=Optional[str], default=None,
                            help="a GPU memory budget (4GiB, 12GB, bytes): which methods fit it.")
        parser.add_argument("--json", action="store_true", help="print the report as one JSON object.")
        if self._extra is not None:
            self._extra(parser)
        for key in ("num_classes", "image_shape", "task"):  # the data says what is learnt, and from what
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.link_arguments("data.batch_size", "model.batch_size")
        parser.link_arguments("trainer.precision", "model.precision", compute_fn=precision_name)
        parser.add_instantiator(self.build_model, GLCanModule, subclasses=True)

    def build_model(self, cls: type, *args: Any, **kwargs: Any) -> Any:
        """The model's instantiator: the optimizer, the schedule and a ``class_path`` backbone as
        their ``{class_path, init_args}`` specs (plain values a checkpoint records and
        ``instantiate_class`` builds), then plan (glcan.lit.plan) and build."""
        model = self.cfg.model
        for key in ("optimizer", "scheduler", "backbone"):
            value = model.get(key)
            if value is not None and hasattr(value, "class_path"):
                kwargs[key] = {"class_path": value.class_path, "init_args": namespace_to_dict(value.get("init_args") or Namespace())}
        return cls.planned(*args, **kwargs)

    def _set_seed(self) -> None:
        if self._instantiate:
            super()._set_seed()

    def _parse_ckpt_path(self) -> None:
        """Not LightningCLI's merge of a checkpoint's hyperparameters into the config: glcan checks
        a checkpoint against the config (GLCanModule.on_load_checkpoint, one line naming what
        differs); a path that is not a checkpoint gets its line here, before anything is built."""
        subcommand = self.config.get("subcommand")
        spec = self.config[subcommand].get("ckpt_path") if subcommand else None
        if spec and spec != "last":
            rundir.checkpoint_file(spec)

    def before_instantiate_classes(self) -> None:
        """``memory --budget``: the budget ``num_blocks: auto`` plans the model for, unless the
        model names its own."""
        if self.cfg.get("budget") and self.cfg.model.get("memory_budget") is None:
            self.cfg.model.memory_budget = self.cfg.budget

    def instantiate_classes(self) -> None:
        if self._instantiate:
            super().instantiate_classes()

    @property
    def cfg(self) -> Any:
        """This command's config (the subcommand's section)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The Trainer of the config, writing into this command's run (``fit``) or beside its
        checkpoint (the others, which leave a record there: glcan.lit.records), with the CSV
        and W&B loggers attached there."""
        cfg, sub = self.cfg, self.subcommand
        if sub is None:
            return super().instantiate_trainer(logger=False, **kwargs)
        experiment = rundir.experiment_name(cfg, self.model, self.datamodule)
        wandb = wandb_options(cfg.logger if sub != "predict" else False)  # predict's output is files
        if sub == "fit":
            self.run = rundir.place(cfg, self.model, self.datamodule)
            path, job, ckpt, record = self.run.path, self.model.hparams.method, self.run.resume_from, self.run.record
            name = f"{experiment}-s{cfg.get('seed_everything')}-{record.get('wandb_id', '')[:6]}"
            # Several processes train; a checkpoint is evaluated in this one (a pipeline run's
            # config still says pipeline when validate/test start from it).
            kwargs.update(trainer_kwargs(cfg.get("parallel"), self.model, cfg.trainer))
        else:
            ckpt = rundir.eval_checkpoint(cfg, self.model, self.datamodule)
            path, job, record, name = rundir.record_dir(ckpt), sub, None, f"{experiment}-{sub}"
            self.save_config_callback = None  # an evaluation writes its record, not a config.yaml
            self.datamodule.predict_root = cfg.get("images")
            if sub == "test":  # super-resolution on a user's folder: every photograph, unless it trained on it
                saved = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
                self.datamodule.evaluate_every_photo((saved.get("datamodule_hyper_parameters") or {}).get("root"))
        # LightningCLI passes these on to the Trainer's method (each method takes the ones it has).
        for key, value in {"ckpt_path": str(ckpt) if ckpt else None, "verbose": False, "return_predictions": False}.items():
            self.config_init[sub][key] = value
        trainer = super().instantiate_trainer(logger=False, default_root_dir=str(path), **kwargs)
        if sub != "fit":
            trainer.callbacks.append(PredictionWriter(path, cfg.get("out")) if sub == "predict"
                                     else EvaluationRecord(ckpt, path))
        # The loggers join once the trainer is valid: a bad accelerator fails above, before a W&B
        # run or a CSV log exists.
        trainer.loggers = build_loggers(path, name, run_config(cfg, self.model, self.datamodule), wandb, job,
                                        record=record, resumed_from=ckpt if sub == "fit" else None, csv=sub == "fit")
        return trainer

    # ---------------------------------------------------------------- fit
    def fit(self, model: GLCanModule, **kwargs: Any) -> None:
        """Train (in this process, DDP replicas or pipeline stages), test, write summary.json."""
        self.exit_code = 1
        self.run.acquire()
        try:
            try:
                self.trainer.fit(model, **kwargs)
            except RunInterrupted as e:
                if self.trainer.is_global_zero:
                    where = f"checkpoint saved to {e.checkpoint}" if e.checkpoint else "no checkpoint directory"
                    print(f"stopped by {e.signame}; {where}. Resume with:\n  {self.run.resume_command(self._args)}",
                          file=sys.stderr, flush=True)
                self.exit_code = 130
                return
            finish_fit(self.trainer, model, self.datamodule, self.run, self.cfg.get("seed_everything"))
            self.exit_code = 0
        finally:
            finish_wandb(self.trainer.loggers, self.exit_code)
            self.run.release()

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """The command line, its ``--config`` files found and read first (an evaluation without
        one: its checkpoint's run config)."""
        self._args = list(args or [])
        super().parse_arguments(parser, resolve_config_files(with_run_config(self._args)))

    # ---------------------------------------------------------------- validate / test / predict
    # LightningCLI's own, over the checkpoint; glcan.lit.records' callbacks write what they leave.
    def after_validate(self) -> None:
        finish_wandb(self.trainer.loggers, 0)

    after_test = after_predict = after_validate


def run_fit(args: list[str]) -> int:
    """``train.py fit ARGS`` in this process (what ``compare`` runs for each point): its exit status."""
    return getattr(GLCanCLI(["fit", *args]), "exit_code", 0)


def resolve_config_files(argv: list[str]) -> list[str]:
    """``--config`` files as paths that exist: as given, else a shipped config of that name
    (so ``--config mnist5k_resnet20_glcan_k4.yaml`` works from any directory); each is read
    once here so that a YAML error names its file and line (jsonargparse names neither)."""
    out: list[str] = []
    for a in argv:
        if a.startswith("--config="):
            out += ["--config", str(_check_yaml(_find_config(a.partition("=")[2])))]
        else:
            out.append(str(_check_yaml(_find_config(a))) if out and out[-1] == "--config" else a)
    return out


def _find_config(value: str) -> Path:
    given = Path(value).expanduser()
    shipped = CONFIGS / (given.relative_to("configs") if given.parts[:1] == ("configs",) else given)
    for path in (given, shipped):
        if path.is_file():
            return path.resolve()
    raise ValueError(f"--config {value}: no such file (looked in {Path.cwd()} and in the shipped configs, {CONFIGS})")


def _check_yaml(path: Path) -> Path:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}:{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections (model:, data:, trainer:, ...)")
    return path


def with_run_config(argv: list[str]) -> list[str]:
    """``validate``/``test``/``predict`` with a checkpoint and no ``--config``: start from the
    config of the checkpoint's run (the checkpoint describes its model; the run's config.yaml
    also says which data it was trained on), so no data option has to be repeated."""
    if argv[:1] not in (["validate"], ["test"], ["predict"]) or any(a.partition("=")[0] == "--config" for a in argv):
        return argv
    spec = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"), None)
    if spec in (None, "last") or not Path(spec).exists():
        return argv
    config = rundir.run_config_of(rundir.checkpoint_file(spec))
    return [argv[0], "--config", str(config), *argv[1:]] if config else argv
