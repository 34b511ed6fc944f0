"""GLCanModule: one LightningModule for every training scheme.

``method`` is the one switch: ``e2e`` (backprop through the whole network), ``e2e_recompute``
(the same with per-unit gradient checkpointing) and ``local`` (K blocks, each trained by its own
head and optimizer). Backbone, data, optimizer and seed stay the same, so a comparison differs
in one thing only. E2E uses Lightning's automatic optimization; local learning needs K
optimizers and so manual optimization, with the step itself in ``glcan.core.step``.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from glcan.core.build import is_local
from glcan.core.step import BlockUpdate, check_finite, local_step
from glcan.lit.checks import (ConfigError, check_checkpoint_matches, check_schedule_length, checkpoint_identity,
                              refuse_unsupported_precision)
from glcan.lit.metrics import block_metrics, shared_step
from glcan.lit.pipeline import PipelineStrategy
from glcan.lit.optim import (Spec, block_optimizers, optimizer_configs, plain_spec, schedule_length, spec_class,
                             spec_name, step_schedulers)
from glcan.lit.plan import assemble, needs_plan, plan


class GLCanModule(L.LightningModule):
    """Train a backbone end to end or block by block.

    Every method trains through the one local step (``glcan.core.step.local_step``) under
    Lightning's manual optimization: E2E is the network as one block whose head is the
    backbone's classifier. ``split: memory`` and ``num_blocks: auto`` are planned before the
    model is built (``GLCanModule.planned(...)``; ``train.py`` always plans): ``__init__``
    builds and measures nothing.

    Args:
        backbone: a registry name (resnet20, resnet110, resnet50, vgg16_bn, vit_tiny, ...) or your own.
            Your own network: a ``glcan.backbones.Backbone``, an ``nn.Sequential`` or list of
            units, or (from a config) ``class_path`` to a function that returns one (docs/guide.md).
        method: e2e, e2e_recompute, local or local_recompute. The ``_recompute`` methods (gradient checkpointing)
            recompute their units' activations in the backward: less memory, more time.
        num_blocks: K, the number of blocks in local mode; auto: the fewest that fit memory_budget.
            E2E is one block and ignores it.
        split: where the blocks are cut: uniform, memory (balanced predicted memory) or a list.
            ``uniform`` (the Python default): equal unit counts; ``memory`` (the command line's
            default, configs/defaults.yaml): planned before the model is built; a list: the unit
            index at which each block after the first starts.
        head: the auxiliary head of every block but the last: glcan, linear, dgl or infopro.
            The last block trains through the backbone's own classifier (see ``last_head``).
            Detection: det_glcan or det_conv (docs/detection.md).
            Blocks that output tokens (a ViT) get the head's token form: glcan or linear.
        head_kwargs: options passed to the head, e.g. {"pooling": "avg"} (docs/heads.md).
        last_head: what trains the last block: classifier (the backbone's own) or head.
            ``classifier`` deploys exactly E2E's network; ``head`` a head like the other blocks'.
        optimizer: the optimizer, built once per block (E2E: once); default SGD with Nesterov.
            A ``{class_path, init_args}`` mapping (what a config gives; recorded in checkpoints) or,
            from Python, a callable. Default: SGD, lr 0.05, Nesterov momentum 0.9, weight decay 5e-4.
        scheduler: the learning-rate schedule, built once per optimizer (lr/block{k} in the logs).
            A ``{class_path, init_args}`` mapping or a callable, like ``optimizer``.
        scheduler_interval: step the schedulers every epoch or every step (batch).
        block_lr_scale: optional per-block learning-rate multipliers (length K).
        gradient_clip_val: clip each block's gradient norm to this value (not trainer.gradient_clip_val).
        num_classes: set from the data module (for super-resolution: the output channels, 3).
        image_shape: (C, H, W) of the input, set from the data module.
        task: set from the data module: ``classification``, ``detection``, or ``sr_x2``/``sr_x3``/``sr_x4``
            (super-resolution: EDSR-style backbones, ``sr_glcan``/``sr_conv`` heads, PSNR/SSIM).
        batch_size: set from the data module; the memory split is computed at this batch size.
        small_input: torchvision backbones only: a 3x3 stem without max-pool for 32x32 inputs.
        memory_budget: with num_blocks auto: the GPU memory to fit (4GiB, 12GB or bytes).
        memory_policy: with num_blocks auto: accuracy (fewest blocks) or speed (cheapest step).
            ``accuracy`` takes the fewest blocks that fit, recomputing inside them if that is what
            it takes (``local_recompute``); ``speed`` the cheapest step by counted FLOPs.
        precision: the precision memory predictions assume; linked from ``trainer.precision``.
        boundaries: where the planner cut the blocks for ``split: memory`` (recorded, so a
            checkpoint rebuilds the same blocks); set by :meth:`planned`, not by hand.
        lookahead: how many blocks before the last also learn through a momentum copy of their next
            block (MAN/MLAAN's leap; -1: all). Costs the copies' memory and a forward per step.
        lookahead_momentum: the EMA momentum of those copies (0: the next block's current weights).
    """

    def __init__(
        self,
        backbone: Union[str, dict, nn.Module] = "resnet20",
        method: Literal["e2e", "e2e_recompute", "local", "local_recompute"] = "local",
        num_blocks: Union[int, Literal["auto"]] = 4,
        split: Union[Literal["uniform", "memory"], list[int]] = "uniform",
        head: str = "glcan",
        head_kwargs: Optional[dict[str, Any]] = None,
        last_head: Literal["classifier", "head"] = "classifier",
        optimizer: Optional[OptimizerCallable] = None,
        scheduler: Optional[LRSchedulerCallable] = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        block_lr_scale: Optional[list[float]] = None,
        gradient_clip_val: Optional[float] = None,
        num_classes: int = 10,
        image_shape: Sequence[int] = (3, 32, 32),
        task: Literal["classification", "sr_x2", "sr_x3", "sr_x4", "detection"] = "classification",
        batch_size: int = 128,
        small_input: Optional[bool] = None,
        memory_budget: Optional[Union[int, str]] = None,
        memory_policy: Literal["accuracy", "speed"] = "accuracy",
        precision: str = "32-true",
        boundaries: Optional[list[int]] = None,
        lookahead: int = 0,
        lookahead_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        args = {k: v for k, v in locals().items() if k in inspect.signature(type(self).__init__).parameters and k != "self"}
        if needs_plan(args):
            what = "num_blocks 'auto'" if num_blocks == "auto" else "split 'memory'"
            raise ConfigError(f"model.{what} is chosen by the planner before the model is built: use "
                              "GLCanModule.planned(...) (train.py does), or give num_blocks and split explicitly")
        self.init_arguments = dict(args)  # what variants are planned from (real objects, not their records)
        self.save_hyperparameters(self._record(args))
        parts = assemble(args)
        self.net, self.task, self.backbone_name = parts.net, parts.task, parts.backbone_name
        self.optimizer_spec: Spec = optimizer
        self.scheduler_spec: Spec = scheduler
        spec_class(scheduler, "model.scheduler")  # a scheduler that cannot be imported: one line now
        self.metrics = block_metrics(self.task, self.net.num_blocks, num_classes)
        # One optimizer per block, one backward per block: manual optimization for every method.
        self.automatic_optimization = False
        self._update: Optional[BlockUpdate] = None
        self._loader_state: Optional[list] = None  # a resumed run's loader position (on_train_start)

    @classmethod
    def planned(cls, **arguments: Any) -> "GLCanModule":
        """Plan (``split: memory``, ``num_blocks: auto``: glcan.lit.plan), then build."""
        bound = inspect.signature(cls.__init__).bind(None, **arguments)
        bound.apply_defaults()
        return cls(**plan({k: v for k, v in bound.arguments.items() if k != "self"}))

    @staticmethod
    def _record(args: dict[str, Any]) -> dict[str, Any]:
        """The hyperparameters as a plain, safe record that rebuilds this model.

        A checkpoint then describes itself: ``load_from_checkpoint(path)`` needs no arguments for
        a registry backbone, and the optimizer class comes back with its state (as
        ``class_path``/``init_args``). A network given as a module object is not recorded (pass it
        again: ``load_from_checkpoint(p, backbone=...)``; the command line records a config's
        ``class_path`` itself). hparams.yaml loads with ``yaml.safe_load``.
        """
        record = {k: v for k, v in args.items() if k not in ("backbone", "optimizer", "scheduler")}
        backbone = args["backbone"]
        record.update(backbone=backbone if isinstance(backbone, (str, dict)) else None,
                      optimizer=plain_spec(args["optimizer"]), scheduler=plain_spec(args["scheduler"]),
                      image_shape=[int(s) for s in args["image_shape"]])
        return record

    @property
    def is_local(self) -> bool:
        return is_local(self.hparams.method)

    @property
    def method(self) -> str:
        return self.hparams.method

    @property
    def optimizer_name(self) -> Optional[str]:
        return spec_name(self.optimizer_spec) or "SGD"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def deployable(self) -> nn.Module:
        """The trained network as a plain ``nn.Module`` in eval mode, as the task deploys it
        (``Task.deployable``): the blocks, then the last head (the network's classifier); the
        other heads only served training. It needs no glcan to run, and exports:
        ``torch.export.export(model.deployable(), (x,))``. A detector is torchvision's ``FCOS``."""
        return self.task.deployable(self.net).eval()

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        step = self.global_step  # this batch's step (the update below advances the counter)
        stage = self.pipeline
        if stage is None:
            results = local_step(self.net, x, y, step=self._block_update(), backward=self.manual_backward)
            check_finite([loss for loss, _ in results], step)
            self.metrics.log_train(self, results, y)
        else:
            # One stage of a pipeline (glcan.lit.pipeline): this rank's blocks, on the previous
            # stage's output for this batch; the output goes on to the next stage.
            received = stage.receive()  # (h, x, y) from the stage before; None on the first stage
            h, x, y = received if received is not None else (None, x, y)
            results = local_step(self.net, x, y, step=self._block_update(), backward=self.manual_backward,
                                 blocks=stage.blocks, h=h, send=lambda out: stage.send(out, x, y))
            if self.net.num_blocks - 1 not in stage.blocks:
                # Lightning counts the batch at the last block's optimizer step: count it here too
                # (an update without gradients, which changes nothing), so every stage agrees on it.
                self._block_update().optimizers[-1].step()
            exchange = stage.exchange if shared_step(self, batch_idx) else None
            every = self.metrics.log_train(self, results, y, blocks=stage.blocks, exchange=exchange)
            if every is not None:  # every stage has every block's loss: a NaN anywhere stops them all
                check_finite(list(every), step)
        step_schedulers(self._schedulers(), self.hparams.scheduler_interval, "batch")

    @property
    def pipeline(self) -> Optional[PipelineStrategy]:
        """The pipeline strategy when this process is one stage of a pipeline, else None."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return strategy if isinstance(strategy, PipelineStrategy) else None

    def _block_update(self) -> BlockUpdate:
        if self._update is None:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            last = len(optimizers) - 1

            def clip(opt: Any, val: float) -> None:
                self.clip_gradients(opt, gradient_clip_val=val, gradient_clip_algorithm="norm")

            def step(opt: Any, k: int) -> None:
                if k == last:
                    opt.step()  # the one step per batch that Lightning counts in trainer.global_step
                else:
                    # Lightning counts every LightningOptimizer.step() as a global step: K per batch
                    # would make max_steps, val_check_interval and checkpoint names K times too large.
                    # The strategy call performs the same update, precision plugin included, uncounted.
                    self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None)

            stage = self.pipeline
            self._update = BlockUpdate(optimizers, self.hparams.gradient_clip_val, clip=clip, step=step,
                                       average=stage.average_gradients if stage is not None else None)
        return self._update

    def on_train_start(self) -> None:
        self._update = None  # the trainer's optimizers, fresh for every fit
        # Where in the epoch a resumed run is: the position of the training sampler, saved with
        # the loader's state (torchdata's StatefulDataLoader) in the checkpoint. Lightning would
        # restore it while setting up the data, but the schedule's length (configure_optimizers ->
        # estimated_stepping_batches) sets the data up before the checkpoint's loops are restored;
        # the sampler draws its order lazily, so setting its position here is still in time.
        states, self._loader_state = self._loader_state, None
        sampler = getattr(self.trainer.train_dataloader, "sampler", None)
        saved = ((states or [{}])[0].get("_sampler_iter_state") or {}).get("sampler_state")
        if saved is not None and callable(getattr(sampler, "load_state_dict", None)):
            sampler.load_state_dict(saved)

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        return [] if schedulers is None else schedulers if isinstance(schedulers, list) else [schedulers]

    def on_train_epoch_end(self) -> None:
        stage = self.pipeline
        self.metrics.log_train_epoch(self, exchange=stage.exchange if stage is not None else None)
        step_schedulers(self._schedulers(), self.hparams.scheduler_interval, "epoch")

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer per block (over the block and its head); E2E has one block."""
        return block_optimizers(self.net, self.optimizer_spec, self.hparams.block_lr_scale)

    def planned_schedule_length(self) -> Optional[int]:
        """Scheduler steps in this run: batches (``scheduler_interval: step``) or epochs."""
        trainer = self._trainer
        if trainer is None:
            return None
        if self.hparams.scheduler_interval == "step":
            return int(trainer.estimated_stepping_batches)
        return trainer.max_epochs if trainer.max_epochs not in (None, -1) else None

    def configure_optimizers(self) -> Any:
        return optimizer_configs(self.build_optimizers(), self.scheduler_spec, self.hparams.scheduler_interval,
                                 self.planned_schedule_length())

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch
        self.metrics.log_eval(self, stage, self.net.all_logits(x), y, x)

    def on_validation_epoch_end(self) -> None:
        self.metrics.log_panels(self, "val")

    def on_test_epoch_end(self) -> None:
        self.metrics.log_panels(self, "test")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities of the deployed network (the last head); for super-resolution, the
        HR image."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.task.prediction(self.net(x))

    # ---------------------------------------------------------------- checks
    def setup(self, stage: str) -> None:
        refuse_unsupported_precision(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["glcan"] = checkpoint_identity(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_matches(self, checkpoint)
        self._loader_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
        if self._trainer is not None and self.trainer.training:
            unit = "batches" if self.hparams.scheduler_interval == "step" else "epochs"
            check_schedule_length([schedule_length(s) for s in checkpoint.get("lr_schedulers") or []],
                                  self.planned_schedule_length(), unit)
