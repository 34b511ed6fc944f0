"""``fit``, ``validate``, ``test`` and ``predict``: from a parsed config to a finished run.

``fit`` is the path every training run takes, one process or several:

1. parse the options once (:class:`~glcan.cli.parser.GLCanCLI`) and build model and data;
2. place the run (a fresh ``version_N``, ``--run_dir``, or the run it resumes, see
   glcan.cli.rundir) and lock it;
3. train: in this process (Lightning, DDP when ``--parallel.mode ddp``) or with pipeline
   workers (``--parallel.mode pipeline``, glcan.cli.pipeline);
4. test the trained network and write summary.json (glcan.lit.summary).

Ctrl+C or SIGTERM saves a checkpoint after the current batch and prints the command that
resumes it; a non-finite loss stops the run with one line and leaves the last checkpoint as it
was.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image

from glcan.cli import rundir
from glcan.cli.parser import GLCanCLI
from glcan.cli.pipeline import fit_pipeline
from glcan.cli.trainer import build_trainer, log_summary_to_wandb, print_summary_line, run_name
from glcan.io import atomic_write, write_csv, write_json
from glcan.lit.callbacks import RunInterrupted
from glcan.lit.checks import ConfigError
from glcan.lit.loggers import SafeWandbLogger, wandb_run_dir
from glcan.lit.summary import build_summary, measured_by_callbacks, test_metrics

def _root(cfg: Any) -> str:
    return cfg.trainer.get("default_root_dir") or "runs"


def _secondary_rank() -> bool:
    """A rank > 0 started by torchrun or by Lightning's DDP launcher: rank 0 places and locks the run."""
    if "WORLD_SIZE" in os.environ and int(os.environ.get("RANK", "0")) > 0:
        return True
    return os.environ.get("GLCAN_RUN_DIR") is not None and os.environ.get("LOCAL_RANK", "0") != "0"


def place_run(cli: GLCanCLI) -> rundir.RunDir:
    """Where this fit writes and what it resumes; ranks > 0 follow rank 0's choice (the DDP
    launcher passes it on in the environment; pipeline workers under torchrun receive it)."""
    cfg = cli.config
    if _secondary_rank():
        resume = os.environ.get("GLCAN_RESUME_FROM") or None
        path = os.environ.get("GLCAN_RUN_DIR") or cfg.get("run_dir") or _root(cfg)
        return rundir.RunDir(Path(path), Path(resume) if resume else None)
    run = rundir.for_training(_root(cfg), run_name(cli.model, cli.datamodule), cfg.get("run_dir"), cfg.get("ckpt_path"))
    if run.notice:
        print(f"note: {run.notice}", file=sys.stderr, flush=True)
    return run


def _checkpoint_step(path: Optional[Path]) -> Optional[int]:
    if path is None:
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return int(ckpt.get("global_step", 0))


def resume_command(args: list[str], run_path: Path) -> str:
    """The exact command that resumes this run."""
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--ckpt_path", "--run_dir"):
            skip = True
            continue
        if a.startswith(("--ckpt_path=", "--run_dir=")):
            continue
        keep.append(a)
    return shlex.join(["python", "train.py", "fit", *keep, "--run_dir", str(run_path), "--ckpt_path", "last"])


# ---------------------------------------------------------------- fit
def fit(args: list[str]) -> int:
    """``train.py fit``: train, test, write summary.json; 130 when interrupted (resumable)."""
    return fit_cli(GLCanCLI(args), args)


def fit_cli(cli: GLCanCLI, args: Optional[list[str]] = None) -> int:
    """Train the parsed ``cli``'s model; the trainer stays on ``cli.trainer``; the exit status."""
    run = place_run(cli)
    child = _secondary_rank()
    if not child:
        run.acquire()
        os.environ["GLCAN_RUN_DIR"], os.environ["GLCAN_RESUME_FROM"] = str(run.path), str(run.resume_from or "")
    code = 1
    try:
        if cli.config.parallel.mode == "pipeline":
            if not cli.model.task.pipeline:
                raise ConfigError(f"--parallel.mode pipeline does not support {cli.model.task.kind.replace('_', '-')} "
                                  "yet (its workers pass integer labels only); use --parallel.mode none or ddp")
            code = fit_pipeline(cli, run)
            return code
        trainer = cli.trainer = build_trainer(cli, run.path, training=True, job_type=cli.model.hparams.method,
                                              wandb_id=run.record.get("wandb_id"),
                                              resumed_step=_checkpoint_step(run.resume_from))
        try:
            trainer.fit(cli.model, datamodule=cli.datamodule,
                        ckpt_path=str(run.resume_from) if run.resume_from else None)
        except RunInterrupted as e:
            if trainer.is_global_zero:
                where = f"checkpoint saved to {e.checkpoint}" if e.checkpoint else "no checkpoint directory"
                print(f"stopped by {e.signame}; {where}. Resume with:\n  {resume_command(args or [], run.path)}",
                      file=sys.stderr, flush=True)
            code = 130
            return code
        trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
        write_run_summary(cli, trainer, run.path)
        code = 0
        return code
    finally:
        finish_wandb(getattr(cli, "trainer", None), code)
        if not child:
            run.release()
            os.environ.pop("GLCAN_RUN_DIR", None)
            os.environ.pop("GLCAN_RESUME_FROM", None)


def finish_wandb(trainer: Any, code: int) -> None:
    """End this run's W&B run (marked failed unless the run finished)."""
    for lg in getattr(trainer, "loggers", None) or []:
        if isinstance(lg, SafeWandbLogger):
            lg.finish(code)


def write_run_summary(cli: GLCanCLI, trainer: Any, run_path: Path) -> Optional[Path]:
    """summary.json of a run trained in this process (rank 0 writes it), and W&B's summary."""
    model, dm = cli.model, cli.datamodule
    wandb_dir = wandb_run_dir(trainer.loggers) if trainer.is_global_zero else None
    summary = build_summary(model, dm, epochs=trainer.current_epoch, global_step=trainer.global_step,
                            seed=cli.config.get("seed_everything"), precision=str(trainer.precision),
                            test_metrics=test_metrics(trainer), measured=measured_by_callbacks(trainer),
                            run_dir=str(run_path), wandb_dir=wandb_dir)
    if not trainer.is_global_zero:
        return None
    path = write_json(run_path / "summary.json", summary)
    log_summary_to_wandb(trainer.loggers, summary)
    print_summary_line(summary, path)
    return path


# ---------------------------------------------------------------- validate / test / predict
def eval_checkpoint(cli: GLCanCLI) -> Path:
    """The checkpoint ``validate``/``test``/``predict`` use: required, ``last`` allowed."""
    cfg = cli.config
    spec = cfg.get("ckpt_path")
    if not spec:
        raise ConfigError("this command needs --ckpt_path: a checkpoint file, a run directory, or 'last' "
                          "(the latest run of this config); untrained weights say nothing")
    if spec == "last":
        found = rundir.latest_checkpoint(_root(cfg), run_name(cli.model, cli.datamodule))
        if cfg.get("run_dir"):
            found = rundir.checkpoint_file(cfg.run_dir)
        if found is None:
            raise ConfigError(f"--ckpt_path last: no run of this config under {_root(cfg)}/{run_name(cli.model, cli.datamodule)}")
        return found
    return rundir.checkpoint_file(spec)


def _record_dir(ckpt: Path) -> Path:
    """Where an evaluation's record goes: the checkpoint's run directory, else beside it."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def evaluate(args: list[str], stage: str) -> int:
    """``train.py validate|test``: evaluate a checkpoint; write ``{stage}_{checkpoint}.json`` beside its run."""
    cli = GLCanCLI(args)
    ckpt = eval_checkpoint(cli)
    out_dir = _record_dir(ckpt)
    if stage == "test":
        cli.datamodule.evaluate_every_photo()  # super-resolution on a user's folder: every photograph, no split
    trainer = build_trainer(cli, out_dir, training=False, job_type=stage, csv_log=False)
    run = trainer.test if stage == "test" else trainer.validate
    metrics = run(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)[0]
    saved = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    record = {"checkpoint": str(ckpt), "epochs": int(saved.get("epoch", -1)) + 1, "global_step": saved.get("global_step"),
              **{k: float(v) for k, v in metrics.items()}}
    path = write_json(out_dir / f"{stage}_{ckpt.stem}.json", record)
    prefix, name = "test" if stage == "test" else "val", cli.model.task.metric.name
    value, bicubic = metrics.get(f"{prefix}/{name}"), metrics.get(f"{prefix}/bicubic_{name}")
    versus = f" (bicubic {bicubic:.4f})" if bicubic is not None else ""
    print(f"{stage}/{name} {value:.4f}{versus} (checkpoint after {record['epochs']} epoch(s), step {record['global_step']}) "
          f"| {path}" if value is not None else f"{stage}: {path}", flush=True)
    return 0


PREDICT_OPTIONS = {
    "--out": {"type": Optional[str], "default": None,
              "help": "predict: the CSV to write (default: predictions.csv in the checkpoint's run); "
                      "super-resolution: the folder for the upscaled PNGs (default: predictions/ there)."},
    "--images": {"type": Optional[str], "default": None,
                 "help": "predict: the folder of images (default: --data.root; a folder-trained model keeps "
                         "--data.root for its class names)."},
}


def predict(args: list[str]) -> int:
    """``train.py predict``: class and probability for every image under ``--images`` / ``--data.root``
    (super-resolution: every image upscaled, as PNGs under ``--out``)."""
    cli = GLCanCLI(args, extra=PREDICT_OPTIONS)
    ckpt = eval_checkpoint(cli)
    dm = cli.datamodule
    dm.predict_root = cli.config.get("images")
    sr = cli.model.task.kind == "super_resolution"
    out = Path(cli.config.get("out") or _record_dir(ckpt) / ("predictions" if sr else "predictions.csv"))
    trainer = build_trainer(cli, _record_dir(ckpt), training=False, job_type="predict", csv_log=False)
    trainer.loggers = []
    batches = trainer.predict(cli.model, datamodule=dm, ckpt_path=str(ckpt))
    if sr:
        return write_upscaled(batches or [], dm, out, cli.model.task.scale)
    probs = torch.cat(batches) if batches else torch.empty(0, cli.model.hparams.num_classes)
    p, idx = probs.max(dim=1)
    classes = dm.classes
    rows = [{"file": str(f), "class": classes[i] if classes else i, "index": i, "probability": round(pi, 6)}
            for f, pi, i in zip(dm.predict_files, p.tolist(), idx.tolist())]
    write_csv(out, rows, ["file", "class", "index", "probability"])
    print(f"predicted {len(rows)} image(s) under {dm.predict_root or dm.root}: {out}", flush=True)
    return 0


def write_upscaled(images: list[torch.Tensor], dm: Any, out: Path, scale: int) -> int:
    """Each upscaled image as an 8-bit PNG under ``out``, at the input's path relative to its folder."""
    root = Path(dm.predict_root or dm.root).expanduser()
    for image, source in zip(images, dm.predict_files):
        rel = Path(source).relative_to(root) if Path(source).is_relative_to(root) else Path(Path(source).name)
        pixels = Image.fromarray(image[0].mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy())
        atomic_write(out / rel.with_suffix(".png"), lambda f, im=pixels: im.save(f, format="PNG"), binary=True)
    print(f"upscaled {len(images)} image(s) under {root} x{scale}: {out}", flush=True)
    return 0


def check_data(args: list[str]) -> int:
    """``train.py check-data``: read every image once; list the broken ones (exit 1 if any)."""
    cli = GLCanCLI(args)
    dm = cli.datamodule
    count, broken = dm.check()
    if not count:
        print(f"{dm.name}: nothing to check (the data comes from a verified archive or is generated)")
        return 0
    for path, why in broken:
        print(f"broken: {path}: {why}")
    print(f"{dm.name} under {dm.root}: {count} image(s) read, {len(broken)} broken", flush=True)
    return 1 if broken else 0
