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
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from glcan.core.build import build_network, make_heads, probe_shapes, resolve_boundaries
from glcan.core.step import e2e_loss, local_step
from glcan.lit.checks import check_checkpoint_matches, describe, refuse_unsupported_precision
from glcan.lit.metrics import BlockMetrics
from glcan.lit.schedules import build_scheduler
from glcan.models import Backbone, build_backbone


def _default_optimizer(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


class GLCanModule(L.LightningModule):
    """Train a backbone end to end or block by block.

    Args:
        backbone: a registry name (``resnet20``, ``resnet110``, ``resnet50``, ``vgg16_bn``, ...) or
            a ``glcan.models.Backbone`` (your own units and classifier).
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
    """

    def __init__(
        self,
        backbone: Union[str, Backbone] = "resnet20",
        method: Literal["e2e", "e2e_checkpoint", "local"] = "local",
        num_blocks: int = 4,
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "backbone"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self._backbone_spec = backbone  # kept to rebuild this model (memory predictor)
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, num_classes, in_channels=image_shape[0], small_input=small_input)
        self.arch = backbone.name
        self.hparams["arch"] = backbone.name
        k = num_blocks if method == "local" else 1
        boundaries, heads = [], []
        if method == "local":
            shapes = probe_shapes(backbone.units, image_shape)
            boundaries = resolve_boundaries(split, len(shapes), k, self._memory_split(backbone, shapes))
            heads = make_heads(aux, shapes, boundaries, num_classes, image_shape, aux_kwargs)
        self.net = build_network(backbone, method, boundaries, heads)
        if block_lr_scale is not None and len(block_lr_scale) != self.net.num_blocks:
            raise ValueError(f"model.block_lr_scale has {len(block_lr_scale)} entries, need one per block ({k})")
        # torchmetrics deep-copies its state tensors, which FakeTensors do not survive (the memory
        # predictor builds this module under FakeTensorMode), so metrics are always real.
        with unset_fake_temporarily():
            self.metrics = BlockMetrics(self.net.num_blocks, num_classes)
        self.automatic_optimization = method != "local"

    def _memory_split(self, backbone: Backbone, shapes: list) -> Any:
        from glcan.memory.split import memory_split_fn  # imported late: the predictor is heavy

        h = self.hparams
        return memory_split_fn(backbone.units, shapes, h.aux, h.aux_kwargs, h.num_classes, h.image_shape, h.batch_size)

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
            self._log_train([(loss.detach(), logits.detach())], y)
            return loss
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        results = local_step(self.net, x, y, step=lambda k: self._block_step(optimizers, k), backward=self.manual_backward)
        self._log_train(results, y)
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

    def _log_train(self, results: list, y: torch.Tensor) -> None:
        last = len(results) - 1
        for k, (loss, logits) in enumerate(results):
            acc = self.metrics.acc("train")[k]
            acc(logits, y)
            if self.is_local:
                self.log(f"train/block{k}/loss", loss, on_step=True, on_epoch=True)
                self.log(f"train/block{k}/acc", acc, on_step=False, on_epoch=True)
            if k == last:
                self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
                self.log("train/acc", acc, on_step=False, on_epoch=True, prog_bar=True)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None) -> None:
        # E2E path: the model's own setting, so both methods clip the same way.
        val = self.hparams.gradient_clip_val or gradient_clip_val
        if val:
            self.clip_gradients(optimizer, gradient_clip_val=val, gradient_clip_algorithm=gradient_clip_algorithm or "norm")

    def build_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer per block (over the block and its head), or one for E2E."""
        scales = self.hparams.block_lr_scale or [1.0] * self.net.num_blocks
        optimizers = []
        for k, (block, head) in enumerate(zip(self.net.blocks, self.net.heads)):
            opt = self.optimizer_factory(list(block.parameters()) + list(head.parameters()))
            for group in opt.param_groups:
                group["lr"] *= scales[k]
            optimizers.append(opt)
        return optimizers

    def configure_optimizers(self) -> Any:
        configs = []
        for k, opt in enumerate(self.build_optimizers()):
            config: dict[str, Any] = {"optimizer": opt}
            if self.scheduler_factory is not None:
                name = f"lr/block{k}" if self.is_local else "lr"
                sched = build_scheduler(self.scheduler_factory, opt, self._total_steps())
                config["lr_scheduler"] = {"scheduler": sched, "name": name, "interval": self.hparams.scheduler_interval}
            configs.append(config)
        return configs if len(configs) > 1 else configs[0]

    def _total_steps(self) -> Optional[int]:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.estimated_stepping_batches) if trainer is not None else None

    # ---------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Any, stage: str) -> None:
        x, y = batch
        all_logits = self.net.all_logits(x) if self.is_local else [self.net(x)]
        last = len(all_logits) - 1
        for k, logits in enumerate(all_logits):
            acc = self.metrics.acc(stage)[k]
            acc(logits, y)
            if self.is_local:
                self.log(f"{stage}/block{k}/acc", acc)
        self.log(f"{stage}/loss", F.cross_entropy(all_logits[-1], y), prog_bar=stage == "val")
        self.log(f"{stage}/acc", self.metrics.acc(stage)[last], prog_bar=stage == "val")
        top5 = self.metrics.top5(stage)
        if top5 is not None:
            top5(all_logits[-1], y)
            self.log(f"{stage}/acc_top5", top5)

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
