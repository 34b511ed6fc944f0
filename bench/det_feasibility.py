"""Detection feasibility (issue 21, plan step 1): how far does E2E FCOS get on det_digits in a
fixed CPU budget? The config's epochs and width follow from this number, not the other way round.

torchvision's FCOS with a ResNet-18 body (BatchNorm, from scratch) and an FPN of ``--fpn``
channels over C3-C5 plus P6/P7, images at 128 px (``min_size = max_size = 128``: torchvision's
transform must not rescale the scenes), SGD with a linear warmup, trained for ``--minutes`` of
wall time; then mAP@.5 and mAP@[.5:.95] on the validation scenes (torchmetrics). The training
scenes are drawn once into memory first (composing them costs 10-30 ms each).

Usage::

    OMP_NUM_THREADS=2 python bench/det_feasibility.py --minutes 10
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models import resnet18
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from glcan.data.det_digits import DetDigits


def build(fpn: int) -> FCOS:
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], fpn,
                               extra_blocks=LastLevelP6P7(fpn, fpn))
    # Labels 1..10 (0 is torchvision's background convention); the scenes are already 128 px.
    return FCOS(backbone, num_classes=11, min_size=128, max_size=128, image_mean=[0.5] * 3, image_std=[0.25] * 3)


def scenes(split: str, count: int) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    data = DetDigits(split, length=count)
    return [(x, {"boxes": t["boxes"], "labels": t["labels"] + 1}) for x, t in (data[i] for i in range(count))]


@torch.no_grad()
def evaluate(model: FCOS, data: list, batch: int = 25) -> dict[str, float]:
    model.eval()
    metric = MeanAveragePrecision(iou_type="bbox")
    for i in range(0, len(data), batch):
        chunk = data[i:i + batch]
        metric.update(model([x for x, _ in chunk]), [t for _, t in chunk])
    model.train()
    out = metric.compute()
    return {"map": float(out["map"]), "map50": float(out["map_50"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--fpn", type=int, default=64)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=250)
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    train, val = scenes("train", a.train), scenes("val", a.val)
    print(f"drew {len(train)} + {len(val)} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    model = build(a.fpn)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=1e-4)
    start, step, g = time.perf_counter(), 0, torch.Generator().manual_seed(0)
    budget = 60 * a.minutes
    while time.perf_counter() - start < budget:
        for idx in torch.randperm(len(train), generator=g).split(a.batch):
            if time.perf_counter() - start >= budget:
                break
            for group in opt.param_groups:  # linear warmup over 200 steps, then cosine over the budget
                frac = min(1.0, (time.perf_counter() - start) / budget)
                group["lr"] = a.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item())
            losses = model([train[i][0] for i in idx], [train[i][1] for i in idx])
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step} {time.perf_counter() - start:.0f} s loss {loss.item():.3f} "
                      + " ".join(f"{k} {v.item():.3f}" for k, v in losses.items()), flush=True)
    print(f"trained {step} steps ({step * a.batch / len(train):.1f} epochs) in {time.perf_counter() - start:.0f} s",
          flush=True)
    print({k: round(v, 4) for k, v in evaluate(model, val).items()}, flush=True)


if __name__ == "__main__":
    main()
