"""Files that either do not exist or are complete: the one atomic write every result goes through.

A run can die at any instant (Ctrl+C, an OOM kill, a full disk). Every file glcan writes as a
result (summary.json, comparison.csv, report.md, checkpoints, docs/benchmarks/*) is written to a
temporary file in the same directory and renamed into place, so a reader never sees half of
one: the comparison runner relies on that to treat an existing summary.json as a finished run.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    Returns the path. On any failure the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda f: f.write(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write JSON (indented, one trailing newline; non-JSON values as ``str``)."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Atomically write a CSV with a header; missing values are empty."""
    def write(f: IO) -> None:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return atomic_write(path, write)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically ``torch.save`` an object."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)
