"""Pascal VOC 2012 detection (``--data.name voc``), through torchvision's ``VOCDetection``.

For users with internet (``--data.download true`` fetches it into ``data.root``; nothing
here downloads by default). VOC's own ``val`` set is the test set (the 2012 test annotations are
not public); validation is a seeded ``data.val_fraction`` of ``train``. Images are letterboxed
to ``data.image_size`` like a COCO folder's (glcan.data.coco_folder.letterbox). Labels are the
20 classes in VOC's order, 0-based; objects marked ``difficult`` are kept (VOC's own evaluation
ignores them, torchmetrics' mAP counts them: our mAP is the stricter).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

from glcan.data.coco_folder import letterbox
from glcan.data.errors import DataError

CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
YEAR = "2012"


class VocSet(Dataset):
    """One VOC image set as ``(image 3 x S x S float in [0, 1], {"boxes" xyxy, "labels" 0..19})``."""

    def __init__(self, root: str, image_set: str, size: int, download: bool = False) -> None:
        from torchvision.datasets import VOCDetection, wrap_dataset_for_transforms_v2

        try:
            base = VOCDetection(root, year=YEAR, image_set=image_set, download=download, transforms=letterbox(size))
        except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
            raise DataError(f"data.root '{root}': no Pascal VOC {YEAR} '{image_set}' set there ({e}); "
                            "--data.download true fetches it (needs internet)") from None
        self.data = wrap_dataset_for_transforms_v2(base)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.transforms.v2 import functional as TF

        image, target = self.data[index]
        return TF.to_dtype(image, torch.float32, scale=True), {
            "boxes": torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(target["labels"], dtype=torch.int64) - 1}  # torchvision counts background as 0


def build(root: str, seed: int, val_fraction: float, size: int, download: bool) -> dict[str, Dataset]:
    """train and a seeded validation share of it from VOC's ``train``; test: VOC's ``val``."""
    train = VocSet(root, "train", size, download)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    n = max(1, int(round(val_fraction * len(train))))
    return {"train": Subset(train, order[n:]), "val": Subset(train, order[:n]), "test": VocSet(root, "val", size, download)}

