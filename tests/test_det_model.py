"""Detection as glcan units (WIP, issue 21): torchvision's FCOS taken apart is still FCOS, and the
local step keeps every block's gradient its own when blocks carry pyramid levels."""

from __future__ import annotations

import copy

import pytest
import torch

from glcan.backbones.fcos import build_fcos, deployable, fcos_backbone
from glcan.core.network import SplitNetwork
from glcan.core.step import local_step
from glcan.heads.dense import DenseHead

SIZE = 64


def scenes(n: int = 2) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1, 3])}
               for _ in range(n)]
    return x, targets


def detector() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_fcos("resnet18", num_classes=11, image_size=(SIZE, SIZE), fpn_channels=32)


def test_the_units_and_neck_compute_fcos_own_loss_and_detections():
    x, targets = scenes()
    ours = fcos_backbone(detector())
    theirs = copy.deepcopy(deployable(ours))
    state = x
    for unit in ours.units:
        state = unit(state)
    loss, _ = ours.classifier.loss(state, targets, x)
    expected = sum(theirs(list(x), targets).values())
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    ours.eval(), theirs.eval()
    for d in (deployable(ours), theirs):
        d.score_thresh = 0.0  # untrained scores are ~0.01: keep every candidate, so there is something to compare
    with torch.no_grad():
        state = x
        for unit in ours.units:
            state = unit(state)
        mine, reference = ours.classifier(state, x), theirs(list(x))
    assert len(mine) == 2 and min(len(d["boxes"]) for d in mine) > 10
    for a, b in zip(mine, reference):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)


def test_local_step_with_levels_keeps_each_blocks_gradient_its_own():
    x, targets = scenes()
    backbone = fcos_backbone(detector())
    units = list(backbone.units)  # stem, 2 x layer1, 2 x layer2 (C3 tapped), 2 x layer3 (C4), 2 x layer4
    blocks = [torch.nn.Sequential(*units[:5]), torch.nn.Sequential(*units[5:])]
    heads = [DenseHead(128, 11, stride=8, width=32), backbone.classifier]
    net = SplitNetwork(blocks, heads, [5])
    grads: dict[int, list] = {}

    def step(k: int) -> None:  # what each block's own loss gave every parameter
        grads[k] = [[p.grad is not None and bool(p.grad.abs().sum() > 0) for p in b.parameters()] for b in blocks]
        for p in net.parameters():
            p.grad = None

    losses = local_step(net, x, targets, step=step)
    assert all(torch.isfinite(loss) for loss, _ in losses)
    assert all(grads[0][0]) and not any(grads[0][1])  # block 1's head reaches block 1 only
    assert not any(grads[1][0]) and all(grads[1][1])  # the neck reads C3 detached: block 2 only
    assert all(p.grad is None for p in heads[0].parameters())


@pytest.mark.slow  # a whole fit (and W&B) on 2 cores: ~10-25 s
def test_a_detection_run_logs_an_image_with_true_and_predicted_boxes_to_wandb(tmp_path, monkeypatch):
    import json

    from glcan.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    assert main(["fit", "--config", "configs/det_digits_fcos_glcan_k4.yaml", "--data.image_size", "64",
                 "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
                 "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false", "--run_dir", str(run)]) == 0
    files = sorted(run.glob("wandb/offline-run-*/files/media/metadata/boxes2D/val/*.boxes2D.json"))
    sets = {json.loads(f.read_text())["box_data"][0]["domain"] if json.loads(f.read_text())["box_data"] else "" for f in files}
    assert len(files) == 2 and "pixel" in sets  # predictions and ground truth; the truth always has a box


@pytest.mark.slow  # three short fits of a detector: ~20 s on 2 cores
def test_a_detector_resumed_after_an_epoch_ends_with_the_uninterrupted_weights(tmp_path):
    from conftest import fit

    config = "configs/det_digits_fcos_glcan_k4.yaml"
    args = ["--data.name", "det_digits", "--data.image_size", "64", "--data.batch_size", "4",
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
            "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1"]
    fit(config, tmp_path / "full", *args)
    fit(config, tmp_path / "part", *args, "--trainer.callbacks+=conftest.StopAfterEpoch")
    assert torch.load(tmp_path / "part/checkpoints/last.ckpt", weights_only=False)["epoch"] == 0
    fit(config, tmp_path / "part", *args, "--ckpt_path", "last")
    full, resumed = (torch.load(tmp_path / f"{r}/checkpoints/last.ckpt", weights_only=False)["state_dict"]
                     for r in ("full", "part"))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], msg=key)


def test_a_classification_head_trains_a_detectors_block_on_the_images_classes():
    """The classification heads stay available for detection: a block learns which classes the
    image holds (multi-label); it predicts no boxes, so only the detector's block has an mAP."""
    from glcan.lit import GLCanModule
    from glcan.lit.metrics import DetMetrics

    x, targets = scenes()
    torch.manual_seed(0)
    model = GLCanModule(backbone="fcos_resnet18", method="local", num_blocks=2, head="linear", task="detection",
                        num_classes=11, image_shape=(3, SIZE, SIZE), batch_size=2)
    first = model.net.heads[0]
    h = model.net.blocks[0](x)
    loss, logits = first.loss(h, targets, x)
    present = torch.zeros(2, 11)
    present[:, [1, 3]] = 1.0  # every scene holds a 1 and a 3
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, present))
    loss.backward()
    assert all(p.grad is not None for p in first.parameters())
    model.eval()
    with torch.no_grad():
        outputs = [first(h), model.net.heads[1](model.net.blocks[1](h), x)]
    metrics = DetMetrics(2)
    metrics.log_eval(model, "val", outputs, targets)
    assert [m.update_count for m in metrics._map["val"]] == [0, 1]  # the image labels give no boxes to score


def test_e2e_recompute_trains_the_detector_as_e2e_does():
    """Recomputation (per-unit checkpointing, with the levels a unit carries) changes memory only:
    the same loss, the same gradients, the same BatchNorm statistics after the step."""
    from glcan.lit import GLCanModule

    x, targets = scenes()
    nets = []
    for method in ("e2e", "e2e_recompute"):
        torch.manual_seed(0)
        model = GLCanModule(backbone="fcos_resnet18", method=method, task="detection", num_classes=11,
                            image_shape=(3, SIZE, SIZE), batch_size=2)
        net = model.net.train()
        loss, _ = net.heads[0].loss(net.blocks[0](x), targets, x)
        loss.backward()
        nets.append((loss, net))
    (plain_loss, plain), (loss, recomputed) = nets
    torch.testing.assert_close(loss, plain_loss)
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name, rtol=1e-4, atol=1e-6)
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers()):
        torch.testing.assert_close(b, a, msg=name)


@pytest.mark.slow  # two DDP replicas of a detector in subprocesses: ~40 s on 2 cores
def test_a_detector_trains_under_ddp(tmp_path):
    """Detection under glcan's DDP: each replica runs the local step on its share of the scenes;
    mAP is gathered over both replicas' detections."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(root / "train.py"), "fit", "--config", "configs/det_digits_fcos_glcan_k4.yaml",
                           "--data.image_size", "64", "--data.batch_size", "8", "--trainer.max_epochs", "1",
                           "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
                           "--trainer.limit_test_batches", "2", "--parallel.mode", "ddp", "--parallel.workers", "2",
                           "--trainer.enable_progress_bar", "false", "--run_dir", str(run)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["parallel"] == "ddp" and s["workers"] == 2 and s["global_step"] == 2 and 0 <= s["test_map50"] <= 1


def test_a_head_made_for_another_task_is_refused_naming_the_ones_that_fit():
    from glcan.core.task import get_task

    with pytest.raises(ValueError, match="super-resolution head but the data is for detection; use det_glcan, det_conv"):
        get_task("detection").check_head("sr_glcan")
    with pytest.raises(ValueError, match="'det_conv' is a detection head but the data is for classification"):
        get_task("classification").check_head("det_conv")
    get_task("detection").check_head("glcan")  # image-level multi-label: allowed
