"""``folder``: any ImageFolder tree (``root/<class>/<image>``), e.g. an ImageNet copy.

Two layouts. If ``root/train`` and ``root/val`` are folders, they are the splits (``root/test``
too when present, else test = val). Otherwise ``root`` is one tree, split with a seeded
permutation into val and test (``val_fraction`` of the images each) and train (the rest).

The class list is read in ``GLCanDataModule.__init__`` (a directory listing that stops at each
class's first image), because the model's classifier is built from ``num_classes`` before any
data is loaded. The full walk over the images happens in ``setup``.

Every user mistake ends as one ``DataError`` line that names the path: a missing root, a file
instead of a folder, no class folders, a class folder without images, a single class, a
corrupted image. Training reads images lazily (opening a million files up front would cost
minutes) and turns a PIL failure into ``DataError`` when the image is first read; to find every
broken image before a long run, ``python train.py check-data --config X`` reads each one once
and lists them all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from glcan.data.errors import DataError
from glcan.data.transforms import pipelines

MEAN = (0.485, 0.456, 0.406)  # ImageNet
STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
_EXTENSIONS = tuple(ext.lower() for ext in IMG_EXTENSIONS)


def _is_image(name: str) -> bool:
    return name.lower().endswith(_EXTENSIONS) and not name.startswith(".")


def _has_image(folder: Path) -> bool:
    """Whether ``folder`` holds at least one image (any depth); stops at the first one."""
    for _, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(_is_image(f) for f in files):
            return True
    return False


def layout(root: str) -> dict[str, Path]:
    """``{"train": ..., "val": ...[, "test": ...]}`` for a split tree, ``{"all": root}`` for one tree."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root '{root}' does not exist")
    if not path.is_dir():
        raise DataError(f"data.root '{root}' is a file, not a folder of class subfolders")
    train, val, test = path / "train", path / "val", path / "test"
    if train.is_dir() and val.is_dir():
        return {"train": train, "val": val, **({"test": test} if test.is_dir() else {})}
    if train.is_dir() != val.is_dir():
        have, missing = ("train", "val") if train.is_dir() else ("val", "train")
        raise DataError(f"data.root '{root}' has a '{have}' folder but no '{missing}' folder; add "
                        f"'{path / missing}' or put the class folders directly under '{root}'")
    return {"all": path}


def read_classes(root: str, val_fraction: float) -> list[str]:
    """The class names for ``GLCanDataModule.__init__`` (checks the layout and ``val_fraction``)."""
    parts = layout(root)
    if "all" in parts and val_fraction >= 0.5:
        raise DataError(f"data.val_fraction must be below 0.5 for a single folder tree (it is taken "
                        f"twice, for val and test), got {val_fraction!r}")
    return find_classes(parts.get("train", parts.get("all")))  # type: ignore[arg-type]


def find_classes(folder: Path) -> list[str]:
    """Sorted class folder names under ``folder`` (hidden ones skipped); each must hold images."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    empty = [c for c in classes if not _has_image(folder / c)]
    if not classes or len(empty) == len(classes):
        raise DataError(f"data.root '{folder}' contains no class subfolders with images "
                        "(expected root/<class>/<image>.png|jpg|...; to predict a folder of images, keep "
                        "data.root on the training data and give the images with --images DIR)")
    if empty:
        raise DataError(f"data.root '{folder}': class folder '{empty[0]}' contains no images")
    if len(classes) == 1:
        raise DataError(f"data.root '{folder}' has only 1 class '{classes[0]}'; need at least 2")
    return classes


def list_samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    """Every (image path, class index) under ``folder``, in a fixed (sorted) order."""
    extra = sorted(e.name for e in os.scandir(folder)
                   if e.is_dir() and not e.name.startswith(".") and e.name not in classes)
    if extra:
        raise DataError(f"data.root '{folder}' has class folder '{extra[0]}' that the training folder lacks")
    samples = []
    for index, name in enumerate(classes):
        for dirpath, dirs, files in sorted(os.walk(folder / name, followlinks=True)):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            samples += [(os.path.join(dirpath, f), index) for f in sorted(files) if _is_image(f)]
    if not samples:
        raise DataError(f"data.root '{folder}' contains no images")
    return samples


def shuffled(samples: list, seed: int) -> list:
    """``samples`` in a fixed order drawn from ``seed`` (evaluation sets: every class early on)."""
    perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [samples[i] for i in perm]


def list_images(root: str) -> list[Path]:
    """Every image under ``root`` (any depth, sorted): what ``predict`` reads."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root '{root}' is not a folder of images")
    files = sorted(Path(d) / f for d, dirs, fs in os.walk(path, followlinks=True) for f in fs if _is_image(f)
                   and not any(part.startswith(".") for part in Path(d).relative_to(path).parts))
    if not files:
        raise DataError(f"data.root '{root}' contains no images ({', '.join(_EXTENSIONS[:6])}, ...)")
    return files


def broken_images(samples: list[tuple[str, int]]) -> list[tuple[str, str]]:
    """(path, reason) of every image that cannot be read: each file is opened and decoded once."""
    bad = []
    for path, _ in samples:
        try:
            load_image(path)
        except DataError as e:
            bad.append((path, str(e).split(": ", 1)[-1]))
    return bad


def load_image(path: str, rgb: bool = True) -> Image.Image:
    """The image at ``path`` (as RGB unless ``rgb`` is false), or a one-line ``DataError`` naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB") if rgb else image.copy()
    except UnidentifiedImageError as e:
        raise DataError(f"cannot read image '{path}': not a recognised image format") from e
    except Exception as e:  # truncated files, decoder errors, decompression bombs, permissions
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read image '{path}': {reason}") from e


class ImageList(Dataset):
    """(path, class index) pairs read with ``load_image`` and ``transform`` on access."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], Any], rgb: bool = True) -> None:
        self.samples, self.transform, self.rgb = samples, transform, rgb

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        return self.transform(load_image(path, self.rgb)), target


def build(root: str, classes: list[str], seed: int, val_fraction: float, image_size: int | None,
          augment: bool, hflip: bool = True) -> dict[str, Dataset]:
    """``{"train", "val", "test"}`` ImageLists for either layout (see the module docstring).

    Validation and test images come in a fixed shuffled order (seeded), so that a quick check
    on the first batches sees every class, not the first class folder only.
    """
    train_tf, eval_tf = pipelines(image_size or DEFAULT_SIZE, MEAN, STD, augment, hflip)
    parts = layout(root)
    if "all" in parts:
        samples = list_samples(parts["all"], classes)
        n = len(samples)
        n_val = max(1, round(n * val_fraction))
        if n - 2 * n_val < 1:
            raise DataError(f"data.root '{root}' has only {n} images: too few to split into train/val/test")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
        train = [samples[i] for i in sorted(perm[2 * n_val:])]
        val, test = [samples[i] for i in perm[:n_val]], [samples[i] for i in perm[n_val:2 * n_val]]
    else:
        train = list_samples(parts["train"], classes)
        val = shuffled(list_samples(parts["val"], classes), seed)
        test = shuffled(list_samples(parts["test"], classes), seed) if "test" in parts else val
    return {"train": ImageList(train, train_tf), "val": ImageList(val, eval_tf), "test": ImageList(test, eval_tf)}
