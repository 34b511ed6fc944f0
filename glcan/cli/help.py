"""Help that fits a screen, and input errors in one line with a "did you mean".

LightningCLI's own ``--help`` prints every Trainer option and, for ``model.backbone``, every
``nn.Module`` it can import: over a thousand lines. Each command here gets one screen: its own
options and the sections it reads, each key with the first sentence of its docstring (wrapped,
never cut); ``--help SECTION`` prints a section in full. The text comes from the classes'
signatures and docstrings (what LightningCLI reads too), so help needs no parser and is quick.
"""

from __future__ import annotations

import difflib
import inspect
import re
import shutil
import textwrap
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import docstring_parser
import yaml

from glcan.cli.cli import CONFIGS
from glcan.lit.rundir import checkpoint_file, run_config_of
from glcan.data import GLCanDataModule
from glcan.lit import GLCanModule
from glcan.lit.loggers import WandbOptions
from glcan.parallel.options import ParallelOptions

# The Trainer options a glcan user reaches for; `fit --help trainer` lists them all.
TRAINER_KEYS = ("max_epochs", "max_steps", "accelerator", "devices", "precision", "default_root_dir",
                "limit_train_batches", "limit_val_batches", "limit_test_batches", "enable_progress_bar")
OWN: dict[str, dict[str, str]] = {
    "fit": {"--config FILE": "a YAML config; repeat to compose (later files override earlier ones); a shipped "
                             "config is found by its name from any directory",
            "--ckpt_path last|PATH": "resume the latest run of this config (or --run_dir's), or a checkpoint",
            "--run_dir DIR": "write the run exactly here", "--seed_everything N": "the run's seed: initialisation "
                             "and data order (default 0; data.seed fixes the split)"},
    "validate": {"--ckpt_path PATH|DIR|last": "the checkpoint (a run directory means its last.ckpt)",
                 "--config FILE": "default: the config.yaml of the checkpoint's run"},
    "memory": {"--config FILE": "a YAML config (any key that trains also predicts)",
               "--budget SIZE": "a GPU memory budget (4GiB, 12GB, bytes): which methods fit it, which to use "
                                "(--model.memory_policy accuracy|speed)", "--json": "print the report as one JSON object"},
    "check-data": {"--config FILE": "a YAML config"},
}
OWN["test"] = OWN["validate"]
OWN["predict"] = {**OWN["validate"], "--images DIR": "the folder of images to predict (default: data.root)",
                  "--out PATH": "the CSV to write (default: predictions.csv in the checkpoint's run); super-resolution: "
                                "the folder for the PNGs"}
SECTIONS: dict[str, tuple[str, ...]] = {"fit": ("model", "data", "trainer", "logger", "parallel"),
                                        "validate": ("data",), "test": ("data",), "predict": ("data",),
                                        "memory": ("model", "data", "trainer"), "check-data": ("data",)}
CLASSES = {"model": GLCanModule, "data": GLCanDataModule, "logger": WandbOptions, "parallel": ParallelOptions}


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 110)


def _trainer_params() -> dict[str, Any]:
    from lightning.pytorch import Trainer

    return {k: p for k, p in inspect.signature(Trainer.__init__).parameters.items() if k != "self"}


def section_options(section: str) -> dict[str, tuple[Any, str]]:
    """``{key: (annotation, description)}`` of one section, from the class's signature and docstring."""
    if section == "trainer":
        return {k: (p.annotation, "") for k, p in _trainer_params().items()}
    cls = CLASSES[section]
    init = cls.__init__
    docs = {p.arg_name: p.description or "" for d in (init.__doc__, cls.__doc__) if d
            for p in docstring_parser.parse(d).params}
    hints = typing.get_type_hints(init)
    params = [p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs")]
    return {k: (hints.get(k), " ".join(docs.get(k, "").split()).replace("``", "")) for k in params}


def known_options() -> set[str]:
    """Every ``--key`` the commands take (what a typo is matched against)."""
    keys = {f"{s}.{k}" for s in ("model", "data", "trainer", "logger", "parallel") for k in section_options(s)}
    return keys | {"config", "ckpt_path", "run_dir", "seed_everything", "logger", "parallel", "images", "out",
                   "budget", "json"}


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)  # not "e.g." or "i.e."
    return (m.group(1) if m else text).rstrip(".")


def _choices(annotation: Any) -> list[str]:
    """The values a Literal type hint (or a Union holding Literals) allows."""
    parts = [annotation] if typing.get_origin(annotation) is typing.Literal else typing.get_args(annotation)
    return [str(v) for a in parts if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]


def _describe(annotation: Any, text: str) -> str:
    """The first sentence of a key's docstring, led by its choices when it has a fixed few."""
    first = _first_sentence(text)
    choices = _choices(annotation)
    return f"{' | '.join(choices)}: {first}" if choices and not all(c in first for c in choices) else first


def _wrap(left: str, text: str, pad: int) -> list[str]:
    return textwrap.wrap(text, _width(), initial_indent=f"  {left:<{pad}}", subsequent_indent=" " * (pad + 2)) \
        or [f"  {left}"]


def command_help(command: str, summary: str, rest: list[str]) -> str:
    """One screen for ``command`` (``--help SECTION``: that section in full)."""
    if command == "compare":
        from glcan.cli.compare import HELP

        return HELP
    i = next(i for i, a in enumerate(rest) if a in ("-h", "--help"))
    section = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("-") else None
    sections = SECTIONS[command]
    if section:
        if section not in sections:
            raise ValueError(f"`{command} --help` takes a section: {', '.join(sections)}; got {section!r}")
        opts = section_options(section)
        lines = [f"--{section}.KEY options of `train.py {command}`:"]
        for k, (_, text) in opts.items():
            lines += _wrap(k, text or "(see Lightning's Trainer documentation)", 22)
        return "\n".join(lines)
    lines = [f"usage: python train.py {command} [--config FILE ...] [--SECTION.KEY VALUE ...]", "", summary, ""]
    for flag, text in OWN.get(command, OWN["fit"]).items():
        lines += _wrap(flag, text, 26)
    for s in ("model", "data"):
        if s in sections:
            options = {k: v for k, v in section_options(s).items() if s != "model" or k not in LINKED}
            lines += ["", f"{s} (--{s}.KEY):"]
            lines += [ln for k, (hint, text) in options.items() if k in FIRST[s]
                      for ln in _wrap(k, _describe(hint, text), 20)]
            lines += textwrap.wrap("more: " + ", ".join(k for k in options if k not in FIRST[s]), _width(),
                                   initial_indent="  ", subsequent_indent="    ")
    if "trainer" in sections:
        lines += [""] + textwrap.wrap("trainer (--trainer.KEY, Lightning's Trainer): " + ", ".join(TRAINER_KEYS)
                                      + ", ...", _width(), subsequent_indent="  ")
    for s in ("logger", "parallel"):
        if s in sections:
            lines += textwrap.wrap(f"{s} (--{s}.KEY): " + ", ".join(section_options(s)), _width(), subsequent_indent="  ")
    if command in ("validate", "test", "predict"):
        lines += ["", "The model comes from the checkpoint; data options override its run's config."]
    lines += ["", f"`{command} --help SECTION`: a section in full ({', '.join(sections)})"]
    return "\n".join(lines)


# The keys one screen describes; the others are named, and `--help SECTION` describes them all.
FIRST = {"model": ("backbone", "method", "num_blocks", "split", "head", "head_kwargs", "optimizer", "memory_budget"),
         "data": ("name", "root", "batch_size", "image_size", "seed", "download")}
LINKED = ("num_classes", "image_shape", "task", "batch_size", "precision", "boundaries")  # set by the data / planner


# ---------------------------------------------------------------- input errors
def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def first_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def misconfiguration_line(e: BaseException) -> str:
    """Lightning's own configuration errors; its long DDP complaint points to glcan's switch."""
    text = first_line(e)
    if "parameters that were not used" in str(e) or "find_unused_parameters" in str(e):
        return "local learning's per-block backward needs glcan's DDP setting: use --parallel.mode ddp " \
               "--parallel.workers N instead of --trainer.strategy ddp"
    return text


def _expected(annotation: Any) -> str:
    """A type hint in words: ``an integer or 'auto'``."""
    args = (annotation,) if typing.get_origin(annotation) is typing.Literal else typing.get_args(annotation) or (annotation,)
    words = []
    for a in args:
        if a is type(None):
            continue
        if typing.get_origin(a) is typing.Literal:
            words.append(" or ".join(repr(v) for v in typing.get_args(a)))
        else:
            words.append({int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
                a, getattr(a, "__name__", str(a)).replace("list", "a list")))
    return " or ".join(words) or "a valid value"


def parse_error_line(error: BaseException, command: str = "fit") -> str:
    """A jsonargparse error as one line that names the option, with a suggestion."""
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    known = known_options()
    m = re.search(r"[Uu]nrecognized arguments: (.+)", text) or re.search(r"does not accept (?:nested )?key '?([\w.]+)", text)
    if m:
        bad = m.group(1).split()[0]
        if not bad.startswith("--") and "." not in bad:
            return f"unexpected argument {bad!r}"
        key = bad.lstrip("-").split("=", 1)[0]
        group = re.search(r"Group '(\w+)'", text)
        key = f"{group.group(1)}.{key}" if group and "." not in key else key
        return f"unknown option --{key}{did_you_mean(key, known).replace('mean ', 'mean --')}"
    m = re.search(r'[Kk]ey "([^"]+)"', text)
    if m:
        key = m.group(1).split(".", 1)[1] if m.group(1).split(".", 1)[0] in ("fit", "validate", "test", "predict") \
            else m.group(1)
        given = re.search(r"(?:Given|Got) value: (.+)", text)
        value = given.group(1).strip().strip("'\"") if given else None
        section, _, name = key.partition(".")
        annotation = section_options(section).get(name, (None, ""))[0] if section in CLASSES else None
        if annotation is not None and value is not None:
            choices = _choices(annotation)
            hint = did_you_mean(value, choices) if choices else ""
            if typing.get_origin(annotation) is typing.Literal:
                return f"--{key}: {value!r} is not one of {', '.join(choices)}{hint}"
            return f"--{key}: expected {_expected(annotation)}, got {value!r}{hint}"
        detail = next((ln for ln in lines[1:] if not ln.startswith(("Subtypes", "Errors", "Given value type"))), "")
        return f"--{key}: {re.sub(r'Got value: .*', '', detail).lstrip('- ').strip() or 'invalid value'}"
    m = re.search(r"Problem with given class_path '([^']+)'", text)
    if m:
        return f"cannot use class_path {m.group(1)!r}: {lines[-1] if lines else ''}"
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------- config files
def resolve_config_files(argv: list[str]) -> list[str]:
    """``--config`` files as paths that exist: as given, else a shipped config of that name
    (so ``--config mnist5k_resnet20_glcan_k4.yaml`` works from any directory); each is read
    once here so that a YAML error or an unknown key names its file and line."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" or a.startswith("--config="):
            value = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a.partition("=")[2]
            path = _find_config(value)
            _check_yaml(path, set())
            out += ["--config", str(path)]
            i += 2 if a == "--config" else 1
            continue
        out.append(a)
        i += 1
    return out


def _find_config(value: str) -> Path:
    given = Path(value).expanduser()
    shipped = CONFIGS / (given.relative_to("configs") if given.parts[:1] == ("configs",) else given)
    for path in (given, shipped):
        if path.is_file():
            return path.resolve()
    raise ValueError(f"--config {value}: no such file (looked in {Path.cwd()} and in the shipped configs, {CONFIGS})")


def _check_yaml(path: Path, seen: set) -> None:
    if path in seen or not path.is_file():
        return
    seen.add(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}:{where}: YAML syntax error: {problem}") from None
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections (model:, data:, trainer:, ...)")
    for section in ("model", "data"):
        if isinstance(data.get(section), dict):
            names = section_options(section)
            for key in data[section]:
                if key not in names:
                    raise ValueError(f"{path}: {section}.{key} is not an option{did_you_mean(key, names)}")
    for value in _strings(data):  # section files a config refers to (data: data/mnist5k.yaml)
        if value.endswith((".yaml", ".yml")):
            _check_yaml(path.parent / value, seen)


def _strings(data: Any) -> Iterable[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for v in data.values():
            yield from _strings(v)


def with_run_config(argv: list[str]) -> list[str]:
    """``validate``/``test``/``predict`` with a checkpoint and no ``--config``: start from the
    config of the checkpoint's run (the checkpoint describes its model; the run's config.yaml
    also says which data it was trained on), so no data option has to be repeated."""
    if argv[0] == "fit" or any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    spec = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--ckpt_path"), None)
    if spec in (None, "last") or not Path(spec).exists():
        return argv
    config = run_config_of(checkpoint_file(spec))
    return [argv[0], "--config", str(config), *argv[1:]] if config else argv
