"""DataError: the one exception type for bad data input (paths, files, arguments).

A user who points ``--data.root`` at the wrong place should read one line that names the path
and what is wrong, not a traceback from deep inside torchvision or PIL. Everything the data
package raises for bad input is a ``DataError``; it subclasses ``ValueError`` so that
``glcan.entry`` (which catches ``ValueError``) prints ``str(e)`` alone.

One wrinkle: an exception raised inside a DataLoader worker process is re-created in the main
process as ``DataError("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback
...")``. The first line of that says nothing useful, so the constructor recognises this form and
keeps the original message (the full worker traceback stays on ``worker_traceback``).

``check_args`` validates GLCanDataModule's arguments with such messages (``data.<arg> must be
..., got <value>``), because LightningCLI's type check accepts e.g. ``batch_size: 0``.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional


class DataError(ValueError):
    """Bad data input, with a one-line message that names the offending path or value."""

    worker_traceback: Optional[str]

    def __init__(self, message: object = "") -> None:
        text = str(message)
        self.worker_traceback = None
        if text.startswith("Caught DataError") and "Original Traceback" in text:
            self.worker_traceback = text
            lines = [ln for ln in text.splitlines() if "DataError: " in ln]
            if lines:
                text = lines[-1].split("DataError: ", 1)[1] + " (in a DataLoader worker)"
        super().__init__(" ".join(part.strip() for part in text.strip().splitlines() if part.strip()))


def _check_int(arg: str, value: Any, minimum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(f"data.{arg} must be {what}, got {value!r}")


def check_args(*, name: str, datasets: Iterable[str], batch_size: Any, num_workers: Any, seed: Any,
               image_size: Any, val_fraction: Any, fake_size: Any, fake_num_classes: Any) -> None:
    """Raise a one-line DataError for the first invalid GLCanDataModule argument."""
    names = list(datasets)
    if name not in names:
        raise DataError(f"data.name must be one of {', '.join(names)}, got {name!r}")
    _check_int("batch_size", batch_size, 1, "a positive integer")
    _check_int("num_workers", num_workers, 0, "a non-negative integer")
    _check_int("seed", seed, 0, "a non-negative integer")
    if image_size is not None:
        _check_int("image_size", image_size, 1, "a positive integer or null")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction must be a number in (0, 1), got {val_fraction!r}")
    _check_int("fake_size", fake_size, 1, "a positive integer")
    _check_int("fake_num_classes", fake_num_classes, 2, "an integer >= 2")
