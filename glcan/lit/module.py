"""GLCanModule: one LightningModule for every training scheme.

``method`` is the one switch: ``e2e`` (backprop through the whole network), ``e2e_checkpoint``
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
from torch._subclasses.fake_tensor import unset_fake_temporarily

from glcan.core.build import as_backbone, build_network
from glcan.core.step import e2e_loss, local_step
from glcan.lit.auto import choose_for_budget
from glcan.lit.checks import check_checkpoint_matches, describe, refuse_unsupported_precision
from glcan.lit.metrics import BlockMetrics
from glcan.lit.optim import block_optimizers, optimizer_configs


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


class GLCanModule(L.LightningModule):
    """Train a backbone end to end or block by block.

    Args:
        backbone: a registry name (``resnet20``, ``resnet110``, ``resnet50``, ``vgg16_bn``, ...) or
            your own network: a ``glcan.models.Backbone``, an ``nn.Sequential`` or list of units,
            or (from a config) ``class_path`` to a function that returns one, or its dotted name.
        method: ``e2e``, ``e2e_checkpoint`` or ``local``.
        num_blocks: K, the number of blocks in local mode (ignored by E2E).
        split: ``uniform`` (equal unit counts), ``memory`` (balance predicted training memory)
            or an explicit list: the unit index at which each block after the first starts.
        aux: the auxiliary head of every block in local mode: ``glcan``, ``linear``, ``dgl``,
            ``infopro``. The last block's head is the network's classifier.
        aux_kwargs: options passed to the head (e.g. ``{"pooling": "avg"}`` or ``{"lam": 0.5}``).
        optimizer: built once per block in local mode, once for the network in E2E.
        scheduler: built once per optimizer; named ``lr/block{k}`` in local mode.
        scheduler_interval: step the schedulers every ``epoch`` or every ``step`` (batch).
        block_lr_scale: optional per-block learning-rate multipliers (length K).
        gradient_clip_val: clip each optimizer's gradient norm to this value (per block in
            local mode). Use this instead of ``trainer.gradient_clip_val``, which Lightning
            rejects under manual optimization.
        num_classes: set from the data module.
        image_shape: (C, H, W) of the input, set from the data module.
        batch_size: set from the data module; the memory split is computed at this batch size.
        small_input: torchvision backbones only: a 3x3 stem without max-pool for 32x32 inputs.
        memory_budget: with ``num_blocks: auto``, the GPU memory to fit (``4GiB``, ``12GB`` or
            bytes): the smallest K whose predicted peak fits is chosen (see glcan.memory.budget).
        precision: the precision that memory predictions (``num_blocks: auto``) assume; set it to
            the same value as ``trainer.precision`` (``32-true`` or ``bf16-mixed``).
    """

    def __init__(
        self,
        backbone: Union[str, nn.Module] = "resnet20",
        method: Literal["e2e", "e2e_checkpoint", "local"] = "local",
        num_blocks: Union[int, Literal["auto"]] = 4,
        split: Union[Literal["uniform", "memory"], list[int]] = "memory",
        aux: str = "glcan",
        aux_kwargs: Optional[dict[str, Any]] = None,
        optimizer: OptimizerCallable = _default_optimizer,
        scheduler: Optional[LRSchedulerCallable] = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        block_lr_scale: Optional[list[float]] = None,
        gradient_clip_val: Optional[float] = None,
        num_classes: int = 10,
        image_shape: Sequence[int] = (3, 32, 32),
        batch_size: int = 128,
        small_input: Optional[bool] = None,
        memory_budget: Optional[Union[int, str]] = None,
        precision: str = "32-true",
    ) -> None:
        super().__init__()
        if method == "local" and num_blocks == "auto":
            args = {k: v for k, v in locals().items() if k in inspect.signature(type(self).__init__).parameters and k != "self"}
            num_blocks = choose_for_budget(type(self), args).num_blocks
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "backbone"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._backbone_spec = backbone  # kept to rebuild this model (memory predictor)
        backbone = as_backbone(backbone, num_classes, image_shape, small_input)
        self.arch = backbone.name  # not a hyperparameter: LightningCLI feeds those back as init args
        self.net = build_network(backbone, method, num_blocks=num_blocks if method == "local" else 1, split=split,
                                 aux=aux, aux_kwargs=aux_kwargs, num_classes=num_classes, image_shape=image_shape,
                                 batch_size=batch_size)
        if block_lr_scale is not None and len(block_lr_scale) != self.net.num_blocks:
            raise ValueError(f"model.block_lr_scale has {len(block_lr_scale)} entries, need one per block ({self.net.num_blocks})")
        # torchmetrics deep-copies its state tensors, which FakeTensors do not survive (the memory
        # predictor builds this module under FakeTensorMode), so metrics are always real.
        with unset_fake_temporarily():
            self.metrics = BlockMetrics(self.net.num_blocks, num_classes)
        self.automatic_optimization = method != "local"

    def init_kwargs(self) -> dict[str, Any]:
        """The arguments that rebuild this model (the predictor rebuilds it under FakeTensorMode)."""
        params = inspect.signature(type(self).__init__).parameters
        kwargs = {k: v for k, v in self.hparams.items() if k in params}
        return {**kwargs, "backbone": self._backbone_spec, "optimizer": self.optimizer_factory,
                "scheduler": self.scheduler_factory}

    @property
    def is_local(self) -> bool:
        return self.hparams.method == "local"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> Optional[torch.Tensor]:
        x, y = batch
        if not self.is_local:
            loss, logits = e2e_loss(self.net, x, y)
            self.metrics.log_train(self, [(loss.detach(), logits.detach())], y)
            return loss
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        results = local_step(self.net, x, y, step=lambda k: self._block_step(optimizers, k), backward=self.manual_backward)
        self.metrics.log_train(self, results, y)
        if self.hparams.scheduler_interval == "step":
            self._step_schedulers()
        return None

    def _block_step(self, optimizers: list, k: int) -> None:
        """Clip, step and zero block k's optimizer."""
        opt = optimizers[k]
        if self.hparams.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm")
        if k == len(optimizers) - 1:
            opt.step()  # the one step per batch that Lightning counts in trainer.global_step
        else:
            # Lightning counts every LightningOptimizer.step() as a global step: K per batch would
            # make max_steps, val_check_interval and checkpoint names K times too large. The
            # strategy call below performs the same update, precision plugin included, uncounted.
            self.trainer.strategy.optimizer_step(opt.optimizer, closure=lambda: None)
        opt.zero_grad(set_to_none=True)  # frees block k's gradients before block k+1 runs

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for s in schedulers if isinstance(schedulers, list) else [schedulers]:
            s.step()

    def on_train_epoch_end(self) -> None:
        if self.is_local and self.hparams.scheduler_interval == "epoch":
            self._step_schedulers()

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
        # E2E path: the model's own setting, so both methods clip the same way.
        val = self.hparams.gradient_clip_val or gradient_clip_val
        if val:
            self.clip_gradients(optimizer, gradient_clip_val=val, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer per block (over the block and its head), or one for E2E."""
        return block_optimizers(self.net, self.optimizer_factory, self.hparams.block_lr_scale)

    def configure_optimizers(self) -> Any:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else None
        return optimizer_configs(self.build_optimizers(), self.scheduler_factory, self.hparams.scheduler_interval, total)

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch
        self.metrics.log_eval(self, stage, self.net.all_logits(x) if self.is_local else [self.net(x)], y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # ---------------------------------------------------------------- checks
    def setup(self, stage: str) -> None:
        refuse_unsupported_precision(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["glcan"] = describe(self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_checkpoint_matches(self, checkpoint)
