"""Help that fits a screen, and parse errors in one line with a "did you mean".

LightningCLI's own ``--help`` prints every Trainer option and, for a ``Union[str, nn.Module]``
argument, every ``nn.Module`` subclass it can import: over a thousand lines. Here each command
gets one screen: its own options, the model and data keys with the first sentence of their
docstrings, and one line per other section; ``--help SECTION`` prints a section in full.
"""

from __future__ import annotations

import difflib
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import yaml

from glcan.backbones import list_backbones
from glcan.heads import list_heads

SECTIONS = ("model", "data", "trainer", "logger", "parallel")
# The Trainer options a glcan user reaches for; `fit --help trainer` lists them all.
TRAINER_KEYS = ("max_epochs", "max_steps", "accelerator", "devices", "precision", "default_root_dir",
                "limit_train_batches", "limit_val_batches", "limit_test_batches", "enable_progress_bar")


def _width() -> int:
    return min(shutil.get_terminal_size((100, 24)).columns, 110)


def _first_sentence(text: Optional[str]) -> str:
    text = " ".join((text or "").split()).replace("``", "")
    text = re.sub(r"\(type: .*", "", text).strip()
    m = re.match(r"(.+?[^.]{3}\.)(\s+[A-Z(]|$)", text)  # not "e.g." or "i.e."
    return (m.group(1) if m else text).rstrip(".")


def _choices(action: Any) -> Optional[list[str]]:
    """The values a Literal-typed option takes (jsonargparse keeps the type, not argparse choices)."""
    if getattr(action, "choices", None):
        return [str(c) for c in action.choices]
    hint = getattr(action, "_typehint", None)
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    if getattr(hint, "__origin__", None) is Literal:
        return [str(a) for a in hint.__args__]
    literals = [a for a in args if getattr(a, "__origin__", None) is Literal]
    if literals and all(getattr(a, "__origin__", None) is Literal for a in args):
        return [str(v) for a in literals for v in a.__args__]
    return None


def _line(left: str, text: str, indent: int = 2, pad: int = 22) -> str:
    line = f"{' ' * indent}{left:<{pad}}{text}"
    width = _width()
    return line if len(line) <= width else line[: width - 4].rstrip() + " ..."


def options(parser: Any) -> dict[str, Any]:
    """Every ``--key`` the parser takes (nested class arguments flattened), with its action."""
    out: dict[str, Any] = {}

    def walk(p: Any) -> None:
        for action in p._actions:
            for s in action.option_strings:
                if s.startswith("--"):
                    out[s[2:]] = action
            sub = getattr(action, "_parser", None)
            if sub is not None and sub is not p:
                walk(sub)
    walk(parser)
    return out


def _describe(key: str, action: Any) -> str:
    short = key.split(".", 1)[1]
    if key == "model.backbone":
        return f"{', '.join(list_backbones())}, or your own units (docs/guide.md)"
    if key == "model.head":
        return f"{' | '.join(list_heads())}: the auxiliary head of every block"
    choices = _choices(action)
    text = _first_sentence(action.help)
    if choices and not all(c in text for c in choices):
        text = f"{' | '.join(choices)}: {text}"
    return text or short


def _rows(keys: Iterable[str], opts: dict[str, Any], full: bool = False) -> list[str]:
    width = _width()
    lines = []
    for key in keys:
        if key not in opts:
            continue
        short = key.split(".", 1)[1]
        if full:
            text = " ".join((opts[key].help or "").replace("``", "").split())
            lines += textwrap.wrap(text, width, initial_indent=f"  {short:<20}", subsequent_indent=" " * 22) or [f"  {short}"]
        elif key == "model.backbone":  # the registry's names, all of them
            lines += textwrap.wrap(_describe(key, opts[key]), width, initial_indent=f"  {short:<20}",
                                   subsequent_indent=" " * 22)
        else:
            lines.append(_line(short, _describe(key, opts[key])))
    return lines


def _section_keys(opts: dict[str, Any], section: str) -> list[str]:
    return [k for k in opts if k.startswith(section + ".") and k.count(".") == 1 and not k.endswith((".help", "+"))]


def command_help(command: str, summary: str, parser: Any, section: Optional[str] = None,
                 own: Optional[dict[str, str]] = None) -> str:
    """One screen for ``command`` (or one section in full)."""
    opts = options(parser)
    if section:
        if section not in SECTIONS:
            raise ValueError(f"--help takes a section: {', '.join(SECTIONS)}; got {section!r}")
        return "\n".join([f"--{section}.KEY options of `train.py {command}`:", *_rows(_section_keys(opts, section), opts, True)])
    lines = [f"usage: python train.py {command} [--config FILE ...] [--SECTION.KEY VALUE ...]", "", summary, ""]
    top = {"--config FILE": "a YAML config; repeat to compose (later files override earlier ones)",
           "--ckpt_path PATH|last": _first_sentence(opts["ckpt_path"].help) if "ckpt_path" in opts else "",
           "--run_dir DIR": "write the run exactly here",
           "--seed_everything N": "the run's seed (default 0)", **(own or {})}
    lines += [_line(k, v, pad=24) for k, v in top.items()]
    lines += ["", "model (--model.KEY):", *_rows(_section_keys(opts, "model"), opts)]
    lines += ["", "data (--data.KEY):", *_rows(_section_keys(opts, "data"), opts)]
    lines += [""] + textwrap.wrap("trainer (--trainer.KEY, Lightning's Trainer): " + ", ".join(TRAINER_KEYS) + ", ...",
                                  _width(), subsequent_indent="  ")
    for s in ("logger", "parallel"):
        lines += textwrap.wrap(f"{s} (--{s}.KEY): " + ", ".join(k.split(".", 1)[1] for k in _section_keys(opts, s)),
                               _width(), subsequent_indent="  ")
    lines += ["", f"python train.py {command} --help SECTION   shows one section in full ({', '.join(SECTIONS)})"]
    return "\n".join(lines)


# ---------------------------------------------------------------- errors
def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def parse_error_line(error: BaseException, parser: Any) -> str:
    """A jsonargparse error as one line that names the option, with a suggestion."""
    text = str(error).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    opts = options(parser) if parser is not None else {}
    m = re.search(r"[Uu]nrecognized arguments: (.+)", text)
    if m:
        bad = m.group(1).split()[0]
        key = bad[2:].split("=", 1)[0] if bad.startswith("--") else bad
        if not bad.startswith("--"):
            return f"unexpected argument {bad!r}"
        return f"unknown option --{key}{did_you_mean(key, opts).replace('mean ', 'mean --')}"
    m = re.search(r'[Kk]ey "([^"]+)"', text)
    if m:
        key = m.group(1)
        given = re.search(r"(?:Given|Got) value: (.+)", text)
        action = opts.get(key)
        literal = re.search(r"Literal\[([^\]]*)\]", text)
        choices = _choices(action) or ([c.strip().strip("'\"") for c in literal.group(1).split(",")] if literal else None)
        value = given.group(1).strip() if given else None
        if choices and value is not None:
            return f"--{key}: {value!r} is not one of {', '.join(map(str, choices))}{did_you_mean(value, map(str, choices))}"
        detail = next((ln for ln in lines[1:] if not ln.startswith(("Subtypes", "Errors", "Given value type"))), "")
        detail = re.sub(r"\s*Got value: .*", "", detail)
        detail = detail.lstrip("- ")
        return f"--{key}: {detail}" + (f" (given {value})" if value and value not in detail else "")
    m = re.search(r"Problem with given class_path '([^']+)'", text)
    if m:
        return f"cannot use class_path {m.group(1)!r}: {lines[-1] if lines else ''}"
    return lines[0] if lines else type(error).__name__


def check_config_files(argv: list[str]) -> None:
    """A YAML syntax error names its file and line (the parser's own message does not)."""
    for i, a in enumerate(argv):
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else a.split("=", 1)[1] if a.startswith("--config=") else None
        if path:
            if not Path(path).is_file():
                raise ValueError(f"--config {path}: no such file")
            _check_yaml(Path(path), set())


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
    if not isinstance(data, dict):
        if data is not None:
            raise ValueError(f"{path}: a config must be a mapping of sections (model:, data:, trainer:, ...)")
        return
    for value in _strings(data):  # section files a config refers to (data: data/mnist5k.yaml)
        if value.endswith((".yaml", ".yml")):
            _check_yaml(path.parent / value, seen)


def _strings(data: Any) -> Iterable[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for v in data.values():
            yield from _strings(v)
