"""Detection feasibility (issue 21, plan step 1): how far does E2E FCOS get on det_digits in a
fixed CPU budget? The config's epochs and width follow from this number, not the other way round.

torchvision's FCOS with a ``--body`` from glcan.backbones.fcos (BatchNorm, from scratch) and an
FPN of ``--fpn`` channels over C3-C5 plus P6/P7, images at 128 px (``min_size = max_size = 128``:
torchvision's transform must not rescale the scenes), SGD or AdamW with a linear warmup and a
cosine decay, trained for ``--minutes`` of this process's CPU time (so a shared machine slows it
without changing the result); mAP@.5 and mAP@[.5:.95] on the validation scenes (torchmetrics)
every ``--eval_every`` minutes (not counted) and at the end. The training scenes are drawn once
into memory first.

Usage::

    OMP_NUM_THREADS=1 python bench/det_feasibility.py --body regnet_x_200mf --lr 0.05 --minutes 10 --eval_every 2.5
"""

from __future__ import annotations

import argparse
import time

import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.models.detection import FCOS

from glcan.backbones.fcos import BODIES, build_fcos
from glcan.data.det_digits import DetDigits


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
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--body", choices=sorted(BODIES), default="resnet18")
    p.add_argument("--eval_every", type=float, default=0.0, help="minutes between validations (0: at the end)")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=250)
    a = p.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    train, val = scenes("train", a.train), scenes("val", a.val)
    print(f"drew {len(train)} + {len(val)} scenes in {time.perf_counter() - t0:.0f} s", flush=True)
    # Labels 1..10 (0 is torchvision's background convention); the scenes are already 128 px.
    model = build_fcos(a.body, num_classes=11, image_size=(128, 128), fpn_channels=a.fpn)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=1e-4) if a.optimizer == "sgd" \
        else torch.optim.AdamW(params, lr=a.lr, weight_decay=0.05)
    step, g = 0, torch.Generator().manual_seed(0)
    budget, spent, start = 60 * a.minutes, 0.0, time.process_time()  # process CPU time, evaluation excluded
    next_eval = 60 * a.eval_every if a.eval_every else budget
    while spent < budget:
        for idx in torch.randperm(len(train), generator=g).split(a.batch):
            spent = time.process_time() - start
            if spent >= next_eval and spent < budget:
                t = time.process_time()
                print(f"at {spent / 60:.1f} min (step {step}):", {k: round(v, 4) for k, v in evaluate(model, val).items()},
                      flush=True)
                start += time.process_time() - t
                next_eval += 60 * a.eval_every
            if spent >= budget:
                break
            for group in opt.param_groups:  # linear warmup over 200 steps, then cosine over the budget
                frac = min(1.0, spent / budget)
                group["lr"] = a.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi)).item())
            losses = model([train[i][0] for i in idx], [train[i][1] for i in idx])
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 50 == 0:
                print(f"step {step} {spent:.0f} s loss {loss.item():.3f} "
                      + " ".join(f"{k} {v.item():.3f}" for k, v in losses.items()), flush=True)
    print(f"trained {step} steps ({step * a.batch / len(train):.1f} epochs) in {spent:.0f} s of CPU time "
          f"({torch.get_num_threads()} thread(s))",
          flush=True)
    print({k: round(v, 4) for k, v in evaluate(model, val).items()}, flush=True)


if __name__ == "__main__":
    main()
