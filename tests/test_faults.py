"""Faults users met, one test each (the numbers are those of the long-runs issue).

Every run here is a real config shrunk to seconds (fake data, CPU). Those that need a real
process (``kill -9``, SIGINT) run ``train.py`` as a subprocess; the others go through the same
``main`` in this process.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from PIL import Image

from conftest import E2E_CONFIG, LOCAL_CONFIG, ROOT, SHRINK, StopAfterEpoch, fit
from glcan.lit.plan import assemble
from glcan.cli import main
from glcan.lit.rundir import RunDir
from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.memory import predict

FAST = ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
DETERMINISTIC = ["--trainer.deterministic", "true"]


def _train_py(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "fit", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "WANDB_MODE": "disabled", **(env or {})})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], msg=key)


def _err_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    return err[-1] if err else ""


# ---------------------------------------------------------------- 1, 2: resume that resumes
@pytest.mark.slow
def test_1_a_run_killed_after_an_epoch_resumes_with_the_default_layout(tmp_path):
    """kill -9 after the first epoch's checkpoint; `--ckpt_path last` (no --run_dir) continues
    the same version directory to the weights of an uninterrupted run, its CSV history kept."""
    base = ["--config", LOCAL_CONFIG, *SHRINK, "--data.fake_size", "480", "--trainer.max_epochs", "3", *FAST,
            *DETERMINISTIC]
    root = tmp_path / "runs"
    proc = _train_py(*base, "--trainer.default_root_dir", str(root))
    run = root / "fake_resnet20_local_k4_glcan" / "version_0"  # the default layout
    try:
        _wait_for(run / "checkpoints" / "last.ckpt", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
    assert not (run / "summary.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] <= 1
    assert main(["fit", *base, "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]) == 0
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # resumed in place, no version_1
    fit(LOCAL_CONFIG, tmp_path / "full", "--data.fake_size", "480", "--trainer.max_epochs", "3", *FAST, *DETERMINISTIC)
    _same_weights(run / "checkpoints" / "last.ckpt", tmp_path / "full" / "checkpoints" / "last.ckpt")
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    # The history survived: the killed part's rows were on disk with its checkpoint.
    assert {"0", "1", "2"} <= {r.get("epoch") for r in _csv_rows(run / "metrics.csv")}


def _csv_rows(path) -> list[dict[str, str]]:
    """metrics.csv as rows of their non-empty values."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_2_a_resumed_run_keeps_its_csv_history_and_its_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", *FAST, "--logger.enabled", "true"]
    fit(LOCAL_CONFIG, tmp_path, *args, "--trainer.callbacks+=conftest.StopAfterEpoch")
    rows_before = _csv_rows(tmp_path / "metrics.csv")
    assert "0" in {r.get("epoch") for r in rows_before}
    fit(LOCAL_CONFIG, tmp_path, *args, "--ckpt_path", "last")
    rows_after = _csv_rows(tmp_path / "metrics.csv")
    # epoch 0's rows are still there (the CSV logger may widen the header when epoch 1 logs a new
    # key, so rows compare by their values, not their text)
    assert rows_after[:len(rows_before)] == rows_before
    assert {"0", "1"} <= {r.get("epoch") for r in rows_after}
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<id>, and "-1" appended when both starts fall in one second
    ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([a-z0-9]+)(-\d+)?", r.name).group(1) for r in runs}
    assert len(runs) == 2 and len(ids) == 1  # one W&B run id, resumed


# Ctrl+C and SIGTERM mid-epoch, resumed exactly: tests/test_resume.py.


# ---------------------------------------------------------------- 3: a non-finite loss
def test_3_a_diverging_run_stops_at_its_first_nan_in_one_line(tmp_path, capsys):
    rc = main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--run_dir", str(tmp_path), "--model.scheduler", "null",
               "--model.optimizer.init_args.lr", "1e6", "--trainer.max_epochs", "2", *FAST])
    line = _err_line(capsys)
    assert rc == 2 and line.startswith("error: the loss of block ") and " at step " in line, line
    assert not (tmp_path / "summary.json").exists()


def test_3_a_nan_loss_after_a_checkpoint_leaves_that_checkpoint_intact(tmp_path, capsys):
    rc = main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--run_dir", str(tmp_path), "--trainer.max_epochs", "3",
               "--trainer.limit_train_batches", "2", *FAST, "--trainer.callbacks+=test_faults.PoisonInEpoch1"])
    assert rc == 2 and "the loss of block 0 is nan at step 3" in _err_line(capsys)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 2  # the good one, not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


class PoisonInEpoch1(L.Callback):
    """A weight turns NaN during epoch 1's second batch, as in a diverging run."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 1:
            with torch.no_grad():
                next(pl_module.net.blocks[0].parameters()).fill_(float("nan"))


# ---------------------------------------------------------------- 4: representative quick checks
def test_4_the_first_test_batch_of_mnist5k_holds_most_classes():
    dm = GLCanDataModule(name="mnist5k", batch_size=128)
    for loader in (dm.test_dataloader(), dm.val_dataloader()):
        _, y = next(iter(loader))
        assert len(set(y.tolist())) >= 8


def test_4_folder_evaluation_sets_are_shuffled(tmp_path):
    for cls in "abcd":
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / cls / f"{i}.png")
    dm = GLCanDataModule(name="folder", root=str(tmp_path), val_fraction=0.2, batch_size=4, image_size=8)
    _, y = next(iter(dm.val_dataloader()))
    assert len(set(y.tolist())) >= 2


# ---------------------------------------------------------------- 5: checkpoints describe themselves
@pytest.mark.parametrize("backbone, extra", [("resnet32", []), ("resnet18", ["--model.small_input", "true"])])
def test_5_load_from_checkpoint_needs_no_arguments(tmp_path, backbone, extra):
    fit(LOCAL_CONFIG, tmp_path, "--model.backbone", backbone, *extra, "--trainer.limit_train_batches", "1", *FAST)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    model = GLCanModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert model.backbone_name == backbone and model.net.num_blocks == 4
    for key, value in _weights(ckpt).items():
        assert torch.equal(model.state_dict()[key], value), key


def test_5_an_adam_run_resumes_with_a_plain_lightning_trainer(tmp_path):
    fit(LOCAL_CONFIG, tmp_path, "--model.optimizer", "torch.optim.Adam", "--model.optimizer.init_args.lr", "0.001",
        "--model.scheduler", "null", "--trainer.limit_train_batches", "2", *FAST)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    model = GLCanModule.load_from_checkpoint(ckpt)
    assert model.optimizer_name == "Adam"
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=GLCanDataModule(name="fake", fake_size=64, batch_size=16), ckpt_path=str(ckpt))
    assert trainer.global_step == 4 and all("exp_avg" in s for o in trainer.optimizers for s in o.state.values())


# ---------------------------------------------------------------- 6: one line where a traceback was
def test_6_optimizer_options_that_cannot_work_are_not_offered(capsys):
    assert main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--optimizer", "Adam"]) == 2
    assert _err_line(capsys) == "error: unknown option --optimizer (did you mean --model.optimizer?)"


def test_6_a_read_only_root_is_one_line(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root writes anywhere: make the file system refuse, as it would
        real_mkdir = Path.mkdir

        def refuse(self, *args, **kwargs):
            if ro in self.parents:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)
        monkeypatch.setattr(Path, "mkdir", refuse)
    try:
        assert main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--trainer.default_root_dir", str(ro)]) == 2
        assert _err_line(capsys).startswith(f"error: cannot write the run directory {ro}/")
    finally:
        ro.chmod(0o700)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_6_a_gpu_that_is_not_there_is_one_line_and_no_wandb_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--config", LOCAL_CONFIG, *SHRINK, "--logger.enabled", "true", "--trainer.accelerator", "gpu",
            "--run_dir", str(tmp_path)]
    assert main(["fit", *args]) == 2
    line = _err_line(capsys)
    assert line.startswith("error: ") and "gpu" in line.lower() and "Traceback" not in line
    assert not (tmp_path / "wandb").exists()


def test_6_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(256))
    assert main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--ckpt_path", str(junk), "--run_dir", str(tmp_path / "r")]) == 2
    assert _err_line(capsys) == f"error: --ckpt_path {junk} is not a PyTorch checkpoint (torch.save archive)"


def test_6_predict_writes_class_and_probability_for_a_folder(tmp_path):
    fit(E2E_CONFIG, tmp_path / "run", "--trainer.limit_train_batches", "1", *FAST)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, where in enumerate([images, images, images / "sub"]):
        Image.new("RGB", (20 + i, 30), (i * 60, 10, 200)).save(where / f"img{i}.png")
    out = tmp_path / "pred.csv"
    assert main(["predict", "--config", E2E_CONFIG, *SHRINK, "--ckpt_path", str(tmp_path / "run"),
                 "--data.root", str(images), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "file,class,index,probability" and len(rows) == 4
    assert all(0.0 <= float(r.split(",")[-1]) <= 1.0 for r in rows[1:])


def test_6_the_trained_network_exports(tmp_path):
    cli = fit(LOCAL_CONFIG, tmp_path, "--trainer.limit_train_batches", "1", *FAST)
    net = cli.model.deployable()
    assert not any("heads.0" in k for k in net.state_dict())  # the auxiliary heads are left out
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), cli.model.eval()(x))


# ---------------------------------------------------------------- 7: one run per directory
def test_7_a_second_run_into_a_locked_directory_is_refused(tmp_path, capsys):
    holder = RunDir(tmp_path).acquire()
    try:
        assert main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--run_dir", str(tmp_path)]) == 2
        assert _err_line(capsys).startswith(f"error: {tmp_path} is in use by another run (pid {os.getpid()})")
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.release()


# ---------------------------------------------------------------- 8: settings that are not ignored
def test_8_the_optimizer_learning_rate_is_the_one_cycle_peak():
    from glcan.lit.optim import OneCycleLR

    model = GLCanModule(num_blocks=2, split="uniform", optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.03}},
                        scheduler={"class_path": "glcan.lit.optim.OneCycleLR", "init_args": {}})
    opt = model.build_optimizers()[0]
    sched = OneCycleLR(opt, total_steps=10)
    assert max(g["max_lr"] for g in opt.param_groups) == pytest.approx(0.03)
    assert sched.get_last_lr()[0] == pytest.approx(0.03 / 25)


def test_8_a_one_cycle_run_continued_past_its_plan_is_one_line(tmp_path, capsys):
    args = ["--config", LOCAL_CONFIG, *SHRINK, "--run_dir", str(tmp_path), "--trainer.limit_train_batches", "2", *FAST]
    assert main(["fit", *args]) == 0
    assert main(["fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 2
    line = _err_line(capsys)
    assert "schedule spans 2 batches but this run plans 4" in line and "start a new run" in line


# ---------------------------------------------------------------- 9: E2E's memory breakdown
def test_9_e2e_activations_are_labelled_activations(tmp_path):
    cli = fit(E2E_CONFIG, tmp_path, "--trainer.limit_train_batches", "4", *FAST)
    parts = json.loads((tmp_path / "summary.json").read_text())["memory_parts"]
    predicted = predict(lambda: assemble(cli.model.init_arguments), 16, (3, 32, 32), 10).parts
    assert parts["activations"] > parts["optimizer_state"]
    assert parts["activations"] == pytest.approx(predicted["activations"], rel=0.05)
    assert parts["optimizer_state"] == predicted["optimizer_state"]


# ---------------------------------------------------------------- 10: test says what it tested
def test_10_test_needs_a_checkpoint_and_records_it_beside_its_run(tmp_path, capsys):
    args = ["--config", LOCAL_CONFIG, *SHRINK, *FAST]
    assert main(["test", *args]) == 2
    assert "needs --ckpt_path" in _err_line(capsys)
    fit(LOCAL_CONFIG, tmp_path, "--trainer.limit_train_batches", "2", *FAST)
    assert main(["test", *args, "--ckpt_path", str(tmp_path / "checkpoints" / "last.ckpt")]) == 0
    record = json.loads((tmp_path / "test_last.json").read_text())
    assert record["epochs"] == 1 and record["global_step"] == 2 and 0 <= record["test/acc"] <= 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["checkpoints"]  # no new version


# ---------------------------------------------------------------- 11: broken images found up front
def test_11_check_data_lists_every_broken_image(tmp_path, capsys):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "b" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rc = main(["check-data", "--config", LOCAL_CONFIG, "--data.name", "folder", "--data.root", str(tmp_path),
               "--data.val_fraction", "0.2", "--logger.enabled", "false"])
    out = capsys.readouterr().out
    assert rc == 1 and "bad.png" in out and "cut.jpg" in out and "12 image(s) read, 2 broken" in out


# ---------------------------------------------------------------- 13: a CLI that fits a screen
@pytest.mark.parametrize("command", ["fit", "test", "memory", "compare", "predict", "check-data"])
def test_13_every_help_fits_a_screen(command, capsys, monkeypatch):
    """A screen: 60 rows of an 80-column terminal, long lines counted as the rows they wrap to."""
    monkeypatch.setenv("COLUMNS", "80")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    rows = sum(max(1, math.ceil(len(line) / 80)) for line in out.splitlines())
    assert rows <= 60, f"{command} --help: {rows} rows at 80 columns"
    if command == "fit":
        assert "resnet110" in out and "glcan" in out and "nn.Module" not in out
    if command == "memory":
        assert "--budget" in out and "--json" in out


@pytest.mark.slow  # a fresh interpreter
def test_13_help_into_a_pipe_whose_reader_has_gone_is_quiet():
    """``train.py fit --help | head -1``: the reader leaves before the help is written."""
    proc = _train_py("--help")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err.strip() == "", err


def test_13_the_top_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "memory", "compare", "check-data"):
        assert f"  {command} " in out


@pytest.mark.parametrize("args, message", [
    (["fit", "--model.nm_blocks", "4"], "error: unknown option --model.nm_blocks (did you mean --model.num_blocks?)"),
    (["fit", "--trainer.max_epoch", "2"],  # a prefix of a real option is a typo, not an abbreviation
     "error: unknown option --trainer.max_epoch (did you mean --trainer.max_epochs?)"),
    (["fit", "--model.method", "locl"], "error: --model.method: 'locl' is not one of e2e, e2e_recompute, local, local_recompute (did you mean local?)"),
    (["fitt"], "error: unknown command 'fitt' (did you mean fit?); commands: fit, validate, test, predict, memory, "
               "compare, check-data"),
    (["fit", "--logger.mde", "offline"], "error: unknown option --logger.mde (did you mean --logger.mode?)"),
    (["fit", "--model.optimizer.init_args.lrr", "0.1"],  # the config's optimizer is SGD
     "error: --model.optimizer.init_args.lrr: torch.optim.SGD takes no option 'lrr'"),
    (["fit", "--model.optimizer.init_args.lr", "fast"], "error: --model.optimizer.init_args.lr: expected a number or Tensor, got 'fast'"),
])
def test_13_a_parse_error_is_one_line_with_a_suggestion(args, message, capsys):
    assert main([*args[:1], "--config", LOCAL_CONFIG, *args[1:]] if args[0] == "fit" else args) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [message]


def test_13_a_key_typo_in_a_config_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("model:\n  backbone: resnet20\n  hed: glcan\n")
    assert main(["fit", "--config", str(bad)]) == 2
    assert _err_line(capsys) == f"error: {bad}: model.hed is not an option (did you mean model.head?)"


def test_13_help_names_every_option_the_parser_takes(capsys):
    """The one screen is read from LightningCLI's parser: no model or data option is left out."""
    from glcan.cli.help import options, parser

    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    p = parser()
    for section in ("model", "data"):
        keys = options(p, section)
        assert len(keys) > 10 and all(re.search(rf"\b{k}\b", out) for k in keys), section


def test_13_a_yaml_error_names_its_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: resnet20\n   method: [local\n")
    assert main(["fit", "--config", str(bad)]) == 2
    line = _err_line(capsys)
    assert line.startswith(f"error: {bad}: line ") and "YAML syntax error" in line


# ---------------------------------------------------------------- 14: no false or irrelevant warnings
def test_14_a_fresh_run_prints_no_false_warnings(tmp_path):
    proc = _train_py("--config", LOCAL_CONFIG, *SHRINK, "--trainer.limit_train_batches", "2", *FAST,
                     "--run_dir", str(tmp_path), env={"WANDB_MODE": "offline"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    text = out + err
    for noise in ("will be deleted", "exists and is not empty", "litlogger", "deprecated", "anonymous", "Tip:"):
        assert noise not in text, noise
    assert len(text.strip().splitlines()) <= 12, text


# ---------------------------------------------------------------- 15: one steady budget answer
def test_15_memory_predictions_are_deterministic():
    def peak(method: str) -> int:
        return predict(lambda: GLCanModule(backbone="resnet20", method=method, num_blocks=4, batch_size=64),
                       64, (3, 32, 32), 10).peak_bytes
    for method in ("e2e", "e2e_recompute", "local"):
        assert peak(method) == peak(method)


@pytest.mark.slow  # predicts the whole frontier
def test_15_the_budget_says_when_e2e_fits(capsys):
    assert main(["memory", "--config", LOCAL_CONFIG, "--data.batch_size", "16", "--budget", "80GiB"]) == 0
    out = capsys.readouterr().out
    assert "E2E fits: train end to end" in out and out.count("budget 80.00 GiB") == 1


@pytest.mark.slow  # plans the whole frontier at batch 512
def test_15_num_blocks_auto_prints_its_choice_once(caplog):
    with caplog.at_level("INFO"):
        assert main(["memory", "--config", LOCAL_CONFIG, "--data.batch_size", "512", "--model.num_blocks", "auto",
                     "--model.memory_budget", "1GiB", "--json"]) == 0
    assert caplog.text.count("fits (predicted peak") == 1


# ---------------------------------------------------------------- 16: clean records
def test_16_hparams_yaml_is_safe_yaml_and_wandb_config_is_plain(tmp_path):
    from glcan.lit.loggers import run_config

    cli = fit(E2E_CONFIG, tmp_path, "--trainer.limit_train_batches", "1", *FAST)
    hparams = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert hparams["backbone"] == "resnet20" and hparams["optimizer"]["class_path"].endswith("SGD")
    values = run_config(cli.cfg, cli.model, cli.datamodule)
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in values.values())
    assert values["config"].endswith("mnist5k_resnet20_e2e.yaml") and "Path" not in values["config"]
    assert values["model.method"] == "e2e" and values["model.num_blocks"] == 1
    assert "model.head" not in values and "model.split" not in values  # E2E ignores them
    assert "method" not in values and "backbone" not in values  # each key once, dotted


def test_16_the_wandb_summary_holds_the_split_and_how_memory_was_measured(tmp_path, monkeypatch):
    from glcan.lit.loggers import SafeWandbLogger

    seen: dict = {}
    monkeypatch.setattr(SafeWandbLogger, "log_summary", lambda self, values: seen.update(values))
    monkeypatch.setenv("WANDB_MODE", "offline")
    fit(LOCAL_CONFIG, tmp_path, "--trainer.limit_train_batches", "4", *FAST, "--logger.enabled", "true")
    assert seen["model/boundaries"] == str(json.loads((tmp_path / "summary.json").read_text())["boundaries"])
    assert "tracker" in seen["memory/method"] and seen["memory/peak_block"] in range(4)


def test_15_a_damaged_checkpoint_is_one_line_naming_the_previous_one(tmp_path, capsys):
    """A last.ckpt zeroed in the middle (a disk that filled up): one line, and the newest intact
    epoch checkpoint beside it, which the run keeps for exactly this."""
    fit(LOCAL_CONFIG, tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", *FAST)
    last = tmp_path / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 3: len(data) // 3 + 4096] = bytes(4096)
    last.write_bytes(bytes(data))
    assert main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--trainer.max_epochs", "2", "--run_dir", str(tmp_path),
                 "--ckpt_path", "last"]) == 2
    line = _err_line(capsys)
    assert line.startswith(f"error: checkpoint {last} is damaged") and "epoch001.ckpt" in line


def test_16_resuming_a_finished_run_keeps_its_figures(tmp_path):
    """--ckpt_path last on a run that has finished: nothing is left to train, and the summary keeps
    what the run measured (memory, step time) instead of nulls."""
    fit(LOCAL_CONFIG, tmp_path, "--trainer.limit_train_batches", "5", *FAST)
    before = json.loads((tmp_path / "summary.json").read_text())
    assert before["peak_memory_bytes"] and before["step_time_ms"]
    fit(LOCAL_CONFIG, tmp_path, "--trainer.limit_train_batches", "5", *FAST, "--ckpt_path", "last")
    after = json.loads((tmp_path / "summary.json").read_text())
    for key in ("peak_memory_bytes", "memory_method", "step_time_ms", "step_cpu_ms", "test_acc"):
        assert after[key] == before[key], key
    assert after["resumed"] == 1


def test_10_lightnings_own_ddp_strategy_is_one_line_pointing_to_glcans(capsys):
    assert main(["fit", "--config", LOCAL_CONFIG, *SHRINK, "--trainer.strategy", "ddp", "--trainer.devices", "2"]) == 2
    line = _err_line(capsys)
    assert line.startswith("error: --trainer.strategy ddp:") and "--parallel.mode ddp" in line
