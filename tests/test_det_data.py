"""det_digits, the embedded detection set: exact, deterministic scenes (work in progress: no
detector trains on it yet, issue 21)."""

import numpy as np
import pytest
import torch

from glcan.data.det_digits import DetDigits, compose
from glcan.data.errors import DataError


def test_scenes_have_one_to_six_digits_with_boxes_inside_the_image():
    ds = DetDigits("train")
    counts = []
    for i in range(40):
        image, target = ds[i]
        assert image.shape == (3, 128, 128) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        boxes, labels = target["boxes"], target["labels"]
        counts.append(len(labels))
        assert boxes.shape == (len(labels), 4) and labels.dtype == torch.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert set(labels.tolist()) <= set(range(10))
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 3


def test_a_scene_is_a_pure_function_of_seed_split_and_index():
    a, b = compose("val", 7), compose("val", 7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(compose("val", 8)[0], a[0]) and not np.array_equal(compose("val", 7, seed=1)[0], a[0])


def test_a_box_is_no_larger_than_its_digit():
    for i in range(20):
        _, boxes, _ = compose("test", i, min_side=16, max_side=24)
        assert ((boxes[:, 2:] - boxes[:, :2]) <= 24).all()


def test_bad_arguments_are_one_line():
    with pytest.raises(DataError, match="splits train, val, test"):
        compose("training", 0)
    with pytest.raises(DataError, match="min_side"):
        compose("train", 0, min_side=64, max_side=32)
