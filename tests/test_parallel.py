"""Parallel training: the forward-only pipeline (x replicas) and DDP, inside Lightning's Trainer
(glcan/lit/pipeline.py, glcan/parallel, docs/parallel.md).

The pipeline tests start real processes through train.py (gloo on CPU): one run is shared by
several tests. Every test that starts processes is marked slow (``make test`` runs them, ``make
test-fast`` does not). The key ones: pipelining changes nothing in the mathematics, so the
pipeline's weights, BatchNorm statistics and optimizer states equal those of the one-process
run; with replicas, those of DDP; resumed, those of the uninterrupted run.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import LOCAL_CONFIG, ROOT, SHRINK, fit
from glcan.core.step import local_step
from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.cli import main
from glcan.parallel import PipelineError
from glcan.lit.pipeline import block_times_ms, group_blocks
from glcan.parallel.throughput import Link, predict

# 4 blocks, 2 epochs x 3 batches of 16, OneCycle stepped per batch (the config's schedule).
RUN = ["--config", LOCAL_CONFIG, *SHRINK, "--model.split", "uniform", "--trainer.max_epochs", "2",
       "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "0", "--trainer.limit_test_batches", "1"]
PIPE = ["--parallel.mode", "pipeline", "--parallel.workers", "2"]


def _env() -> dict:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def _train_py(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "fit", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _wait_for(path: Path, procs: list, timeout: float = 240.0) -> None:
    t0 = time.time()
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"exited early ({p.returncode}): {p.stderr.read()[-2000:]}")
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.2)


def _rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of the process Lightning's launcher started for ``rank`` of the run in ``run_dir``
    (its environment names both: tests run side by side, so any other run's must not match)."""
    want = {f"LOCAL_RANK={rank}".encode(), f"GLCAN_RUN_DIR={run_dir}".encode()}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and want <= set((entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process of rank {rank} for {run_dir}")


def _fit_subprocess(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """One 2-stage pipeline run through train.py (Lightning's launcher starts the second process)."""
    run_dir = tmp_path_factory.mktemp("pipe") / "run"
    _fit_subprocess(*RUN, *PIPE, "--run_dir", str(run_dir))
    return run_dir


def _assert_same_training(a: dict, b: dict, atol: float = 0.0) -> None:
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], value, rtol=0, atol=atol, msg=key)
    for k, (x, y) in enumerate(zip(a["optimizer_states"], b["optimizer_states"])):
        assert y["state"], f"block {k} has no optimizer state"
        for p, state in y["state"].items():  # momentum buffers, Adam's moments
            for name, value in state.items():
                torch.testing.assert_close(x["state"][p][name], value, rtol=0, atol=atol, msg=f"block {k} {name}")
        assert x["param_groups"][0]["lr"] == pytest.approx(y["param_groups"][0]["lr"]), f"block {k} learning rate"
    assert [s["last_epoch"] for s in a["lr_schedulers"]] == [s["last_epoch"] for s in b["lr_schedulers"]]


# ---------------------------------------------------------------- the pipeline: correctness
@pytest.mark.slow  # starts processes
def test_pipeline_equals_the_sequential_local_run(pipeline_run, tmp_path):
    """Pipelining changes nothing in the mathematics: weights, BatchNorm statistics, optimizer
    and schedule states equal the one-process run's (both single-threaded: the same kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(LOCAL_CONFIG, tmp_path / "seq", *RUN[2:], "--trainer.deterministic", "true")
    finally:
        torch.set_num_threads(threads)
    pipe, seq = _ckpt(pipeline_run / "checkpoints/last.ckpt"), _ckpt(tmp_path / "seq/checkpoints/last.ckpt")
    assert (pipe["epoch"], pipe["global_step"]) == (1, 6)
    assert any("running_var" in k for k in pipe["state_dict"])  # BatchNorm statistics are compared too
    _assert_same_training(pipe, seq, atol=1e-6)
    assert [s["last_epoch"] for s in pipe["lr_schedulers"]] == [6] * 4
    assert pipe["lr_schedulers"][0]["total_steps"] == 6


SR = ["--config", str(ROOT / "configs/sr_x2_edsr_glcan_k4.yaml"), "--data.patch_size", "24", "--data.patches_per_epoch",
      "24", "--data.batch_size", "8", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
      "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--logger.enabled", "false",
      "--model.split", "uniform", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]
VARIANTS = {"super-resolution": SR, "infopro": [*RUN, "--model.head", "infopro"],
            "local_recompute": [*RUN, "--model.method", "local_recompute"],
            "bf16-mixed": [*RUN, "--trainer.precision", "bf16-mixed"]}


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_task_and_method_pipelines_to_the_sequential_result(variant, tmp_path):
    """Super-resolution (HR targets, the heads' bicubic residual), InfoPro (its heads reconstruct
    the network input, which travels with the activation), recomputation and bf16 autocast
    (activations sent in the dtype they were made in), pipelined = sequential."""
    args = VARIANTS[variant]
    _fit_subprocess(*args, *PIPE, "--parallel.grouping", "[2]", "--run_dir", str(tmp_path / "pipe"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["fit", *args, "--trainer.deterministic", "true", "--run_dir", str(tmp_path / "seq")]) == 0
    finally:
        torch.set_num_threads(threads)
    _assert_same_training(_ckpt(tmp_path / "pipe/checkpoints/last.ckpt"), _ckpt(tmp_path / "seq/checkpoints/last.ckpt"),
                          atol=1e-6)


@pytest.mark.slow  # starts processes
def test_pipeline_checkpoint_is_an_ordinary_lightning_checkpoint(pipeline_run, tmp_path):
    ckpt_path = pipeline_run / "checkpoints/last.ckpt"
    assert sorted(p.name for p in (pipeline_run / "checkpoints").iterdir()) == ["epoch000.ckpt", "epoch001.ckpt",
                                                                              "last.ckpt"]
    ckpt = _ckpt(ckpt_path)
    assert ckpt["glcan"]["num_blocks"] == 4 and ckpt["glcan"]["method"] == "local"
    model = GLCanModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    # train.py test on one device reads it, and gets the pipeline's own test accuracy
    assert main(["test", *RUN, "--ckpt_path", str(ckpt_path)]) == 0
    tested = json.loads((pipeline_run / "test_last.json").read_text())
    summary = json.loads((pipeline_run / "summary.json").read_text())
    assert tested["test/acc"] == pytest.approx(summary["test_acc"])
    assert [tested[f"test/block{k}/acc"] for k in range(4)] == pytest.approx(summary["block_acc"])
    assert (tested["epochs"], tested["global_step"]) == (2, 6)
    # from the run's own config.yaml, which says pipeline: evaluated in this one process all the same
    (pipeline_run / "test_last.json").unlink()
    assert main(["test", "--ckpt_path", str(pipeline_run)]) == 0
    assert json.loads((pipeline_run / "test_last.json").read_text())["test/acc"] == pytest.approx(summary["test_acc"])


@pytest.mark.slow  # starts processes
def test_pipeline_summary_and_logs(pipeline_run):
    s = json.loads((pipeline_run / "summary.json").read_text())
    assert s["parallel"] == "pipeline" and s["workers"] == 2 and s["replicas"] == 1 and s["depth"] == 2
    groups = s["worker_blocks"]
    assert len(groups) == 2 and sum(groups, []) == [0, 1, 2, 3] and all(groups)
    assert s["method"] == "local" and s["num_blocks"] == 4 and s["global_step"] == 6 and s["epochs"] == 2
    assert s["throughput_img_s"] > 0 and len(s["worker_step_ms"]) == 2
    assert len(s["worker_peak_memory_bytes"]) == 2 and all(p > 0 for p in s["worker_peak_memory_bytes"])
    assert s["peak_memory_bytes"] == max(s["worker_peak_memory_bytes"])
    assert 0 <= s["test_acc"] <= 1 and s["block_acc"][-1] == s["test_acc"] and len(s["block_acc"]) == 4
    assert len(s["group_cost_ms"]) == 2  # balanced on measured time (the default)
    rows = list(csv.DictReader((pipeline_run / "metrics.csv").open()))
    # every block's epoch loss and accuracy reach rank 0's log, whichever stage trained it
    for k in range(4):
        values = [float(r[f"train/block{k}/loss_epoch"]) for r in rows if r.get(f"train/block{k}/loss_epoch")]
        assert len(values) == 2 and all(v > 0 for v in values)
        assert sum(1 for r in rows if r.get(f"train/block{k}/acc")) == 2
    assert sum(1 for r in rows if r.get("train/loss_epoch")) == 2


@pytest.mark.slow  # starts processes
def test_a_pipeline_resumes_exactly(pipeline_run, tmp_path):
    """From the first epoch's checkpoint, a pipeline trains on to the uninterrupted run's weights."""
    run_dir = tmp_path / "run"
    _fit_subprocess(*RUN, *PIPE, "--run_dir", str(run_dir), "--ckpt_path", str(pipeline_run / "checkpoints/epoch000.ckpt"))
    _assert_same_training(_ckpt(run_dir / "checkpoints/last.ckpt"), _ckpt(pipeline_run / "checkpoints/last.ckpt"))


@pytest.mark.slow  # starts processes
def test_a_stopped_pipeline_resumes_mid_epoch_exactly(tmp_path):
    """SIGTERM to the first process: every stage stops at the next step where they meet (here
    every step), one checkpoint is saved mid-epoch, and ``--ckpt_path last`` trains on to the
    uninterrupted run's weights."""
    longer = [*RUN, "--data.fake_size", "320", "--trainer.limit_train_batches", "20", "--trainer.log_every_n_steps", "1"]
    run_dir = tmp_path / "stopped"
    proc = _train_py(*longer, *PIPE, "--run_dir", str(run_dir), env=_env())
    try:
        _wait_for(run_dir / "checkpoints/epoch000.ckpt", [proc])
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "--ckpt_path last" in err and "Resume with" in err
    stopped = _ckpt(run_dir / "checkpoints/last.ckpt")
    assert 20 < stopped["global_step"] < 40, stopped["global_step"]  # inside the second epoch
    _fit_subprocess(*longer, *PIPE, "--run_dir", str(run_dir), "--ckpt_path", "last")
    _fit_subprocess(*longer, *PIPE, "--run_dir", str(tmp_path / "whole"))
    _assert_same_training(_ckpt(run_dir / "checkpoints/last.ckpt"), _ckpt(tmp_path / "whole/checkpoints/last.ckpt"))


@pytest.mark.slow  # starts 6 processes
def test_pipeline_times_replicas_equals_ddp(tmp_path):
    """2 stages x 2 replicas (4 processes) train what DDP's 2 replicas train: each replica's stages
    read its half of the data, and each block's gradients are averaged over the replicas."""
    _fit_subprocess(*RUN, *PIPE, "--parallel.replicas", "2", "--run_dir", str(tmp_path / "pipe"))
    _fit_subprocess(*RUN, "--parallel.mode", "ddp", "--parallel.workers", "2", "--run_dir", str(tmp_path / "ddp"))
    pipe, ddp = _ckpt(tmp_path / "pipe/checkpoints/last.ckpt"), _ckpt(tmp_path / "ddp/checkpoints/last.ckpt")
    assert pipe["global_step"] == 4  # 64 images, batches of 16, over 2 replicas: 2 batches per epoch
    _assert_same_training(pipe, ddp, atol=1e-6)
    s = json.loads((tmp_path / "pipe/summary.json").read_text())
    assert (s["workers"], s["replicas"]) == (2, 2)


@pytest.mark.slow
def test_two_nodes_under_torchrun_give_the_same_weights(pipeline_run, tmp_path):
    """The same run as two "machines" on localhost (torchrun --nnodes 2, one process each)."""
    torchrun, port = Path(sys.executable).with_name("torchrun"), str(_port())
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen([str(torchrun), "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(n),
                               "--master_addr", "127.0.0.1", "--master_port", port, str(ROOT / "train.py"), "fit", *RUN,
                               *PIPE, "--trainer.num_nodes", "2", "--parallel.grouping", "[1]", "--run_dir",
                               str(run_dir)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    a = _ckpt(run_dir / "checkpoints/last.ckpt")
    assert json.loads((run_dir / "summary.json").read_text())["worker_blocks"] == [[0], [1, 2, 3]]
    _assert_same_training(a, _ckpt(pipeline_run / "checkpoints/last.ckpt"), atol=1e-6)


# ---------------------------------------------------------------- the pipeline: failures
@pytest.mark.slow
def test_a_killed_stage_stops_the_run_in_one_line_and_the_last_checkpoint_stays(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train_py(*RUN, *PIPE, "--parallel.grouping", "[2]", "--trainer.max_epochs", "1000", "--run_dir",
                     str(run_dir), env=_env())
    try:
        _wait_for(run_dir / "checkpoints/last.ckpt", [proc])
        os.kill(_rank_pid(run_dir, 1), signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        stopped_in = time.time() - t0
    finally:
        proc.kill()
    assert proc.returncode == 2 and stopped_in < 30
    line = err.strip().splitlines()[-1]
    # stage 0 notices while waiting for its sends to be taken (naming stage 1) or where the stages meet
    assert line.startswith("error: pipeline stage 0 of replica 0 (rank 0, blocks 0-1): ") and \
        "stopped responding" in line, err[-2000:]
    ckpt = _ckpt(run_dir / "checkpoints/last.ckpt")  # complete, loadable, at an epoch boundary
    assert ckpt["global_step"] == 3 * (ckpt["epoch"] + 1)
    model = GLCanModule(backbone="resnet20", num_blocks=4, split="uniform")
    model.load_state_dict(ckpt["state_dict"])


@pytest.mark.slow
def test_a_nan_in_any_stage_stops_every_stage_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train_py(*RUN, *PIPE, "--model.scheduler", "null", "--model.optimizer.init_args.lr", "1e6",
                     "--trainer.log_every_n_steps", "1", "--run_dir", str(run_dir), env=_env())
    _, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and lines, err[-2000:]
    assert all(ln.startswith("error: the loss of block ") and " at step " in ln for ln in lines), lines
    assert len(set(lines)) == 1  # every stage names the same block and step
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_a_hung_stage_is_noticed_within_the_timeout(tmp_path):
    run_dir = tmp_path / "run"
    # The timeout covers the processes' start too (their rendezvous), so it cannot be very short.
    proc = _train_py(*RUN, *PIPE, "--parallel.grouping", "[2]", "--parallel.timeout", "20", "--trainer.max_epochs",
                     "1000", "--run_dir", str(run_dir), env=_env())
    child = None
    try:
        _wait_for(run_dir / "checkpoints/last.ckpt", [proc])
        child = _rank_pid(run_dir, 1)
        os.kill(child, signal.SIGSTOP)
        t0 = time.time()
        proc.wait(timeout=90)  # not communicate(): the frozen process holds the pipes open
        stopped_in = time.time() - t0
    finally:
        proc.kill()
        if child is not None:
            os.kill(child, signal.SIGKILL)
    err = proc.stderr.read()
    line = err.strip().splitlines()[-1]
    # stage 0 waits either for its sends to be taken (naming stage 1) or where the stages meet
    assert line.startswith("error: pipeline stage 0 of replica 0 (rank 0, blocks 0-1): ") and \
        "stopped responding" in line, err[-2000:]
    assert proc.returncode == 2 and stopped_in < 60 and any(w in line.lower() for w in ("timed out", "timeout"))


# ---------------------------------------------------------------- the pipeline: settings
def test_bad_pipeline_settings_are_refused_in_one_line(tmp_path, capsys):
    cases = [
        (["--parallel.workers", "5"], "parallel.workers=5 must be between 1 and model.num_blocks=4"),
        (["--model.method", "e2e"], "trains model.method=local"),
        (["--parallel.grouping", "[3, 1]"], "parallel.grouping [3, 1]"),
        (["--model.lookahead", "1"], "model.lookahead is not supported in pipeline mode"),
        (["--model.head_kwargs", '{"relay": 8}'], "head_kwargs.relay is not supported in pipeline mode"),
        (["--parallel.replicas", "0"], "parallel.replicas must be >= 1"),
        (["--config", "configs/det_digits_fcos_glcan_k4.yaml"], "detection is not supported in pipeline mode"),
    ]
    for extra, message in cases:
        assert main(["fit", *RUN, *PIPE, "--run_dir", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1], err
    assert not (tmp_path / "x" / "checkpoints").exists()  # refused before any process started


def test_a_pipeline_set_in_a_referenced_config_file_runs_as_a_pipeline(tmp_path):
    """The mode is read from the parsed config, sections given as files included (no YAML sniffing)."""
    (tmp_path / "parallel").mkdir()
    (tmp_path / "parallel" / "two.yaml").write_text("mode: pipeline\nworkers: 5\n")
    (tmp_path / "c.yaml").write_text("parallel: parallel/two.yaml\n")
    # 5 stages for 4 blocks is refused by the pipeline's own check: proof that the pipeline path was taken
    assert main(["fit", *RUN, "--config", str(tmp_path / "c.yaml"), "--run_dir", str(tmp_path / "x")]) == 2


def test_grouping():
    assert group_blocks(4, 2, "blocks") == [[0, 1], [2, 3]]
    assert group_blocks(5, 2, "blocks") == [[0, 1, 2], [3, 4]]
    assert group_blocks(4, 2, [3]) == [[0, 1, 2], [3]]
    assert group_blocks(4, 4, "time", [1, 1, 1, 1]) == [[0], [1], [2], [3]]
    # the slowest group is minimised: block 0 is as slow as the three others together
    assert group_blocks(4, 2, "time", [30, 10, 10, 10]) == [[0], [1, 2, 3]]
    assert group_blocks(4, 2, "time", [5, 5, 5, 20]) == [[0, 1, 2], [3]]
    with pytest.raises(PipelineError, match="between 1 and"):
        group_blocks(2, 3, "blocks")


def test_block_times_are_measured_without_touching_the_model():
    model = GLCanModule(backbone="resnet20", num_blocks=4, split="uniform", batch_size=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    times = block_times_ms(model, 8, (3, 32, 32), 10, torch.device("cpu"), threads=1, steps=1)
    assert len(times) == 4 and all(t > 0 for t in times)
    assert all(torch.equal(v, model.state_dict()[key]) for key, v in before.items())
    assert torch.equal(rng, torch.get_rng_state())


# ---------------------------------------------------------------- DDP
class RecordReplica(L.Callback):
    """Saves each rank's batches and final state (DDP runs in other processes)."""

    def __init__(self, out: str) -> None:
        self.out, self.batches = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append([t.detach().cpu().clone() for t in batch])

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"batches": self.batches, "state": {k: v.cpu() for k, v in pl_module.state_dict().items()}},
                   Path(self.out) / f"rank{trainer.global_rank}.pt")


def _ddp_model() -> GLCanModule:
    opt = functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4)
    return GLCanModule(backbone="resnet20", num_blocks=2, split="uniform", head="linear", optimizer=opt, batch_size=8)


@pytest.mark.slow  # starts worker processes
def test_ddp_replicas_agree_and_equal_one_process_on_the_union_of_their_batches(tmp_path):
    """Under DDP each replica normalises with its own half-batch BatchNorm statistics and the
    gradients are averaged; so the valid one-process reference forwards each half separately
    (per-half BatchNorm) and steps on the mean of the two losses. Running statistics: DDP
    broadcasts rank 0's buffers before every step, so rank 0's are those updated by its halves."""
    torch.manual_seed(0)
    model = _ddp_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    dm = GLCanDataModule(name="fake", fake_size=64, batch_size=8, seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true", max_epochs=1,
                        limit_train_batches=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        precision="64-true", callbacks=[RecordReplica(str(tmp_path))])
    trainer.fit(model, datamodule=dm)
    r0, r1 = torch.load(tmp_path / "rank0.pt", weights_only=False), torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert len(r0["batches"]) == len(r1["batches"]) == 3
    assert not torch.equal(r0["batches"][0][0], r1["batches"][0][0])  # the replicas saw different data
    params = [k for k, _ in model.named_parameters()]
    for k in params:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # identical replicas

    ref = _ddp_model().double()  # both in float64: the two orders of summation then agree to 1e-10
    ref.load_state_dict(init)
    ref.train()
    opts = ref.build_optimizers()
    for (x0, y0), (x1, y1) in zip(r0["batches"], r1["batches"]):
        h0, h1 = x0, x1
        for k in range(ref.net.num_blocks):
            block, head = ref.net.blocks[k], ref.net.heads[k]
            bns = [m for m in block.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            kept = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in bns]
            for m in bns:  # rank 1 updates copies: DDP overwrites its statistics with rank 0's
                m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
                m.num_batches_tracked = m.num_batches_tracked.clone()
            h0, h1 = h0.double(), h1.double()
            out1 = block(h1.detach())
            loss1, _ = head.loss(out1, y1, x1)
            for m, (mean, var, count) in zip(bns, kept):
                m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
            out0 = block(h0.detach())
            loss0, _ = head.loss(out0, y0, x0)
            ((loss0 + loss1) / 2).backward()
            opts[k].step()
            opts[k].zero_grad(set_to_none=True)
            h0, h1 = out0, out1
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, rtol=1e-10, atol=1e-12, msg=k)
    # and the K all-reduces per batch are not a sum of K full-model updates: local_step alone on
    # rank 0's batches gives different weights
    alone = _ddp_model().double()
    alone.load_state_dict(init)
    o = alone.build_optimizers()
    for x, y in r0["batches"]:
        local_step(alone.net, x.double(), y, step=lambda k: (o[k].step(), o[k].zero_grad()))
    assert not torch.allclose(alone.state_dict()[params[0]], r0["state"][params[0]])


def _count_allreduced(rank: int, port: int, out: str) -> None:
    """Lightning's manual-optimization DDP flow (prepare_for_backward before each block's
    backward, inside the DDP forward) with a comm hook that counts what is all-reduced."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from lightning.pytorch.overrides.distributed import prepare_for_backward

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = _ddp_model()
    opts, reduced = model.build_optimizers(), []

    def hook(state, bucket):
        reduced.append(bucket.buffer().numel())
        return dist.all_reduce(bucket.buffer().div_(2), async_op=True).get_future().then(lambda f: f.value()[0])

    def step(k: int) -> None:
        opts[k].step()
        opts[k].zero_grad(set_to_none=True)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x, y):
            local_step(model.net, x, y, step, backward=lambda loss: (prepare_for_backward(ddp, loss), loss.backward()))

    ddp = DistributedDataParallel(Step(), find_unused_parameters=True)
    ddp.register_comm_hook(None, hook)
    for _ in range(2):
        ddp(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    if rank == 0:
        Path(out).write_text(json.dumps(reduced))
    dist.destroy_process_group()


@pytest.mark.slow  # starts worker processes
def test_ddp_all_reduces_the_whole_model_after_every_block_backward(tmp_path):
    """The documented cost of ddp_find_unused_parameters_true: K all-reduces of every bucket per batch."""
    out = tmp_path / "reduced.json"
    torch.multiprocessing.spawn(_count_allreduced, args=(_port(), str(out)), nprocs=2)
    model = _ddp_model()
    params, k = sum(p.numel() for p in model.parameters()), model.net.num_blocks
    assert sum(json.loads(out.read_text())) == 2 * k * params  # 2 batches


@pytest.mark.slow
def test_ddp_mode_through_train_py(tmp_path):
    run_dir = tmp_path / "run"
    proc = _train_py(*RUN, "--trainer.max_epochs", "1", "--parallel.mode", "ddp", "--parallel.workers", "2",
                     "--run_dir", str(run_dir), env=_env())
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out + err
    s = json.loads((run_dir / "summary.json").read_text())
    # 64 images in batches of 16 split over 2 replicas: 2 batches each (limit_train_batches=3 not reached)
    assert s["method"] == "local" and s["global_step"] == 2 and 0 <= s["test_acc"] <= 1
    assert (run_dir / "checkpoints/last.ckpt").exists()


# ---------------------------------------------------------------- the throughput model
def test_throughput_model_periods_bubbles_and_bottlenecks():
    """The pipeline delivers one batch per period of its slowest resource: a stage (its blocks'
    time, plus its all-reduce with replicas) or a link; speedup and bubble follow from it."""
    fast = Link("fast", 1e12, 0.0)
    # Two equal stages: twice one device, no bubble; over a run the fill costs one batch.
    p = predict([0.1, 0.1, 0.1, 0.1], [1e6] * 4, [[0, 1], [2, 3]], 100, fast, batches=10)
    assert p.period_s == pytest.approx(0.2) and p.speedup == pytest.approx(2.0) and p.bubble == pytest.approx(0.0)
    assert p.bubble_run == pytest.approx(1 - 10 * 0.4 / (2 * (0.4 + 9 * 0.2)), rel=1e-4)  # + 1 us on the link
    assert p.images_per_s == pytest.approx(500.0) and p.bottleneck == "stage 0"
    # Unequal stages: the slow one sets the pace and the fast one waits.
    p = predict([0.3, 0.1], [1e6, 1e6], [[0], [1]], 100, fast)
    assert p.period_s == pytest.approx(0.3) and p.speedup == pytest.approx(4 / 3) and p.bubble == pytest.approx(1 / 3)
    # A slow link (8 MB at 40 MB/s = 0.2 s) overlapped with compute becomes the bottleneck...
    slow = Link("slow", 40e6, 0.0)
    p = predict([0.1, 0.1], [8e6, 8e6], [[0], [1]], 100, slow)
    assert p.bottleneck == "link 0->1" and p.period_s == pytest.approx(0.2)
    # ...and without overlap both ends pay it.
    p = predict([0.1, 0.1], [8e6, 8e6], [[0], [1]], 100, slow, overlap=False)
    assert p.period_s == pytest.approx(0.3) and p.stage_s == pytest.approx([0.3, 0.3])
    # Replicas: R batches per period, each stage pays a ring all-reduce of its own gradients.
    p = predict([0.1, 0.1], [1e6, 1e6], [[0], [1]], 100, fast, replicas=4, grad_bytes=[4e6, 0.0],
                network=Link("net", 1e9, 0.0))
    assert p.stage_s == pytest.approx([0.1 + 2 * 3 * 1e-3, 0.1])  # 2(R-1) ring steps of 1 MB at 1 GB/s
    assert p.speedup == pytest.approx(4 * 0.2 / p.period_s)
    with pytest.raises(ValueError, match="grad_bytes"):
        predict([0.1], [1e6], [[0]], 100, fast, replicas=2)
