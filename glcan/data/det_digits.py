"""det_digits: an embedded detection set, composed from real images, with exact boxes.

No detection data ships in any package here, and the default runs must not download. So the
scenes are composed, like mnist5k, from real images that do ship: handwritten digits from the
embedded MNIST digits (glcan.data.mnist5k, ten classes) pasted at random positions and sizes,
1 to 6 per scene and free to overlap, onto random crops of scikit-image's colour photographs.
It is a small benchmark for checking and comparing detectors, not COCO: objects are
high-contrast glyphs on natural backgrounds, with one scale range and no clutter class.

- **No leakage between splits.** Train, val and test scenes take their digits from mnist5k's
  own train / val / test digits (its fixed stratified split) and their backgrounds from the
  photographs that glcan.data.sr_images assigns to the same split.
- **Exact boxes.** A digit is scaled to a side of ``min_side``..``max_side`` pixels and its box is
  the tight box of its visible strokes (scaled alpha above ``INK``), in xyxy pixels. A digit
  pasted later may cover part of an earlier one; the earlier box stays, as annotators would
  draw it.
- **Deterministic and lazy.** Scene i of a split is a pure function of (seed, split, i): nothing
  is stored, any index can be drawn in any order, and every machine draws the same scenes.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from glcan.data import mnist5k
from glcan.data.errors import DataError
from glcan.data.sr_images import EMBEDDED_SPLIT, skimage_folder

CLASSES = tuple(str(d) for d in range(10))
SIZES = {"train": 2000, "val": 250, "test": 250}  # scenes per split
SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
INK = 0.25  # a stroke pixel: scaled alpha above this (the box is the strokes', not the 28x28 frame's)


@functools.lru_cache(maxsize=3)
def digits(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """mnist5k's ``split`` digits as (N x 28 x 28 float alpha in [0, 1], N labels)."""
    array = mnist5k.load_array()
    pixels, labels = array[:, :-1], array[:, -1].astype(np.int64)
    rows = mnist5k.split_indices(labels, seed)[SPLIT_INDEX[split]]
    return pixels[rows].reshape(-1, 28, 28).astype(np.float32) / 255.0, labels[rows]


@functools.lru_cache(maxsize=12)
def photo(path: str) -> np.ndarray:
    """A photograph as H x W x 3 float RGB in [0, 1] (grey and RGBA converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as e:
        raise DataError(f"det_digits: cannot read scikit-image's photograph '{path}': {e}; reinstall scikit-image") from e


def photos(split: str) -> list[str]:
    base = skimage_folder()
    paths = [base / f for f in EMBEDDED_SPLIT[split]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"det_digits: scikit-image's photograph '{missing[0]}' is missing; reinstall scikit-image")
    return [str(p) for p in paths]


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H x W (x C) float array (antialiased when shrinking)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return (out[0] if a.ndim == 2 else out.permute(1, 2, 0)).numpy()


def compose(split: str, index: int, seed: int = 0, size: int = 128, max_objects: int = 6,
            min_side: int = 16, max_side: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split``: (size x size x 3 float RGB in [0, 1], boxes K x 4 xyxy pixels,
    labels K), 1 <= K <= ``max_objects``."""
    if split not in SPLIT_INDEX:
        raise DataError(f"det_digits has splits train, val, test; got {split!r}")
    if not 1 <= min_side <= max_side <= size:
        raise DataError(f"det_digits needs 1 <= min_side <= max_side <= size, got {min_side}, {max_side}, {size}")
    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
    pool, labels = digits(split, seed)
    # Background: a random square crop of one of the split's photographs, scaled to the scene.
    background = photo(photos(split)[rng.integers(len(EMBEDDED_SPLIT[split]))])
    h, w = background.shape[:2]
    side = int(rng.integers(min(h, w, size), min(h, w) + 1))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    image = _resize(background[top:top + side, left:left + side], (size, size)).clip(0.0, 1.0)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        j = int(rng.integers(len(pool)))
        t = int(rng.integers(min_side, max_side + 1))
        alpha = _resize(pool[j], (t, t)).clip(0.0, 1.0)
        rows, cols = np.nonzero(alpha > INK)
        if rows.size == 0:  # a digit too faint to see at this size: not an object
            continue
        y0, x0 = int(rng.integers(size - t + 1)), int(rng.integers(size - t + 1))
        # The digit's colour contrasts with what it covers: the opposite end of each channel.
        under = image[y0:y0 + t, x0:x0 + t].mean(axis=(0, 1))
        colour = np.where(under > 0.5, rng.uniform(0.0, 0.25, 3), rng.uniform(0.75, 1.0, 3)).astype(np.float32)
        patch = image[y0:y0 + t, x0:x0 + t]
        image[y0:y0 + t, x0:x0 + t] = patch * (1 - alpha[..., None]) + colour * alpha[..., None]
        boxes.append([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        classes.append(int(labels[j]))
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(classes, dtype=np.int64)


class DetDigits(Dataset):
    """One split of det_digits: ``(image 3 x size x size float in [0, 1], {"boxes", "labels"})``
    (boxes xyxy in pixels), as torchvision's detectors take them."""

    def __init__(self, split: str, seed: int = 0, size: int = 128, length: int | None = None) -> None:
        self.split, self.seed, self.size = split, seed, size
        self.length = SIZES[split] if length is None else length
        compose(split, 0, seed, size)  # fail here, in one line, if the images are not there

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image, boxes, labels = compose(self.split, index, self.seed, self.size)
        return torch.from_numpy(image).permute(2, 0, 1).contiguous(), \
            {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}


def save_preview(path: str | Path, split: str = "train", count: int = 8, seed: int = 0) -> Path:
    """A strip of ``count`` scenes with their boxes drawn (to look at the data)."""
    from torchvision.utils import draw_bounding_boxes, make_grid

    tiles = []
    for i in range(count):
        image, target = DetDigits(split, seed)[i]
        tiles.append(draw_bounding_boxes((image * 255).to(torch.uint8), target["boxes"],
                                         [CLASSES[c] for c in target["labels"]], colors="red"))
    grid = make_grid(tiles, nrow=count, padding=2).permute(1, 2, 0).numpy()
    Image.fromarray(grid).save(path)
    return Path(path)


def build(seed: int, size: int = 128) -> dict[str, Dataset]:
    """The three splits (scenes drawn lazily, each a pure function of its index)."""
    return {split: DetDigits(split, seed, size) for split in SIZES}


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Scenes of one size as one image tensor, their targets as a list (one dict per scene)."""
    return torch.stack([x for x, _ in batch]), [t for _, t in batch]
