"""Super-resolution as a second task of the same trainer: metrics, heads, the local step, the
folder path and its commands, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from conftest import CONFIGS, block_grads
from glcan.cli import main
from glcan.core.step import BlockUpdate, local_step
from glcan.data import DataError, GLCanDataModule
from glcan.data.sr_images import bicubic_downscale
from glcan.heads import build_head
from glcan.heads.sr import SRTailHead, bicubic_upscale
from glcan.lit import GLCanModule
from glcan.lit.plan import assemble
from glcan.lit.metrics import psnr_metric, sr_eval_view, ssim_metric, y_channel
from glcan.memory.predictor import predict

SR_CONFIG = str(CONFIGS / "sr_x2_edsr_glcan_k4.yaml")
# Shrunk to seconds: 8 patches of 24x24 HR per batch, 2 batches, no bars; TINY also without W&B.
SHRUNK = ["--data.patch_size", "24", "--data.patches_per_epoch", "16", "--data.batch_size", "8",
          "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_model_summary", "false", "--trainer.check_val_every_n_epoch", "1"]
TINY = [*SHRUNK, "--logger.enabled", "false"]


def photo(path: Path, w: int, h: int, seed: int, mode: str = "RGB") -> Path:
    """A smooth random colour 'photograph' (low-frequency noise, bicubic-upsampled)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(2, h // 8), max(2, w // 8), generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    pixels = img.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def module(k: int = 4, method: str = "local", head: str = "sr_glcan", scale: int = 2) -> GLCanModule:
    torch.manual_seed(0)
    return GLCanModule(backbone="edsr_small", method=method, num_blocks=k, split="uniform", head=head,
                       task=f"sr_x{scale}", num_classes=3, image_shape=(3, 12, 12), batch_size=4)


def batch(scale: int = 2):
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 12, 12, generator=g), torch.rand(4, 3, 12 * scale, 12 * scale, generator=g)


# ---------------------------------------------------------------- metrics
def test_psnr_and_ssim_equal_torchmetrics_on_a_known_pair():
    # Two flat 8-bit images 10 grey levels apart: Y differs by 219/255 * 10/255 everywhere.
    hr = torch.full((1, 3, 40, 40), 100 / 255)
    sr = torch.full((1, 3, 40, 40), 110 / 255)
    psnr = psnr_metric()
    psnr(sr_eval_view(sr, 2), sr_eval_view(hr, 2))
    assert float(psnr.compute()) == pytest.approx(-20 * math.log10(219 * 10 / 255**2), abs=1e-3)  # 29.45 dB

    # A textured pair: our view (8-bit, Y, shaved by the scale) and torchmetrics on that view agree.
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 48, 40, generator=g)
    sr = (hr + 0.05 * torch.randn(2, 3, 48, 40, generator=g)).clamp(0, 1)
    a, b = sr_eval_view(sr, 3), sr_eval_view(hr, 3)
    assert a.shape == (2, 1, 42, 34)
    y = y_channel(hr.mul(255).round().div(255))[..., 3:-3, 3:-3]
    assert torch.allclose(b, y)
    psnr, ssim = psnr_metric(), ssim_metric()
    psnr(a, b)
    ssim(a, b)
    per_image = [peak_signal_noise_ratio(a[i:i + 1], b[i:i + 1], data_range=1.0) for i in range(2)]
    assert float(psnr.compute()) == pytest.approx(float(sum(per_image) / 2), abs=1e-4)  # the mean over images
    assert float(ssim.compute()) == pytest.approx(float(structural_similarity_index_measure(a, b, data_range=1.0)),
                                                  abs=1e-5)


def _bicubic_on_embedded_test_set() -> tuple[float, float]:
    dm = GLCanDataModule(name="sr_images", root="skimage", scale=2, patch_size=48)
    dm.setup()
    psnr, ssim = psnr_metric(), ssim_metric()
    for lr, hr in dm.test_dataloader():
        up = sr_eval_view(bicubic_upscale(lr, 2), 2)
        psnr(up, sr_eval_view(hr, 2))
        ssim(up, sr_eval_view(hr, 2))
    assert len(dm.test_set) == 3
    return float(psnr.compute()), float(ssim.compute())


def test_bicubic_baseline_figures_are_reproducible():
    first, second = _bicubic_on_embedded_test_set(), _bicubic_on_embedded_test_set()
    assert first == second
    # The figures docs/results_sr.md reports beside every model (chelsea, coffee, rocket at x2).
    assert first[0] == pytest.approx(32.866, abs=2e-3) and first[1] == pytest.approx(0.9093, abs=2e-4)


def test_lr_images_are_antialiased_bicubic_in_8_bits():
    hr = torch.rand(3, 12, 18)
    lr = bicubic_downscale(hr, 3)
    assert lr.shape == (3, 4, 6) and torch.equal(lr, lr.mul(255).round().div(255))
    ref = F.interpolate(hr[None], size=(4, 6), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)[0]
    assert torch.allclose(lr, ref, atol=0.5 / 255 + 1e-6)


# ---------------------------------------------------------------- heads and the local step
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", ["sr_glcan", "sr_conv"])
def test_sr_head_output_shape(name, scale):
    head = build_head(name, (32, 10, 14), 3, image_shape=(3, 10, 14), scale=scale)
    h, x = torch.randn(2, 32, 10, 14), torch.rand(2, 3, 10, 14)
    out = head(h, x)
    assert out.shape == (2, 3, 10 * scale, 14 * scale)
    loss, pred = head.loss(h, torch.rand(2, 3, 10 * scale, 14 * scale), x)
    assert loss.dim() == 0 and torch.equal(pred, out)


def test_the_last_block_ends_in_edsrs_tail_plus_bicubic():
    for method in ("e2e", "local"):
        net = module(method=method).net
        tail = net.heads[-1]
        assert isinstance(tail, SRTailHead) and tail.module[-1].out_channels == 3
        x = batch()[0]
        with torch.no_grad():
            h = x
            for block in net.blocks:
                h = block(h)
            assert torch.allclose(net(x), tail.module(h) + bicubic_upscale(x, 2))
            assert net(x).shape == (4, 3, 24, 24)


@pytest.mark.parametrize("target", [0, 3])
def test_sr_block_gradients_come_only_from_its_own_head(target):
    with_all = block_grads(module().net, *batch(), target, silence_others=False)
    only_own = block_grads(module().net, *batch(), target, silence_others=True)
    assert with_all and all(torch.equal(a, b) for a, b in zip(with_all, only_own))
    assert any(g.abs().sum() > 0 for g in with_all)


def test_sr_local_with_one_block_equals_plain_backprop():
    """One block of local SR training is a plain backprop step on the network's own output."""
    local, e2e = module(k=1), module(method="e2e")
    assert local.net.state_dict().keys() == e2e.net.state_dict().keys()
    e2e.net.load_state_dict(local.net.state_dict())
    x, y = batch()
    opt_l = torch.optim.SGD(local.net.parameters(), lr=0.1)
    opt_e = torch.optim.SGD(e2e.net.parameters(), lr=0.1)
    [(loss_l, out_l)] = local_step(local.net, x, y, step=BlockUpdate([opt_l]))
    out_e = e2e.net(x)  # the deployed network's forward: units, tail, bicubic residual
    loss_e = torch.nn.functional.l1_loss(out_e, y)
    loss_e.backward()
    opt_e.step()
    assert torch.equal(loss_l, loss_e.detach()) and torch.equal(out_l, out_e.detach())
    for (name, a), b in zip(local.net.named_parameters(), e2e.net.parameters()):
        assert torch.equal(a, b), name


def test_memory_predictions_work_for_sr_and_local_saves():
    kwargs = dict(backbone="edsr_baseline", task="sr_x2", num_classes=3, image_shape=(3, 48, 48), batch_size=16,
                  head="sr_glcan", split="uniform")
    e2e = predict(lambda: assemble(dict(method="e2e", **kwargs)), 16, (3, 48, 48), 3).peak_bytes
    local = predict(lambda: assemble(dict(method="local", num_blocks=4, **kwargs)), 16, (3, 48, 48), 3).peak_bytes
    assert 0 < local < 0.5 * e2e


# ---------------------------------------------------------------- the folder path and the commands
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A flat folder of 5 photographs (split by image: 3 train, 1 val, 1 test), and a K=4 model trained on it."""
    root = tmp_path_factory.mktemp("photos")
    for i, (w, h) in enumerate([(64, 48), (60, 60), (52, 40), (66, 50), (48, 64)]):
        photo(root / f"p{i}.png", w, h, seed=i)
    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's per-test W&B setting
        mp.setenv("WANDB_MODE", "offline")  # W&B on, to check the image panels; never the network
        assert main(["fit", "--config", SR_CONFIG, *SHRUNK, "--data.root", str(root), "--data.val_fraction", "0.2",
                     "--run_dir", str(run)]) == 0
    return root, run


def test_folder_fit_writes_psnr_ssim_and_bicubic(trained):
    _, run = trained
    s = json.loads((run / "summary.json").read_text())
    assert s["task"] == "sr_x2" and s["metric"] == "psnr" and "test_acc" not in s
    for key in ("test_psnr", "test_ssim", "bicubic_psnr", "bicubic_ssim"):
        assert isinstance(s[key], float), key
    assert len(s["block_psnr"]) == 4 and s["block_psnr"][-1] == s["test_psnr"]
    assert s["peak_memory_bytes"] > 0
    media = Path(s["wandb_dir"]) / "files" / "media" / "images"
    for stage in ("val", "test"):  # the panels: LR, bicubic, SR, HR
        assert len(list((media / stage).glob("images_*.png"))) == 4, stage


def test_test_evaluates_every_photograph_of_a_users_folder(trained, tmp_path, capsys):
    _, run = trained
    mine = tmp_path / "mine"
    photo(mine / "a.png", 41, 37, seed=10)  # odd sizes: cropped to 40x36 for x2
    photo(mine / "sub" / "b.jpg", 50, 30, seed=11)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["test", "--config", SR_CONFIG, *TINY, "--ckpt_path", str(ckpt), "--data.root", str(mine)]) == 0
    assert "test/psnr" in capsys.readouterr().out
    record = json.loads((run / "test_last.json").read_text())

    # Recomputed by hand over both photographs (no split), with torchmetrics' functions.
    model = GLCanModule.load_from_checkpoint(ckpt).eval()
    psnrs, ssims = [], []
    for path in (mine / "a.png", mine / "sub" / "b.jpg"):
        hr = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255
        hr = hr[:, : hr.shape[1] // 2 * 2, : hr.shape[2] // 2 * 2][None]
        with torch.no_grad():
            sr = model(bicubic_downscale(hr, 2))
        a, b = sr_eval_view(sr, 2), sr_eval_view(hr, 2)
        psnrs.append(float(peak_signal_noise_ratio(a, b, data_range=1.0)))
        ssims.append(float(structural_similarity_index_measure(a, b, data_range=1.0)))
    assert record["test/psnr"] == pytest.approx(sum(psnrs) / 2, abs=1e-3)
    assert record["test/ssim"] == pytest.approx(sum(ssims) / 2, abs=1e-4)


def test_test_on_the_training_folder_evaluates_its_test_split_only(trained, capsys):
    """A folder split at random: `test` on it must not evaluate the photographs it trained on."""
    root, run = trained
    assert main(["test", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--logger", "false"]) == 0
    dm = GLCanDataModule(name="sr_images", root=str(root), val_fraction=0.2, patch_size=24)
    dm.setup()
    assert len(dm.test_set.paths) == 1  # the split's one test photograph of five
    model = GLCanModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    hr = dm.test_set[0][1][None]
    with torch.no_grad():
        sr = model(dm.test_set[0][0][None])
    expected = float(peak_signal_noise_ratio(sr_eval_view(sr, 2), sr_eval_view(hr, 2), data_range=1.0))
    assert json.loads((run / "test_last.json").read_text())["test/psnr"] == pytest.approx(expected, abs=1e-3)


def test_predict_writes_upscaled_pngs(trained, tmp_path):
    _, run = trained
    mine = tmp_path / "lr"
    photo(mine / "x.png", 30, 20, seed=3)
    out = tmp_path / "out"
    assert main(["predict", "--config", SR_CONFIG, *TINY, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                 "--data.root", str(mine), "--out", str(out)]) == 0
    assert Image.open(out / "x.png").size == (60, 40)


def test_the_embedded_split_and_a_train_test_layout(tmp_path):
    dm = GLCanDataModule(name="sr_images", root="skimage", patch_size=48)
    assert dm.task == "sr_x2" and dm.image_shape == (3, 24, 24) and dm.num_classes == 3
    dm.setup()
    assert [p.name for p in dm.test_set.paths] == ["chelsea.png", "coffee.png", "rocket.jpg"]
    assert [p.name for p in dm.val_set.paths] == ["ihc.png"] and len(dm.train_set.paths) == 6
    x, y = dm.train_set[0]
    assert x.shape == (3, 24, 24) and y.shape == (3, 48, 48)

    for i in range(3):
        photo(tmp_path / "train" / f"{i}.png", 64, 64, seed=i)
    for i in range(2):
        photo(tmp_path / "test" / f"t{i}.png", 40, 40, seed=10 + i)
    dm = GLCanDataModule(name="sr_images", root=str(tmp_path), patch_size=32, val_fraction=0.34)
    dm.setup()
    assert [p.name for p in dm.test_set.paths] == ["t0.png", "t1.png"]
    # no val/ folder: validation is held out of train/, never the test photographs
    assert len(dm.train_set.paths) == 2 and len(dm.val_set.paths) == 1
    assert not set(dm.val_set.paths) & set(dm.test_set.paths) and not set(dm.val_set.paths) & set(dm.train_set.paths)
    lr, hr = next(iter(dm.test_dataloader()))
    assert lr.shape == (1, 3, 20, 20) and hr.shape == (1, 3, 40, 40)


# ---------------------------------------------------------------- bad input: one line each
def _setup_error(tmp_path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        dm = GLCanDataModule(name="sr_images", root=str(tmp_path), **kwargs)
        dm.setup()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_input_is_one_line_each(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.txt").write_text("no photographs here")
    assert "contains no photographs" in _setup_error(empty)

    small = tmp_path / "small"
    for i in range(3):
        photo(small / "train" / f"{i}.png", 100, 100, seed=i)
    photo(small / "train" / "tiny.png", 40, 90, seed=9)
    photo(small / "test" / "t.png", 64, 64, seed=5)
    message = _setup_error(small, patch_size=48)
    assert "tiny.png' is 40x90 pixels" in message and "smaller than the 48x48 training patch" in message

    mixed = tmp_path / "mixed"
    for i in range(3):
        photo(mixed / f"c{i}.png", 64, 64, seed=i)
    photo(mixed / "g.png", 64, 64, seed=7, mode="L")
    message = _setup_error(mixed, patch_size=24)
    assert "mixes greyscale and colour" in message and "'g.png' is greyscale" in message and "refuses" in message

    assert "only 2 photograph(s)" in _setup_error(_two(tmp_path / "two"), patch_size=24)
    with pytest.raises(DataError, match="data.patch_size must be a positive multiple of data.scale"):
        GLCanDataModule(name="sr_images", root="skimage", scale=3, patch_size=48 + 1)

    # Through the command line: `error: <the line>`, exit status 2.
    assert main(["fit", "--config", SR_CONFIG, *TINY, "--data.root", str(mixed), "--run_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.root") and "greyscale" in err[0]
    assert main(["fit", "--config", SR_CONFIG, *TINY, "--model.head", "glcan", "--run_dir", str(tmp_path / "run2")]) == 2
    assert "is a classification head but the data is for super-resolution" in capsys.readouterr().err


def _two(root: Path) -> Path:
    photo(root / "a.png", 64, 64, seed=1)
    photo(root / "b.png", 64, 64, seed=2)
    return root


def test_a_scale_the_size_does_not_divide_is_cropped(tmp_path):
    for i, (w, h) in enumerate([(65, 63), (70, 71), (64, 64)]):
        photo(tmp_path / f"{i}.png", w, h, seed=i)
    dm = GLCanDataModule(name="sr_images", root=str(tmp_path), scale=3, patch_size=24, val_fraction=0.34)
    dm.evaluate_every_photo()
    dm.setup()
    sizes = sorted(tuple(dm.test_set[i][1].shape[1:]) for i in range(len(dm.test_set)))
    assert sizes == [(63, 63), (63, 63), (69, 69)]  # bottom/right rows and columns dropped
