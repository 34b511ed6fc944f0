"""glcan's data: one LightningDataModule (``GLCanDataModule``) over every supported dataset.

The package is split by where the data comes from: ``mnist5k`` (embedded, the default, needs
no download), ``vision`` (torchvision datasets and a seeded fake set), ``folder`` (any
ImageFolder tree), ``sr_images`` (photographs for super-resolution: scikit-image's or a folder). ``DATASETS`` maps each ``--data.name`` to a one-line description, and every
bad-input error is a one-line ``DataError`` (a ``ValueError``).
"""

from glcan.data.datamodule import DATASETS, DatasetName, GLCanDataModule
from glcan.data.errors import DataError

__all__ = ["DATASETS", "DataError", "DatasetName", "GLCanDataModule"]
