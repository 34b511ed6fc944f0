"""Help that fits a screen, and input errors in one line with a "did you mean".

Both read the parser LightningCLI builds (jsonargparse: every option with its type hint and its
docstring text), so they describe exactly what a command accepts. LightningCLI's own ``--help``
prints every Trainer option and, for ``model.backbone``, every ``nn.Module`` it can import: over
a thousand lines. Each command here gets one screen: its own options and the sections it reads,
each key with the first sentence of its text; ``--help SECTION`` prints a section in full.
"""

from __future__ import annotations

import difflib
import re
import shutil
import textwrap
import typing
from typing import Any, Iterable, Optional, Sequence

from jsonargparse import ArgumentParser

from glcan.cli.cli import GLCanCLI
from glcan.lit.loggers import WandbOptions

# Each command's flags beside its sections: LightningCLI's own in glcan's words, glcan's (None)
# in the parser's.
CONFIG = "a YAML config, repeatable (later files override); a shipped one by its name from anywhere"
EVALUATE = {"ckpt_path": "PATH|DIR|last: the checkpoint (a run directory means its last.ckpt)",
            "config": "default: the config.yaml of the checkpoint's run"}
FLAGS: dict[str, dict[str, Optional[str]]] = {
    "fit": {"config": CONFIG, "ckpt_path": "last|PATH: resume the latest run of this config (or --run_dir's), or a "
            "checkpoint", "run_dir": None, "seed_everything": "the run's seed: initialisation and data order "
            "(default 0; data.seed fixes the split)"},
    "validate": EVALUATE, "test": EVALUATE, "predict": {**EVALUATE, "images": None, "out": None},
    "memory": {"config": CONFIG + " (any key that trains also predicts)", "budget": None, "json": None},
    "check-data": {"config": CONFIG}}
SECTIONS = {"fit": ("model", "data", "trainer", "logger", "parallel"), "memory": ("model", "data", "trainer")}
# The keys one screen describes; the others are named, and `--help SECTION` describes them all.
FIRST = {"model": ("backbone", "method", "num_blocks", "split", "head", "head_kwargs", "optimizer", "memory_budget"),
         "data": ("name", "root", "batch_size", "image_size", "seed"),
         "trainer": ("max_epochs", "max_steps", "accelerator", "devices", "precision", "default_root_dir",
                     "limit_train_batches", "limit_val_batches", "limit_test_batches", "enable_progress_bar")}


def parser() -> ArgumentParser:
    """The options every command reads (``fit``'s), from no arguments."""
    return GLCanCLI([], run=False, instantiate=False).parser


def options(p: ArgumentParser, section: str) -> dict[str, tuple[Any, str]]:
    """``{key: (type hint, text)}`` of one section as the parser reads it; keys linked from the
    data module are not the user's to set and are left out."""
    if section == "logger":  # --logger is true, false or WandbOptions' keys
        p = ArgumentParser()
        p.add_class_arguments(WandbOptions, "logger")
    return {a.dest.partition(".")[2]: (a._typehint, " ".join((a.help or "").split()).replace("``", ""))
            for a in p._actions if a.dest.startswith(f"{section}.") and a.dest.count(".") == 1
            and hasattr(a, "_typehint")}


def known(p: ArgumentParser) -> set[str]:
    """Every key the commands take (what a typo is matched against); ``--model CONFIG`` and the
    like load a section: the keys below them are what a user names."""
    return {a.dest for a in p._actions} - {"model", "data", "trainer"} | {f"logger.{k}" for k in options(p, "logger")}


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 110)


def _first_sentence(text: str) -> str:
    m = re.match(r"(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", text)  # not "e.g." or "i.e."
    return (m.group(1) if m else text).rstrip(".")


def _choices(annotation: Any) -> list[str]:
    """The values a Literal type hint (or a Union holding Literals) allows."""
    parts = [annotation] if typing.get_origin(annotation) is typing.Literal else typing.get_args(annotation)
    return [str(v) for a in parts if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]


def _describe(annotation: Any, text: str) -> str:
    """The first sentence of a key's text, led by its choices when it has a fixed few."""
    first = _first_sentence(text)
    choices = _choices(annotation)
    return f"{' | '.join(choices)}: {first}" if choices and not all(c in first for c in choices) else first


def _wrap(left: str, text: str, pad: int) -> list[str]:
    return textwrap.wrap(text, _width(), initial_indent=f"  {left:<{pad}}", subsequent_indent=" " * (pad + 2)) \
        or [f"  {left}"]


def command_help(command: str, summary: str, rest: list[str]) -> str:
    """One screen for ``command`` (``--help SECTION``: that section in full)."""
    p, sections = parser(), SECTIONS.get(command, ("data",))
    i = next(i for i, a in enumerate(rest) if a in ("-h", "--help"))
    section = rest[i + 1] if i + 1 < len(rest) and not rest[i + 1].startswith("-") else None
    if section:
        if section not in sections:
            raise ValueError(f"`{command} --help` takes a section: {', '.join(sections)}; got {section!r}")
        lines = [f"--{section}.KEY options of `train.py {command}`:"]
        for k, (_, text) in options(p, section).items():
            lines += _wrap(k, text, 22)
        return "\n".join(lines)
    lines = [f"usage: python train.py {command} [--config FILE ...] [--SECTION.KEY VALUE ...]", "", summary, ""]
    for flag, text in FLAGS[command].items():
        lines += _wrap(f"--{flag}", text or next(a.help for a in p._actions if a.dest == flag), 20)
    for s in sections:
        opts = options(p, s)
        if s in FIRST and s != "trainer":
            lines += ["", f"{s} (--{s}.KEY):", *[ln for k in FIRST[s] for ln in _wrap(k, _describe(*opts[k]), 20)]]
            lines += textwrap.wrap("more: " + ", ".join(k for k in opts if k not in FIRST[s]), _width(),
                                   initial_indent="  ", subsequent_indent="    ")
        else:  # named only
            names = ", ".join(FIRST.get(s, opts)) + (", ..." if s in FIRST else "")
            lines += [""] * (s == "trainer") + textwrap.wrap(f"{s} (--{s}.KEY): {names}", _width(), subsequent_indent="  ")
    if command in ("validate", "test", "predict"):
        lines += ["", "The model comes from the checkpoint; data options override its run's config."]
    lines += ["", f"`{command} --help SECTION`: a section in full ({', '.join(sections)})"]
    return "\n".join(lines)


# ---------------------------------------------------------------- input errors
def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def first_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# How a type in jsonargparse's message reads in an error line.
WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list", "dict": "a mapping"}


def parse_error_line(error: BaseException, argv: Sequence[str] = (), p: Optional[ArgumentParser] = None) -> str:
    """A jsonargparse error as one line that names the option (and the config files, when the
    command line does not set it), with a suggestion."""
    p = p or parser()
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    m = re.search(r"[Uu]nrecognized arguments: (.+)", text) or re.search(r"does not accept (?:nested )?(?:key|option) '?([\w.]+)", text) \
        or re.search(r'^Parser key "(\w+)":.*Given value: NestedArg\(key=\'(\w+)\'', text, re.S)  # --logger.mde
    if m:
        bad = ".".join(m.groups()) if m.lastindex == 2 else m.group(1).split()[0]
        group = re.search(r"Group '(\w+)'", text)  # a key of a section, from a config file
        if not bad.startswith("--") and "." not in bad and not group:
            return f"unexpected argument {bad!r}"
        key = bad.lstrip("-").split("=", 1)[0]
        key = f"{group.group(1)}.{key}" if group and "." not in key else key
        configs = [b for a, b in zip(argv, argv[1:]) if a == "--config"]
        if configs and not any(a.lstrip("-").partition("=")[0] == key for a in argv):
            return f"{', '.join(configs)}: {key} is not an option{did_you_mean(key, known(p))}"
        return f"unknown option --{key}{did_you_mean(key, known(p)).replace('mean ', 'mean --')}"
    m = re.search(r'key "([\w.]+)".*Option \'(\w+)\' is not accepted.*class_path=\'([\w.]+)\'', text, re.S)
    if m:  # --model.optimizer.init_args.lrr
        return f"--{m.group(1)}.init_args.{m.group(2)}: {m.group(3)} takes no option {m.group(2)!r}"
    keys = re.findall(r'Parser key "(?:(?:fit|validate|test|predict)\.)?([\w.]+)"', text)
    given = re.search(r"(?:Given|Got) value: (.+?)(?:\. Got value: .*)?$", text, re.M)
    if keys and given:  # a bad value; the innermost key's types say what was expected
        key, value = ".init_args.".join(keys[:2]), given.group(1).strip("'\"")
        last = text[text.rfind("Parser key"):].split("Given value type")[0]
        choices = list(dict.fromkeys(v.strip(" '\"") for g in re.findall(r"Literal\[([^]]*)\]", last) for v in g.split(",")))
        found = re.findall(r"<class '(?:[\w.]+\.)?(\w+)'>|\b(list)\[", last)
        kinds = list(dict.fromkeys(WORDS.get(k, k) for pair in found for k in pair if k and k != "NoneType"))
        if choices and not kinds:
            return f"--{key}: {value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}"
        return f"--{key}: expected {' or '.join([*(repr(c) for c in choices), *kinds]) or 'another value'}, got {value!r}"
    m = re.search(r"Problem with given class_path '([^']+)'", text)
    if m:
        return f"cannot use class_path {m.group(1)!r}: {lines[-1] if lines else ''}"
    return lines[0] if lines else type(error).__name__
