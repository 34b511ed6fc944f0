"""The one augmentation rule, by image size, for every image dataset (folder and torchvision).

- Small images (at most ``SMALL`` = 64 px a side) get the CIFAR recipe: pad by an eighth of the
  side (4 px at 32) and crop back at random. ImageNet's RandomResizedCrop keeps as little as
  8% of the image: on a 32 px digit that leaves a few pixels of stroke, and training collapses
  (E2E on a folder of 32 px digits reached 81.7% with it). With this rule a folder of
  mnist5k's digits trains as well as the embedded tensors (docs/results_folder.md,
  ``python bench/folder.py``).
- Larger images get ImageNet's recipe: RandomResizedCrop for training, resize to 256/224 of
  the side and a centre crop for evaluation.
- Horizontal flips are an option (``--data.hflip``): they keep the label of a photograph, not
  of a digit or a letter. ``None`` takes the dataset's own choice.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torchvision import transforms as T

SMALL = 64


def pipelines(image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool, hflip: bool,
              resize_small: bool = True) -> tuple[Callable, Callable]:
    """(train, eval) transforms from a PIL image to a normalised tensor.

    Args:
        image_size: the side fed to the model.
        mean, std: the normalisation.
        augment: False gives the evaluation pipeline for both.
        hflip: random horizontal flips in training.
        resize_small: resize small images to ``image_size`` first (False when they already have it).
    """
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if image_size <= SMALL:
        head = [T.Resize((image_size, image_size))] if resize_small else []
        plain = T.Compose(head + tail)
        aug = head + [T.RandomCrop(image_size, padding=max(1, image_size // 8))]
    else:
        plain = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size)] + tail)
        aug = [T.RandomResizedCrop(image_size)]
    if not augment:
        return plain, plain
    return T.Compose(aug + ([T.RandomHorizontalFlip()] if hflip else []) + tail), plain
