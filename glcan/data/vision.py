"""The torchvision datasets (CIFAR-10/100, SVHN, STL-10) and a seeded fake dataset.

Why this shape: validation must come from the training files (the official test split stays
untouched for the final number), and validation images must not be augmented. So we open each
training set once, without a transform, and view it twice through ``Subset`` with the same
seeded permutation: the training indices with the augmenting transform, the held-out
``val_fraction`` with the plain one. One copy of the pixels in memory, two pipelines.

Missing files are the usual first-run problem; torchvision reports them as a ``RuntimeError``
from deep inside its constructors. We turn that into one line naming ``data.root`` and the fix.

``fake`` is for smoke tests and benchmarks: uniform noise images with random labels (nothing
to learn), generated per index from a private ``torch.Generator`` so it is deterministic and
never disturbs the global RNG (torchvision's own ``FakeData`` reseeds the global generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from glcan.data.errors import DataError
from glcan.data.transforms import pipelines


@dataclass(frozen=True)
class VisionSpec:
    """What glcan needs to know about one torchvision dataset."""

    label: str  # torchvision class name, also used in messages
    num_classes: int
    size: int  # native height = width
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool  # horizontal flips keep the label (not for digits)


SPECS: dict[str, VisionSpec] = {
    "cifar10": VisionSpec("CIFAR10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": VisionSpec("CIFAR100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "svhn": VisionSpec("SVHN", 10, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
    "stl10": VisionSpec("STL10", 10, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True),
}

# Uniform noise on [0, 1]: mean 1/2, std 1/sqrt(12) ~ 0.2887, so normalised inputs have unit variance.
FAKE_MEAN = (0.5, 0.5, 0.5)
FAKE_STD = (0.2887, 0.2887, 0.2887)
FAKE_SIZE = 32


class Transformed(Dataset):
    """``base[i]`` with ``transform`` applied to the image (the base returns PIL images)."""

    def __init__(self, base: Dataset, transform: Callable[[Any], Any]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, target = self.base[index]
        return self.transform(image), int(target)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def open_split(name: str, root: str, train: bool, download: bool) -> Dataset:
    """The torchvision dataset (no transform) or a one-line DataError naming ``data.root``."""
    spec = SPECS[name]
    cls = getattr(datasets, spec.label)
    kwargs: dict[str, Any] = {"train": train} if name.startswith("cifar") else {"split": "train" if train else "test"}
    try:
        return cls(root, download=download, **kwargs)
    except RuntimeError as e:
        if download:
            raise DataError(f"data.root '{root}': {spec.label} download or check failed: {_first_line(e)}") from e
        raise DataError(
            f"data.root '{root}': {spec.label} not found; pass --data.download true (needs internet) "
            "or point --data.root at it"
        ) from e
    except OSError as e:  # no network during download, permissions, a truncated archive
        raise DataError(f"data.root '{root}': cannot open {spec.label}: {_first_line(e)}") from e


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded (train, val) indices over ``n`` items; val is ``round(n * val_fraction)``, at least 1."""
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def build(name: str, root: str, download: bool, seed: int, val_fraction: float, image_size: int | None,
          augment: bool, hflip: bool | None = None) -> dict[str, Dataset]:
    """``{"train", "val", "test"}``: seeded train/val split of the training set, official test split
    (augmentation by image size: glcan.data.transforms)."""
    spec = SPECS[name]
    size = image_size or spec.size
    train_tf, eval_tf = pipelines(size, spec.mean, spec.std, augment, spec.flip if hflip is None else hflip,
                                  resize_small=size != spec.size)
    train_base = open_split(name, root, True, download)
    train_idx, val_idx = split_indices(len(train_base), val_fraction, seed)
    return {
        "train": Subset(Transformed(train_base, train_tf), train_idx),
        "val": Subset(Transformed(train_base, eval_tf), val_idx),
        "test": Transformed(open_split(name, root, False, download), eval_tf),
    }


class SeededFakeData(datasets.FakeData):
    """torchvision's ``FakeData`` with a private generator per index and uint8 uniform noise.

    Item ``i`` depends only on ``i + random_offset``: the same on every run and machine, and
    the global RNG is left alone (``FakeData`` calls ``torch.manual_seed``, which also resets
    the CUDA generators, in the middle of training).
    """

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__} index {index} out of range for size {len(self)}")
        g = torch.Generator().manual_seed(index + self.random_offset)
        image = TF.to_pil_image(torch.randint(0, 256, tuple(self.image_size), dtype=torch.uint8, generator=g))
        target = int(torch.randint(0, self.num_classes, (1,), generator=g))
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def fake_eval_size(fake_size: int) -> int:
    """Validation and test sizes of ``fake``: a quarter of the training size, at least 1."""
    return max(fake_size // 4, 1)


def build_fake(size: int, num_classes: int, image_size: int | None, seed: int) -> dict[str, Dataset]:
    """Three disjoint FakeData sets: train (``size``), val and test (``fake_eval_size(size)`` each).

    Their index ranges ``random_offset + [0, len)`` do not overlap, and another seed moves all
    three to a fresh range.
    """
    s = image_size or FAKE_SIZE
    tf = T.Compose([T.ToTensor(), T.Normalize(FAKE_MEAN, FAKE_STD)])
    n_eval = fake_eval_size(size)
    base = seed * (size + 2 * n_eval)
    sizes = {"train": (size, base), "val": (n_eval, base + size), "test": (n_eval, base + size + n_eval)}
    return {split: SeededFakeData(size=n, image_size=(3, s, s), num_classes=num_classes, transform=tf, random_offset=off)
            for split, (n, off) in sizes.items()}
