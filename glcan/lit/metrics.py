"""Per-block metrics (torchmetrics), one set per stage so states never mix, and what is logged.

Classification (:class:`BlockMetrics`) keys: ``train/loss``, ``train/acc``, ``val/acc``,
``test/acc`` (the last head: the network's prediction) and, in local mode,
``{stage}/block{k}/acc`` and ``train/block{k}/loss_step`` / ``_epoch`` for every block, the
layer-wise curve of local learning.

Training logs cost per call, not per block: every ``self.log`` call is about a millisecond of
Python on a CPU, and per-block keys made 2K of them a step (a few percent of a K=16 step). So a
step updates the blocks' metric states and one vector of their losses (:class:`BlockLosses`);
the per-block step values are logged only on the steps Lightning writes
(``log_every_n_steps``), and the epoch values once, at the epoch's end. The keys and values are
those Lightning's ``on_step``/``on_epoch`` logging gave (epoch means weighted by batch size).

Super-resolution (:class:`SRMetrics`) keys: ``train/loss`` (L1), ``{stage}/psnr``,
``{stage}/ssim``, ``{stage}/bicubic_psnr``, ``{stage}/bicubic_ssim`` and, in local mode,
``{stage}/block{k}/psnr``. :func:`block_metrics` picks the set for a task.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from glcan.core.task import Task
from glcan.heads.sr import bicubic_upscale
from glcan.lit.loggers import log_image_boxes, log_image_panels

STAGES = ("train", "val", "test")


class BlockLosses(Metric):
    """The epoch mean of every block's training loss (weighted by batch size): one vector update
    per step. Each process keeps its own, as Lightning's unsynchronised epoch logs do; a pipeline
    stage counts only its own blocks (``blocks``), and the stages add theirs up at the epoch's end."""

    full_state_update = False

    def __init__(self, num_blocks: int) -> None:
        super().__init__(sync_on_compute=False)
        self.add_state("total", torch.zeros(num_blocks, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_blocks, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses: torch.Tensor, batch_size: int, blocks: Optional[Sequence[int]] = None) -> None:
        if blocks is None:
            self.total += losses.detach().to(self.total.dtype) * batch_size
            self.count += batch_size
            return
        own = list(blocks)
        self.total[own] += losses.detach()[own].to(self.total.dtype) * batch_size
        self.count[own] += batch_size

    def compute(self) -> torch.Tensor:
        return (self.total / self.count).float()


Exchange = Callable[[torch.Tensor], torch.Tensor]  # the sum over every process (a pipeline's stages)


def _writes_this_step(module: L.LightningModule) -> bool:
    """Whether Lightning writes step-level logs for the batch just trained (every
    ``log_every_n_steps`` batches; the global step already counts this one)."""
    trainer = module.trainer
    return trainer.global_step % max(1, trainer.log_every_n_steps) == 0


def shared_step(module: L.LightningModule, batch_idx: int) -> bool:
    """Whether a pipeline's stages exchange their losses after this batch: on the steps
    Lightning writes and at each epoch's last batch."""
    return _writes_this_step(module) or batch_idx + 1 >= module.trainer.num_training_batches


def log_block_losses(module: L.LightningModule, losses: BlockLosses, results: list[tuple[torch.Tensor, Any]],
                     batch_size: int, blocks: Optional[Sequence[int]] = None,
                     exchange: Optional[Exchange] = None) -> Optional[torch.Tensor]:
    """One step: update the epoch means; on a writing step log each block's loss (``_step``).

    In a pipeline stage (``blocks``: its own), the stages add up their losses on the exchange
    steps (``exchange``); every stage then has every block's loss, which it returns (so that
    every stage can check them), and rank 0 logs them. Returns the losses of every block, or None
    when this stage has only its own."""
    own = torch.stack([loss.float() for loss, _ in results])
    stacked = own
    if blocks is not None:
        stacked = torch.zeros(losses.total.shape[0], dtype=torch.float32, device=own.device)
        stacked[list(blocks)] = own
    losses.update(stacked, batch_size, blocks)
    if blocks is not None:
        if exchange is None:
            return None
        mask = torch.zeros_like(stacked)
        mask[list(blocks)] = 1.0
        summed = exchange(torch.stack([stacked * mask, mask]))  # the mean over the replicas
        stacked = (summed[0] / summed[1]).float()
        module.log("train/loss_step", stacked[-1], on_step=True, on_epoch=False, prog_bar=True)
    if _writes_this_step(module):
        for k, value in enumerate(stacked):
            module.log(f"train/block{k}/loss_step", value, on_step=True, on_epoch=False)
    return stacked


def log_block_loss_means(module: L.LightningModule, losses: BlockLosses, exchange: Optional[Exchange] = None) -> None:
    """The epoch's end: each block's mean training loss (``_epoch``), then a fresh epoch."""
    if exchange is not None:  # a pipeline: every stage's blocks, over every replica
        summed = exchange(torch.stack([losses.total, losses.count]))
        means = (summed[0] / summed[1]).float()
        module.log("train/loss_epoch", means[-1], on_step=False, on_epoch=True)
    elif losses.update_count:
        means = losses.compute().reshape(-1)  # torchmetrics squeezes K=1 to a scalar
    else:
        means = None
    for k, value in enumerate(means if means is not None else []):
        module.log(f"train/block{k}/loss_epoch", value, on_step=False, on_epoch=True)
    losses.reset()


def _log_train_losses(module: L.LightningModule, losses: BlockLosses, results: list[tuple[torch.Tensor, torch.Tensor]],
                      y: torch.Tensor, blocks: Optional[Sequence[int]], exchange: Optional[Exchange]) -> Optional[torch.Tensor]:
    """The losses of one training batch: per block in local mode, and the network's (``train/loss``)."""
    if blocks is not None:  # a pipeline stage: the network's loss is known only where the stages exchange
        return log_block_losses(module, losses, results, len(y), blocks, exchange)
    if len(results) > 1 or module.is_local:
        log_block_losses(module, losses, results, len(y))
    module.log("train/loss", results[-1][0], on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
    return None  # one process: the caller has every loss already


class BlockMetrics(nn.Module):
    """Top-1 accuracy of every head for train/val/test, and the last head's top-5 when there are
    more than 10 classes. ``acc(stage)[k]`` is block k's metric.

    ``validate_args=False``: the input checks wait for the device (a sync per block per step);
    the inputs here are the heads' own logits and the loader's labels.
    """

    def __init__(self, num_blocks: int, num_classes: int) -> None:
        super().__init__()
        # ModuleDict keys may not shadow nn.Module methods such as `train`: suffix them.
        self._acc = nn.ModuleDict(
            {f"{s}_acc": nn.ModuleList(MulticlassAccuracy(num_classes, average="micro", validate_args=False) for _ in range(num_blocks)) for s in STAGES}
        )
        self._top5 = nn.ModuleDict(
            {f"{s}_top5": MulticlassAccuracy(num_classes, top_k=5, average="micro", validate_args=False) for s in ("val", "test")} if num_classes > 10 else {}
        )
        self._train_loss = BlockLosses(num_blocks)

    def acc(self, stage: str) -> nn.ModuleList:
        return self._acc[f"{stage}_acc"]

    def top5(self, stage: str) -> MulticlassAccuracy | None:
        key = f"{stage}_top5"
        return self._top5[key] if key in self._top5 else None

    def log_train(self, module: L.LightningModule, results: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor,
                  blocks: Optional[Sequence[int]] = None, exchange: Optional[Exchange] = None) -> Optional[torch.Tensor]:
        """One training batch: every block's (loss, logits); the last block is the network's.
        A pipeline stage passes its ``blocks`` and, on exchange steps, ``exchange``; the return
        value is every block's loss on a stage's exchange steps, else None (see :func:`log_block_losses`)."""
        for k, (_, logits) in zip(blocks if blocks is not None else range(len(results)), results):
            self.acc("train")[k].update(logits, y)
        return _log_train_losses(module, self._train_loss, results, y, blocks, exchange)

    def log_train_epoch(self, module: L.LightningModule, exchange: Optional[Exchange] = None) -> None:
        """The training epoch's end: every block's accuracy and mean loss, then fresh states.
        In a pipeline (``exchange``) every stage computes every block's accuracy: torchmetrics
        adds up the states of the stages (and replicas) that trained it."""
        accs = self.acc("train")
        if accs[-1].update_count or exchange is not None:
            if len(accs) > 1 or module.is_local:
                for k, acc in enumerate(accs):
                    module.log(f"train/block{k}/acc", acc.compute(), on_step=False, on_epoch=True)
            module.log("train/acc", accs[-1].compute(), on_step=False, on_epoch=True, prog_bar=True)
        for acc in accs:
            acc.reset()
        log_block_loss_means(module, self._train_loss, exchange)

    def log_eval(self, module: L.LightningModule, stage: str, all_logits: list[torch.Tensor], y: torch.Tensor,
                 x: torch.Tensor | None = None) -> None:
        """Log every head's accuracy on one validation/test batch (``x``, the input, is not needed)."""
        local, last = len(all_logits) > 1 or module.is_local, len(all_logits) - 1
        for k, logits in enumerate(all_logits):
            acc = self.acc(stage)[k]
            acc(logits, y)
            if local:
                module.log(f"{stage}/block{k}/acc", acc)
        module.log(f"{stage}/loss", F.cross_entropy(all_logits[-1], y), prog_bar=stage == "val")
        module.log(f"{stage}/acc", self.acc(stage)[last], prog_bar=stage == "val")
        top5 = self.top5(stage)
        if top5 is not None:
            top5(all_logits[-1], y)
            module.log(f"{stage}/acc_top5", top5)

    def log_panels(self, module: L.LightningModule, stage: str) -> None:
        """Classification logs no image panels."""


# ---------------------------------------------------------------- super-resolution
def quantize(img: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8 bits: an image as it would be saved (EDSR evaluates so)."""
    return img.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def y_channel(img: torch.Tensor) -> torch.Tensor:
    """The Y of YCbCr (ITU-R BT.601, MATLAB's ``rgb2ycbcr``) of an RGB image in [0, 1]: N x 1 x H x W in [16/255, 235/255]."""
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def shave(img: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on every side (the SR convention: ``border`` = the scale)."""
    return img[..., border:-border, border:-border] if border > 0 else img


def sr_eval_view(img: torch.Tensor, scale: int) -> torch.Tensor:
    """What PSNR and SSIM are computed on: the 8-bit image's Y channel, ``scale`` pixels shaved per border."""
    return shave(y_channel(quantize(img.float())), scale)


def psnr_metric() -> PeakSignalNoiseRatio:
    """PSNR per image (``dim``), averaged over images, on [0, 1] data."""
    return PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))


def ssim_metric() -> StructuralSimilarityIndexMeasure:
    """SSIM (Gaussian window 11, sigma 1.5) per image, averaged over images, on [0, 1] data."""
    return StructuralSimilarityIndexMeasure(data_range=1.0)


class SRMetrics(nn.Module):
    """PSNR of every head and SSIM of the last, on the Y channel with ``scale`` pixels shaved, for
    val and test, beside the same metrics of bicubic upsampling of the same LR images.

    Also keeps one set of image panels per stage (the first evaluated image: LR, bicubic, SR, HR)
    for W&B (:func:`glcan.lit.loggers.log_image_panels`).
    """

    PANEL = 192  # side of the HR crop shown in the panels

    def __init__(self, num_blocks: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        stages = ("val", "test")
        self._psnr = nn.ModuleDict({f"{s}_psnr": nn.ModuleList(psnr_metric() for _ in range(num_blocks)) for s in stages})
        self._ssim = nn.ModuleDict({f"{s}_ssim": ssim_metric() for s in stages})
        self._bicubic = nn.ModuleDict({**{f"{s}_bicubic_psnr": psnr_metric() for s in stages},
                                       **{f"{s}_bicubic_ssim": ssim_metric() for s in stages}})
        self._panels: dict[str, list[torch.Tensor]] = {}
        self._train_loss = BlockLosses(num_blocks)

    def psnr(self, stage: str) -> nn.ModuleList:
        return self._psnr[f"{stage}_psnr"]

    def log_train(self, module: L.LightningModule, results: list[tuple[torch.Tensor, torch.Tensor]], y: torch.Tensor,
                  blocks: Optional[Sequence[int]] = None, exchange: Optional[Exchange] = None) -> Optional[torch.Tensor]:
        """One training batch: every block's L1 loss; the last block is the network's (a
        pipeline stage: as :meth:`BlockMetrics.log_train`)."""
        return _log_train_losses(module, self._train_loss, results, y, blocks, exchange)

    def log_train_epoch(self, module: L.LightningModule, exchange: Optional[Exchange] = None) -> None:
        """The training epoch's end: every block's mean loss."""
        log_block_loss_means(module, self._train_loss, exchange)

    @torch.no_grad()
    def log_eval(self, module: L.LightningModule, stage: str, outputs: list[torch.Tensor], y: torch.Tensor,
                 x: torch.Tensor | None = None) -> None:
        """Log every head's PSNR, the last head's SSIM and bicubic's, on one validation/test batch."""
        assert x is not None, "super-resolution metrics need the LR input (for bicubic)"
        local, last = len(outputs) > 1 or module.is_local, len(outputs) - 1
        target = sr_eval_view(y, self.scale)
        for k, out in enumerate(outputs):
            psnr = self.psnr(stage)[k]
            psnr(sr_eval_view(out, self.scale), target)
            if local:
                module.log(f"{stage}/block{k}/psnr", psnr)
        bicubic = bicubic_upscale(x.float(), self.scale)
        bicubic_view = sr_eval_view(bicubic, self.scale)
        self._ssim[f"{stage}_ssim"](sr_eval_view(outputs[-1], self.scale), target)
        self._bicubic[f"{stage}_bicubic_psnr"](bicubic_view, target)
        self._bicubic[f"{stage}_bicubic_ssim"](bicubic_view, target)
        module.log(f"{stage}/loss", F.l1_loss(outputs[-1].float(), y.float()))
        module.log(f"{stage}/psnr", self.psnr(stage)[last], prog_bar=stage == "val")
        module.log(f"{stage}/ssim", self._ssim[f"{stage}_ssim"])
        module.log(f"{stage}/bicubic_psnr", self._bicubic[f"{stage}_bicubic_psnr"])
        module.log(f"{stage}/bicubic_ssim", self._bicubic[f"{stage}_bicubic_ssim"])
        if stage not in self._panels:
            self._panels[stage] = self._crop([x[0], bicubic[0], quantize(outputs[-1][0].float()), y[0]])

    def _crop(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """A central crop of at most PANEL HR pixels per side, on the CPU; the LR crop shown with
        its pixels repeated ``scale`` times (nearest), so that the four panels line up."""
        lr, s = images[0], self.scale
        h, w = lr.shape[-2:]
        ch, cw = min(h, self.PANEL // s), min(w, self.PANEL // s)
        top, left = (h - ch) // 2, (w - cw) // 2
        out = [F.interpolate(lr[None, :, top:top + ch, left:left + cw], scale_factor=s, mode="nearest")[0]]
        out += [im[:, s * top:s * (top + ch), s * left:s * (left + cw)] for im in images[1:]]
        return [im.detach().float().clamp(0, 1).cpu() for im in out]

    def log_panels(self, module: L.LightningModule, stage: str) -> None:
        """Send the stage's panels (LR, bicubic, SR, HR) to W&B, once per evaluation."""
        panels = self._panels.pop(stage, None)
        if panels is not None and not module.trainer.sanity_checking:
            log_image_panels(module.loggers, f"{stage}/images", panels, ["LR (nearest)", "bicubic", "SR", "HR"],
                             step=module.global_step)


# ---------------------------------------------------------------- detection
class DetMetrics(nn.Module):
    """mAP@[.5:.95] and mAP@.5 (torchmetrics' ``MeanAveragePrecision``, COCO's definition) of every
    head for val and test: ``{stage}/map``, ``{stage}/map50`` (the last head: the detector) and,
    in local mode, ``{stage}/block{k}/map50``; the training loss per block as for the other tasks.
    mAP is a whole-set figure, so it is computed once per evaluation, at its end."""

    SHOWN = 0.3  # the score from which a detection is drawn on the W&B image

    def __init__(self, num_blocks: int) -> None:
        super().__init__()
        from torchmetrics.detection import MeanAveragePrecision

        self._map = nn.ModuleDict({s: nn.ModuleList(MeanAveragePrecision(iou_type="bbox") for _ in range(num_blocks))
                                   for s in ("val", "test")})
        self._sample: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}
        self._train_loss = BlockLosses(num_blocks)

    def log_train(self, module: L.LightningModule, results: list[tuple[torch.Tensor, Any]], y: Any,
                  blocks: Optional[Sequence[int]] = None, exchange: Optional[Exchange] = None) -> Optional[torch.Tensor]:
        return _log_train_losses(module, self._train_loss, results, y, blocks, exchange)

    def log_train_epoch(self, module: L.LightningModule, exchange: Optional[Exchange] = None) -> None:
        log_block_loss_means(module, self._train_loss, exchange)

    @torch.no_grad()
    def log_eval(self, module: L.LightningModule, stage: str, outputs: list[Any], y: Any, x: Any = None) -> None:
        """Every head's detections on one validation/test batch, kept for the evaluation's end
        (and the first image with the detector's boxes and the true ones, for W&B)."""
        for k, detections in enumerate(outputs):
            if not isinstance(detections, list):  # a classification head's image labels: no boxes, no mAP
                continue
            self._map[stage][k].update([{k2: v.detach() for k2, v in d.items()} for d in detections], y)
        if stage not in self._sample and x is not None:
            keep = outputs[-1][0]["scores"] >= self.SHOWN
            self._sample[stage] = (x[0].detach().float().clamp(0, 1).cpu(),
                                   {"predictions": {k: v[keep].cpu() for k, v in outputs[-1][0].items()},
                                    "ground_truth": {k: v.cpu() for k, v in y[0].items()}})

    def log_panels(self, module: L.LightningModule, stage: str) -> None:
        """The evaluation's end: every head's mAP, then fresh states; one image with its boxes to W&B."""
        sample = self._sample.pop(stage, None)
        if sample is not None and not module.trainer.sanity_checking:
            names = list(getattr(module.trainer.datamodule, "classes", None) or []) if module._trainer else []
            log_image_boxes(module.loggers, f"{stage}/boxes", sample[0], sample[1], names, module.global_step)
        local, last = len(self._map[stage]) > 1 or module.is_local, len(self._map[stage]) - 1
        for k, metric in enumerate(self._map[stage]):
            if not metric.update_count:
                continue
            result = metric.compute()
            if local:
                module.log(f"{stage}/block{k}/map50", result["map_50"])
            if k == last:
                module.log(f"{stage}/map", result["map"])
                module.log(f"{stage}/map50", result["map_50"], prog_bar=stage == "val")
            metric.reset()


def block_metrics(task: Task, num_blocks: int, num_classes: int) -> nn.Module:
    """The metric set of ``task``: accuracy for classification, PSNR/SSIM for super-resolution,
    mAP for detection."""
    if task.kind == "detection":
        return DetMetrics(num_blocks)
    if task.kind == "super_resolution":
        return SRMetrics(num_blocks, task.scale)  # type: ignore[attr-defined]
    return BlockMetrics(num_blocks, num_classes)
