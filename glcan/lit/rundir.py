"""Where a run lives, what it resumes, and who may write there.

A fresh run gets ``{root}/{name}/version_N`` (the next free N) or ``--run_dir``. A resumed run
continues *in place*: ``--ckpt_path last`` picks the latest version of the same experiment
that has a ``last.ckpt`` (or ``--run_dir``'s), and the run keeps writing into that directory:
the CSV log continues and W&B resumes the same run id (kept in ``run.json``). A directory that
already holds a run is never reused silently: resume it, or choose another.

While a run writes into a directory it holds an exclusive lock on ``run.lock``; a second run
into the same directory is refused at once, and the lock dies with its process (``kill -9``
included), so a stale lock never blocks a resume.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional


from glcan.io import write_json
from glcan.lit.checks import ConfigError
from glcan.lit.loggers import log_summary

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
LAST = "last.ckpt"


@dataclass
class RunDir:
    """One run's directory and how it starts."""

    path: Path
    resume_from: Optional[Path] = None  # the checkpoint a resumed run continues from
    record: dict[str, Any] = field(default_factory=dict)  # run.json
    notice: Optional[str] = None  # one line worth telling the user (e.g. nothing to resume)
    secondary: bool = False  # a rank > 0: rank 0 owns the directory and its lock
    _lock: Optional[IO] = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def wandb_id(self) -> str:
        return self.record["wandb_id"]

    def acquire(self) -> "RunDir":
        """Create the directory and take its lock; a second run into it gets a one-line error."""
        if self.secondary:
            return self
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            f = open(self.path / LOCK_FILE, "a+")
        except OSError as e:
            raise ConfigError(f"cannot write the run directory {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ConfigError(f"{self.path} is in use by another run (pid {holder}); wait for it to finish, "
                              "or give this run another --run_dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f
        self.record.setdefault("created", time.strftime("%Y-%m-%d %H:%M:%S"))
        self.record["resumed"] = self.record.get("resumed", 0) + (1 if self.resume_from else 0)
        write_json(self.path / RUN_FILE, self.record)
        return self

    def release(self) -> None:
        if not self.secondary:
            os.environ.pop("GLCAN_RUN_DIR", None)
            os.environ.pop("GLCAN_RESUME_FROM", None)
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def resume_command(self, args: list[str]) -> str:
        """The exact command that resumes this run, from the arguments that started it (inside a
        comparison: the comparison's own, which it passes on in ``GLCAN_RESUME_COMMAND``)."""
        if os.environ.get("GLCAN_RESUME_COMMAND"):
            return os.environ["GLCAN_RESUME_COMMAND"].splitlines()[-1]
        keep = drop_options(args, ("--ckpt_path", "--run_dir"))
        return shlex.join(["python", "train.py", *keep, "--run_dir", str(self.path), "--ckpt_path", "last"])

    def write_summary(self, summary: dict[str, Any], loggers: list) -> Path:
        """summary.json, atomically; a figure this segment could not measure (a resumed run that
        had nothing left to train) keeps the value an earlier segment measured. Also W&B's summary."""
        path = self.path / "summary.json"
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = {}
        for key, value in before.items():
            if summary.get(key) is None and value is not None:
                summary[key] = value
        summary["resumed"] = self.record.get("resumed", 0)
        write_json(path, summary)
        log_summary(loggers, summary)
        return path


def drop_options(argv: list[str], with_value: tuple[str, ...], flags: tuple[str, ...] = ()) -> list[str]:
    """``argv`` without the options named: ``--opt value`` and ``--opt=value`` for those in
    ``with_value``, the bare ``flags``."""
    out, skip = [], False
    for a in argv:
        if not (skip or a.partition("=")[0] in with_value + flags):
            out.append(a)
        skip = not skip and a in with_value  # its value follows
    return out


def holder(path: str | Path) -> Optional[str]:
    """The pid of the live process that holds ``path``'s run lock, or None when no run is in it.

    The same non-blocking lock :meth:`RunDir.acquire` takes, taken and dropped at once: a run
    killed with ``kill -9`` holds nothing, so a stale lock file never counts."""
    lock = Path(path) / LOCK_FILE
    if not lock.is_file():
        return None
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "?"
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _holds_a_run(path: Path) -> bool:
    return (path / "checkpoints").is_dir() and any((path / "checkpoints").iterdir()) or (path / "summary.json").exists()


def _versions(base: Path) -> list[Path]:
    found = [(int(p.name[8:]), p) for p in base.glob("version_*") if p.name[8:].isdigit() and p.is_dir()]
    return [p for _, p in sorted(found)]


def _next_version(base: Path) -> Path:
    versions = _versions(base)
    return base / f"version_{int(versions[-1].name[8:]) + 1 if versions else 0}"


def for_training(root: str, name: str, run_dir: Optional[str], ckpt_path: Optional[str]) -> RunDir:
    """The directory of a ``fit`` and the checkpoint it resumes from.

    Args:
        root: ``trainer.default_root_dir``.
        name: the experiment's name (``mnist5k_resnet20_local_k4_glcan``).
        run_dir: ``--run_dir`` or None.
        ckpt_path: ``--ckpt_path``: None (a fresh run), ``last`` or a checkpoint file.
    """
    if run_dir:
        path = Path(run_dir)
        if ckpt_path == "last":
            last = path / "checkpoints" / LAST
            if last.is_file():
                return RunDir(path, checkpoint_file(last), _read_record(path))
            if _holds_a_run(path):
                raise ConfigError(f"{path} has no checkpoints/{LAST} to resume; remove it or choose another --run_dir")
            return RunDir(path, notice=f"no checkpoint to resume in {path}: starting a new run there")
        if ckpt_path:
            return RunDir(path, checkpoint_file(ckpt_path), _read_record(path))
        if _holds_a_run(path):
            raise ConfigError(f"{path} already holds a run: add --ckpt_path last to resume it, or choose another --run_dir")
        return RunDir(path)
    base = Path(root) / name
    if ckpt_path == "last":
        for version in reversed(_versions(base)):
            last = version / "checkpoints" / LAST
            if last.is_file():
                return RunDir(version, checkpoint_file(last), _read_record(version))
        path = _next_version(base)
        return RunDir(path, notice=f"no checkpoint to resume under {base}: starting a new run in {path}")
    if ckpt_path:
        ckpt = checkpoint_file(ckpt_path)
        owner = ckpt.parent.parent
        if ckpt.parent.name == "checkpoints" and (owner / RUN_FILE).is_file():
            return RunDir(owner, ckpt, _read_record(owner))  # a checkpoint of a run: continue that run
        return RunDir(_next_version(base), ckpt)
    return RunDir(_next_version(base))


def checkpoint_file(ckpt_path: str | Path) -> Path:
    """``ckpt_path`` as an intact Lightning checkpoint file (a run directory means its last.ckpt),
    or a one-line error naming it, and naming the newest intact checkpoint beside a damaged one."""
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"--ckpt_path {ckpt_path}: no such file")
    if path.is_dir():
        last = path / "checkpoints" / LAST
        if not last.is_file():
            raise ConfigError(f"--ckpt_path {ckpt_path} is a directory without checkpoints/{LAST}")
        path = last
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint
        raise ConfigError(f"--ckpt_path {path} is not a PyTorch checkpoint (torch.save archive)")
    if not _intact(path):
        others = [p for p in sorted(path.parent.glob("epoch*.ckpt"), reverse=True) if p != path and _intact(p)]
        hint = f"; the newest intact one beside it is {others[0]}: use --ckpt_path {others[0]}" if others else ""
        raise ConfigError(f"checkpoint {path} is damaged (its archive fails its checksums){hint}")
    return path


def _intact(path: Path) -> bool:
    """Whether every member of a checkpoint's zip archive reads back with its CRC."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        return False


def latest_checkpoint(root: str, name: str) -> Optional[Path]:
    """The latest ``last.ckpt`` of an experiment (what ``test --ckpt_path last`` evaluates)."""
    for version in reversed(_versions(Path(root) / name)):
        last = version / "checkpoints" / LAST
        if last.is_file():
            return last
    return None


# ---------------------------------------------------------------- from a parsed config
def backbone_label(spec: Any, name: str) -> str:
    """How a run directory names its network: the registry name, or for your own network its
    factory or class and a short hash of how it was made, so two custom networks never share a
    run (nor resume each other's)."""
    if isinstance(spec, str) and "." not in spec:
        return spec
    if isinstance(spec, dict) or hasattr(spec, "class_path"):
        items = vars(spec) if hasattr(spec, "class_path") else spec
        path, init = str(items.get("class_path")), items.get("init_args")
        text = json.dumps([path, vars(init) if hasattr(init, "__dict__") else init], sort_keys=True, default=str)
        base = path.rsplit(".", 1)[-1]
    elif isinstance(spec, str):
        text, base = spec, spec.rsplit(".", 1)[-1]
    else:
        modules = spec if isinstance(spec, (list, tuple)) else [spec]
        text, base = "".join(repr(m) for m in modules), name
    return f"{base}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def experiment_name(cfg: Any, model: Any, datamodule: Any) -> str:
    """``mnist5k_resnet20_local_k4_glcan``: what was trained, readable in a directory listing."""
    h = model.hparams
    name = f"{getattr(datamodule, 'name', 'data')}_{backbone_label(cfg.model.backbone, model.backbone_name)}_{h.method}"
    return name + (f"_k{model.net.num_blocks}_{h.head}" if model.is_local else "")


def _root(cfg: Any) -> str:
    return cfg.trainer.get("default_root_dir") or "runs"


def place(cfg: Any, model: Any, datamodule: Any) -> RunDir:
    """Where this fit writes and what it resumes; ranks > 0 follow rank 0's choice (the DDP
    launcher and torchrun pass it on in the environment)."""
    if "WORLD_SIZE" in os.environ and int(os.environ.get("RANK", "0")) > 0 or \
            os.environ.get("GLCAN_RUN_DIR") is not None and os.environ.get("LOCAL_RANK", "0") != "0":
        resume = os.environ.get("GLCAN_RESUME_FROM") or None
        path = os.environ.get("GLCAN_RUN_DIR") or cfg.get("run_dir") or _root(cfg)
        return RunDir(Path(path), Path(resume) if resume else None, secondary=True)
    run = for_training(_root(cfg), experiment_name(cfg, model, datamodule), cfg.get("run_dir"), cfg.get("ckpt_path"))
    run.record.setdefault("wandb_id", uuid.uuid4().hex[:12])  # W&B's run id: a resumed run continues it
    if run.notice:
        print(f"note: {run.notice}", flush=True)
    os.environ["GLCAN_RUN_DIR"], os.environ["GLCAN_RESUME_FROM"] = str(run.path), str(run.resume_from or "")
    return run


def eval_checkpoint(cfg: Any, model: Any, datamodule: Any) -> Path:
    """The checkpoint ``validate``/``test``/``predict`` use: required, ``last`` allowed."""
    spec = cfg.get("ckpt_path")
    if not spec:
        raise ConfigError("this command needs --ckpt_path: a checkpoint file, a run directory, or 'last' "
                          "(the latest run of this config); untrained weights say nothing")
    if spec != "last":
        return checkpoint_file(spec)
    if cfg.get("run_dir"):
        return checkpoint_file(cfg.run_dir)
    name = experiment_name(cfg, model, datamodule)
    found = latest_checkpoint(_root(cfg), name)
    if found is None:
        raise ConfigError(f"--ckpt_path last: no run of this config under {_root(cfg)}/{name}")
    return checkpoint_file(found)


def record_dir(ckpt: Path) -> Path:
    """Where an evaluation's record goes: the checkpoint's run directory, else beside it."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def run_config_of(ckpt: Path) -> Optional[Path]:
    """The resolved config.yaml of the run a checkpoint belongs to, if it has one."""
    path = record_dir(ckpt) / "config.yaml"
    return path if path.is_file() else None
