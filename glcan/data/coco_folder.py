"""A user's detection data in COCO format: a folder of images and an ``annotations.json``.

Layouts (``--data.name coco --data.root DIR``):

- ``DIR/annotations.json`` with the images it names under ``DIR``: one set (evaluated whole;
  for training it is split at random, seeded by ``data.seed``);
- ``DIR/train``, ``DIR/val``, ``DIR/test``, each in that form (``val/`` optional).

Reading goes through torchvision's ``CocoDetection`` and ``wrap_dataset_for_transforms_v2``
(boxes as ``tv_tensors.BoundingBoxes`` in xyxy pixels that transforms v2 move with the image).
Before that, the file is checked here so that a fault is one line naming the file and the
record: unreadable or malformed JSON, an annotation of an unknown image or category, a box with
no area or outside its image. COCO's category ids need not be contiguous: they are mapped to
labels 0..C-1 in id order, and the map is kept (``categories``). An image without annotations
is kept as background, and said once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from glcan.data.errors import DataError

ANNOTATIONS = "annotations.json"
OFFICIAL = "2017"  # COCO's own release: train2017/, val2017/, annotations/instances_*2017.json
DEFAULT_SIZE = 512  # side of the square the images are letterboxed to (data.image_size)
SPLITS = ("train", "val", "test")
EDGE = 1.0  # pixels a box may pass its image's edge (COCO's own boxes round outwards)


def annotation_file(folder: Path) -> Path:
    """The annotation file of an image folder: its own ``annotations.json``, or, in COCO 2017's
    own layout (``train2017/`` beside ``annotations/instances_train2017.json``), that file."""
    own = folder / ANNOTATIONS
    official = folder.parent / "annotations" / f"instances_{folder.name}.json"
    return official if not own.is_file() and official.is_file() else own


def layout(root: str | Path) -> dict[str, Path]:
    """``{split: folder}`` of a COCO root: ``{"all": root}``, its train/val/test folders, or COCO
    2017's own ``train2017``/``val2017`` (val2017 is then the test set: its labels are public,
    test-dev's are not; validation is a seeded share of train)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root '{root}' is not a folder (coco wants a folder with {ANNOTATIONS}, or train/ "
                        f"val/ test/ folders each with one)")
    official = {s: path / f"{s}{OFFICIAL}" for s in ("train", "val") if (path / f"{s}{OFFICIAL}").is_dir()
                and annotation_file(path / f"{s}{OFFICIAL}").is_file()}
    if "train" in official:  # COCO 2017 as it unpacks: the public val2017 is the test set
        return {"train": official["train"], **({"test": official["val"]} if "val" in official else {})}
    found = {s: path / s for s in SPLITS if (path / s / ANNOTATIONS).is_file()}
    if found:
        if "train" not in found and "test" not in found:
            raise DataError(f"data.root '{root}': {', '.join(found)}/ found but neither train/ nor test/ has {ANNOTATIONS}")
        return found
    if not (path / ANNOTATIONS).is_file():
        raise DataError(f"data.root '{root}' has no {ANNOTATIONS} (nor train/ val/ test/ folders with one)")
    return {"all": path}


def check_annotations(file: Path) -> dict[str, Any]:
    """Read and check a COCO annotation file; returns ``{"categories": [ids in label order],
    "names": [...], "background": [file names without annotations]}``, or one-line DataError."""
    try:
        data = json.loads(file.read_text())
    except OSError as e:
        raise DataError(f"{file}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{file}: a COCO file needs 'images', 'annotations' and 'categories' lists")
    try:
        images = {int(im["id"]): im for im in data["images"]}
        categories = sorted(int(c["id"]) for c in data["categories"])
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{file}: every image and category needs an integer 'id' ({e!r})") from None
    annotated = set()
    for n, a in enumerate(data["annotations"]):
        where = f"{file}: annotation {a.get('id', n) if isinstance(a, dict) else n}"
        if not isinstance(a, dict) or a.get("image_id") not in images:
            raise DataError(f"{where} names image_id {a.get('image_id') if isinstance(a, dict) else None!r}, "
                            "which is not among the file's images")
        if a.get("category_id") not in names:
            raise DataError(f"{where} has category_id {a.get('category_id')!r}; the file's categories are "
                            f"{', '.join(map(str, categories))}")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise DataError(f"{where}: bbox must be [x, y, width, height] in pixels, got {box!r}")
        x, y, w, h = box
        im = images[a["image_id"]]
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: bbox {box} has no area")
        width, height = im.get("width"), im.get("height")
        if x < -EDGE or y < -EDGE or (width and x + w > width + EDGE) or (height and y + h > height + EDGE):
            raise DataError(f"{where}: bbox {box} lies outside its image '{im.get('file_name')}' ({width}x{height})")
        annotated.add(a["image_id"])
    background = [str(im.get("file_name")) for i, im in images.items() if i not in annotated]
    return {"categories": categories, "names": [names[c] for c in categories], "background": background}


class CocoFolder(Dataset):
    """One COCO folder as ``(image 3 x H x W float in [0, 1], {"boxes" xyxy, "labels" 0..C-1})``."""

    def __init__(self, folder: Path, size: Optional[int] = None) -> None:
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        file = annotation_file(folder)
        info = check_annotations(file)
        self.categories, self.names, self.background = info["categories"], info["names"], info["background"]
        self.label = {c: i for i, c in enumerate(self.categories)}
        try:
            base = CocoDetection(str(folder), str(file), transforms=letterbox(size) if size else None)
        except ImportError as e:
            raise DataError(f"coco data needs pycocotools (pip install pycocotools): {e}") from None
        self.data = wrap_dataset_for_transforms_v2(base, target_keys=("boxes", "labels", "image_id"))
        missing = [base.coco.imgs[i]["file_name"] for i in base.ids if not (folder / base.coco.imgs[i]["file_name"]).is_file()]
        if missing:
            raise DataError(f"{file} names image '{missing[0]}', which is not under {folder}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision.transforms.v2 import functional as TF

        image, target = self.data[index]
        image = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
        boxes = target.get("boxes")
        labels = target.get("labels")
        return image, {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) if boxes is not None else torch.zeros(0, 4),
            "labels": torch.tensor([self.label[int(c)] for c in labels], dtype=torch.int64)
            if labels is not None else torch.zeros(0, dtype=torch.int64),
        }


def letterbox(size: int) -> Any:
    """Each image scaled so that its longer side is ``size``, then padded (centred, zeros) to
    ``size`` x ``size``; transforms v2 moves the boxes with it. Every batch then has one shape,
    as the planner and the memory split need; the deployed FCOS takes images prepared so."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    # Boxes in float first: integer boxes (a COCO file may hold whole pixels) would be truncated.
    return v2.Compose([v2.ToImage(), v2.ToDtype({tv_tensors.BoundingBoxes: torch.float32, "others": None}),
                       v2.Resize(size=None, max_size=size, antialias=True), v2.CenterCrop(size)])


def describe(root: str | Path) -> dict[str, Any]:
    """The category names of a COCO root (its train set's, else its only set's), checked."""
    folders = layout(root)
    return check_annotations(annotation_file(folders.get("train", folders.get("all", next(iter(folders.values()))))))


def build(root: str | Path, seed: int, val_fraction: float, size: int, every: bool = False) -> dict[str, Any]:
    """train/val/test of a COCO root: its folders, or one set split at random (seeded: ``val_fraction``
    of the images each for validation and test); a root with train/ and test/ but no val/
    validates on a seeded ``val_fraction`` of train. ``every`` (``train.py test`` on a folder the
    model was not trained on): only a test set, its test/ folder or, with no split, every image."""
    from torch.utils.data import Subset

    folders = layout(root)
    if every:
        whole = folders.get("test", folders.get("all"))
        if whole is None:
            raise DataError(f"data.root '{root}' has no test/ folder (nor one set with no split) to evaluate")
        return {"train": None, "val": None, "test": CocoFolder(whole, size)}
    if "all" in folders:
        whole = CocoFolder(folders["all"], size)
        order = torch.randperm(len(whole), generator=torch.Generator().manual_seed(seed)).tolist()
        n = max(1, int(round(val_fraction * len(whole))))
        if len(whole) < 3 * n:
            raise DataError(f"data.root '{root}': {len(whole)} image(s) are too few to split into train, val and test")
        return {"val": Subset(whole, order[:n]), "test": Subset(whole, order[n:2 * n]), "train": Subset(whole, order[2 * n:])}
    sets = {split: CocoFolder(folder, size) for split, folder in folders.items()}
    if "val" not in sets and "train" in sets:
        train = sets["train"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        n = max(1, int(round(val_fraction * len(train))))
        sets["val"], sets["train"] = Subset(train, order[:n]), Subset(train, order[n:])
    if "train" not in sets:
        raise DataError(f"data.root '{root}' has test/ but no train/: train.py test evaluates it; fit needs train/")
    return sets


class PredictImages(Dataset):
    """Images to detect on (``predict``): each letterboxed to ``size`` as in training; where it
    landed (:meth:`geometry`) maps the detections back to the file's own pixels."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> Any:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as im:
                return im.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot read image '{self.paths[index]}': {e}") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.transforms.v2 import functional as TF

        image = letterbox(self.size)(self._read(index))
        return TF.to_dtype(image, torch.float32, scale=True), index

    def geometry(self, index: int) -> tuple[float, float, float, float, int, int]:
        """(left, top, x scale, y scale) of the image inside its letterbox, and its own (width,
        height): the transform applied to the image's own frame, so it is exactly what the
        pixels went through."""
        from PIL import Image
        from torchvision import tv_tensors

        with Image.open(self.paths[index]) as im:
            w, h = im.size
        frame = tv_tensors.BoundingBoxes([[0.0, 0.0, w, h]], format="XYXY", canvas_size=(h, w))
        _, placed = letterbox(self.size)(Image.new("RGB", (w, h)), frame)
        x0, y0, x1, y1 = placed[0].tolist()
        return x0, y0, (x1 - x0) / w, (y1 - y0) / h, w, h


def write_detections(batches: list[list[dict[str, torch.Tensor]]], data: PredictImages, names: Optional[list[str]],
                     category_ids: Optional[list[int]], out: Path, draw: bool, min_score: float = 0.3) -> int:
    """Every image's detections in COCO's results format (``detections.json``: image id, file,
    category id and name, xywh box in the file's own pixels, score) under ``out``; with ``draw``
    also each image with its boxes of at least ``min_score`` drawn (PNG). The number of images."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from torchvision.utils import draw_bounding_boxes

    from glcan.io import atomic_write, write_json

    detections = [d for batch in batches for d in batch]
    records = []
    for i, d in enumerate(detections):
        left, top, sx, sy, w, h = data.geometry(i)
        boxes = d["boxes"].float().clone()  # back from the letterbox, clipped to the image (not its padding)
        boxes[:, 0::2] = ((boxes[:, 0::2] - left) / sx).clamp(0, w)
        boxes[:, 1::2] = ((boxes[:, 1::2] - top) / sy).clamp(0, h)
        labels = d["labels"].tolist()
        for box, score, label in zip(boxes.tolist(), d["scores"].tolist(), labels):
            records.append({"image_id": i, "file_name": str(data.paths[i]),
                            "category_id": category_ids[label] if category_ids else label,
                            "category": names[label] if names else str(label),
                            "bbox": [round(box[0], 2), round(box[1], 2), round(box[2] - box[0], 2), round(box[3] - box[1], 2)],
                            "score": round(score, 5)})
        if draw:
            keep = d["scores"] >= min_score
            with Image.open(data.paths[i]) as im:
                image = pil_to_tensor(im.convert("RGB"))
            text = [f"{names[c] if names else c} {s:.2f}" for c, s in zip(d["labels"][keep].tolist(), d["scores"][keep].tolist())]
            drawn = draw_bounding_boxes(image, boxes[keep], text, colors="red") if bool(keep.any()) else image
            target = out / (Path(data.paths[i]).stem + "_boxes.png")
            pixels = Image.fromarray(drawn.permute(1, 2, 0).contiguous().numpy())
            atomic_write(target, lambda f, im=pixels: im.save(f, format="PNG"), binary=True)
    write_json(out / "detections.json", records)
    return len(detections)
