"""The data package: real splits, reproducible order, and one-line errors for bad input.

Comparisons between end-to-end and local training are only fair if both see the same images in
the same order, and a user who mistypes a path must get one line naming it, not a torchvision
traceback. These tests check both, with the embedded mnist5k, the fake set and tiny ImageFolder
trees written to tmp_path; nothing touches the network.
"""

from __future__ import annotations

import hashlib
import pickle
import typing
from pathlib import Path

import numpy as np
import pytest
import lightning as L
import torch
from PIL import Image

from glcan.data.sampler import EpochSeededSampler
from glcan.data import DATASETS, DataError, DatasetName, GLCanDataModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def _row_hashes(dataset) -> set[str]:
    images = dataset.tensors[0]
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images}


@pytest.fixture(scope="module")
def mnist() -> GLCanDataModule:
    dm = GLCanDataModule()
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------------------- mnist5k


def test_mnist5k_attributes_are_set_before_setup() -> None:
    dm = GLCanDataModule()
    assert dm.name == "mnist5k" and dm.train_set is None
    assert (dm.num_classes, dm.in_channels, dm.image_shape) == (10, 1, (1, 32, 32))
    assert dm.mean == (0.1307,) and dm.std == (0.3081,)


def test_mnist5k_shapes_and_stratified_sizes(mnist: GLCanDataModule) -> None:
    sizes = {}
    for split, per_class in (("train", 400), ("val", 50), ("test", 50)):
        images, labels = getattr(mnist, f"{split}_set").tensors
        assert images.dtype == torch.float32 and tuple(images.shape[1:]) == (1, 32, 32)
        assert labels.dtype == torch.int64
        assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
        sizes[split] = len(labels)
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    images = mnist.train_set.tensors[0]
    # zero padding 28 -> 32 is the (normalised) black background
    border = images[:, :, :2, :]
    torch.testing.assert_close(border, torch.full_like(border, -0.1307 / 0.3081))
    assert abs(images.mean().item()) < 0.5 and 0.5 < images.std().item() < 1.5


def test_mnist5k_splits_do_not_overlap(mnist: GLCanDataModule) -> None:
    train, val, test = (_row_hashes(s) for s in (mnist.train_set, mnist.val_set, mnist.test_set))
    assert (len(train), len(val), len(test)) == (4000, 500, 500)  # also: no duplicate digits
    assert not (train & val) and not (train & test) and not (val & test)


def test_mnist5k_split_depends_on_seed_only(mnist: GLCanDataModule) -> None:
    same = GLCanDataModule(seed=0)
    same.setup()
    other = GLCanDataModule(seed=1)
    other.setup()
    assert _row_hashes(same.test_set) == _row_hashes(mnist.test_set)
    assert torch.equal(same.train_set.tensors[0], mnist.train_set.tensors[0])
    assert _row_hashes(other.test_set) != _row_hashes(mnist.test_set)
    assert torch.bincount(other.val_set.tensors[1]).tolist() == [50] * 10


@pytest.mark.parametrize("size", [28, 16])
def test_mnist5k_image_size(size: int) -> None:
    dm = GLCanDataModule(image_size=size)
    assert dm.image_shape == (1, size, size)
    x, y = next(iter(dm.val_dataloader()))
    assert tuple(x.shape) == (128, 1, size, size) and y.shape == (128,)


def test_the_run_seed_draws_the_order_and_data_seed_fixes_the_split(monkeypatch) -> None:
    """Paired seeds of a comparison: seed_everything varies the training order (and the
    initialisation), data.seed keeps the split; the same run seed gives the same order."""
    def first_batches(run_seed: int, n: int = 3) -> list[torch.Tensor]:
        L.seed_everything(run_seed)  # what every fit does with --seed_everything
        loader = GLCanDataModule(seed=0, batch_size=64).train_dataloader()
        batches = []
        for i, (x, y) in enumerate(loader):
            batches.append(torch.cat([x.flatten(1)[:, 100:110], y[:, None].float()], 1))
            if i + 1 == n:
                break
        return batches

    a, b, c = first_batches(0), first_batches(0), first_batches(5)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[0], c[0])
    L.seed_everything(5)
    other_run = GLCanDataModule(seed=0)
    other_run.setup()
    L.seed_everything(0)
    this_run = GLCanDataModule(seed=0)
    this_run.setup()
    assert torch.equal(torch.stack([this_run.val_set[i][0] for i in range(20)]),
                       torch.stack([other_run.val_set[i][0] for i in range(20)]))


def test_epoch_order_depends_only_on_seed_and_epoch(mnist: GLCanDataModule) -> None:
    """A resumed run builds a new loader: its epoch-1 order must equal the uninterrupted run's."""
    running = mnist.train_dataloader().sampler
    running.set_epoch(0)
    first = list(running)
    running.set_epoch(1)
    second = list(running)
    fresh = mnist.train_dataloader().sampler
    fresh.set_epoch(1)
    assert list(fresh) == second != first
    assert sorted(second) == list(range(4000))


def test_loaders_settings(mnist: GLCanDataModule) -> None:
    train, val = mnist.train_dataloader(), mnist.val_dataloader()
    assert train.drop_last is False and train.num_workers == 0
    assert isinstance(train.sampler, EpochSeededSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert sum(len(y) for _, y in val) == 500
    assert len(train) == 32  # ceil(4000 / 128): the last partial batch is kept


def test_replicas_share_an_epoch_and_a_process_group_alone_does_not_shard():
    """Each DDP replica draws its own share of one epoch's order; without a replica given (one
    process, or a pipeline stage whose process group is not data parallel) the sampler yields all."""
    data = list(range(10))
    shares = [list(EpochSeededSampler(data, seed=3, rank=r, replicas=2)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 5 and sorted(shares[0] + shares[1]) == data
    assert sorted(EpochSeededSampler(data, seed=3)) == data


# ---------------------------------------------------------------------------- fake


def test_fake_shapes_classes_and_determinism() -> None:
    dm = GLCanDataModule("fake", fake_size=40, fake_num_classes=7, batch_size=8)
    assert (dm.num_classes, dm.in_channels, dm.image_shape) == (7, 3, (3, 32, 32))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 10)
    x, y = next(iter(dm.val_dataloader()))
    assert tuple(x.shape) == (8, 3, 32, 32) and int(y.max()) < 7
    again = GLCanDataModule("fake", fake_size=40, fake_num_classes=7)
    again.setup()
    torch.testing.assert_close(again.train_set[3][0], dm.train_set[3][0], rtol=0, atol=0)
    assert not torch.equal(dm.train_set[0][0], dm.val_set[0][0])
    labels = [dm.train_set[i][1] for i in range(40)]
    assert len(set(labels)) > 3
    state = torch.get_rng_state()
    dm.train_set[0]
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


# ---------------------------------------------------------------------------- folder


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, dtype=np.uint8)).save(path)


def _tree(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 40 * c + i)
    return root


def test_folder_single_tree_is_split_by_seed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pets")
    dm = GLCanDataModule("folder", root=str(root), image_size=16, batch_size=4, val_fraction=0.2)
    assert dm.classes == ("cat", "dog", "owl") and dm.num_classes == 3
    assert dm.image_shape == (3, 16, 16) and dm.mean == (0.485, 0.456, 0.406)
    dm.setup()
    paths = [{p for p, _ in s.samples} for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert [len(p) for p in paths] == [10, 4, 4]  # round(18 * 0.2) = 4 each for val and test
    assert len(paths[0] | paths[1] | paths[2]) == 18
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1, 2}
    other = GLCanDataModule("folder", root=str(root), image_size=16, val_fraction=0.2, seed=3)
    other.setup()
    assert {p for p, _ in other.val_set.samples} != paths[1]


def test_folder_train_val_layout(tmp_path: Path) -> None:
    _tree(tmp_path / "train", per_class=3)
    _tree(tmp_path / "val", classes=("cat", "owl"), per_class=2)
    dm = GLCanDataModule("folder", root=str(tmp_path), image_size=8)
    assert dm.classes == ("cat", "dog", "owl")
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (9, 4)
    assert dm.test_set.samples == dm.val_set.samples  # no root/test: test = val
    assert sorted({y for _, y in dm.val_set.samples}) == [0, 2]  # mapped with train's class indices
    x, _ = dm.val_set[0]
    assert tuple(x.shape) == (3, 8, 8)


def _error(**kwargs) -> str:
    with pytest.raises(DataError) as info:
        GLCanDataModule(**kwargs).setup()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_folder_bad_roots_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert f"'{missing}' does not exist" in _error(name="folder", root=str(missing))
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert f"'{afile}' is a file" in _error(name="folder", root=str(afile))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"'{empty}' contains no class subfolders with images" in _error(name="folder", root=str(empty))
    (empty / "cat").mkdir()
    (empty / "cat" / "notes.txt").write_text("not an image")
    assert "contains no class subfolders with images" in _error(name="folder", root=str(empty))
    single = _tree(tmp_path / "single", classes=("cat",))
    assert f"'{single}' has only 1 class 'cat'; need at least 2" in _error(name="folder", root=str(single))
    lopsided = _tree(tmp_path / "lopsided", classes=("cat",))
    (lopsided / "dog").mkdir()
    assert "class folder 'dog' contains no images" in _error(name="folder", root=str(lopsided))
    half = _tree(tmp_path / "half" / "train")
    assert "has a 'train' folder but no 'val' folder" in _error(name="folder", root=str(half.parent))


def _raised(fn) -> str:
    """``fn()``'s DataError message. Dropping the traceback frees a DataLoader's workers at once
    (kept in a reference cycle, torch's garbage collection of them waits 5 s per worker)."""
    try:
        fn()
    except DataError as e:
        e.__traceback__ = None
        return str(e)
    pytest.fail("no DataError raised")


def test_folder_corrupted_image_is_one_line(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pets")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG this is not really a png" * 3)
    dm = GLCanDataModule("folder", root=str(root), image_size=8, batch_size=32, val_fraction=0.1, augment=False)
    dm.setup()
    split = next(s for s in ("train", "val", "test") if str(bad) in [p for p, _ in getattr(dm, f"{s}_set").samples])
    dataset = getattr(dm, f"{split}_set")
    index = [p for p, _ in dataset.samples].index(str(bad))
    message = _raised(lambda: dataset[index])
    assert message == f"cannot read image '{bad}': not a recognised image format"
    # through a worker process too: the re-raised error keeps the one-line message
    dm.num_workers = 1
    message = _raised(lambda: list(getattr(dm, f"{split}_dataloader")()))
    assert message.startswith(f"cannot read image '{bad}'") and "\n" not in message


# ---------------------------------------------------------------------------- torchvision, arguments


def test_cifar10_missing_files_is_one_line_without_download(tmp_path: Path) -> None:
    root = tmp_path / "data"
    dm = GLCanDataModule("cifar10", root=str(root))
    assert (dm.num_classes, dm.image_shape) == (10, (3, 32, 32))  # known without the files
    message = _error(name="cifar10", root=str(root))
    assert message == (f"data.root '{root}': CIFAR10 not found; pass --data.download true (needs internet) "
                       "or point --data.root at it")
    (root / "cifar-10-batches-py").mkdir(parents=True)  # present but empty: still one line
    assert "CIFAR10 not found" in _error(name="cifar10", root=str(root))
    assert GLCanDataModule("stl10").image_shape == (3, 96, 96)
    assert GLCanDataModule("cifar100").num_classes == 100


def _tiny_cifar10(root: Path, per_batch: int = 4, test_size: int = 6) -> None:
    """A CIFAR-10 folder in torchvision's format with a few images (its md5 check is patched out)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test_size)]
    for name, n in files:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_pipeline_on_a_tiny_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    _tiny_cifar10(tmp_path)
    dm = GLCanDataModule("cifar10", root=str(tmp_path), val_fraction=0.25, batch_size=4, seed=1)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 5, 6)
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (4, 3, 32, 32) and y.dtype == torch.int64
    # validation images are not augmented: the same tensor every time
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0]) and torch.equal(dm.test_set[2][0], dm.test_set[2][0])
    again = GLCanDataModule("cifar10", root=str(tmp_path), val_fraction=0.25, seed=1)
    again.setup()
    assert again.val_set.indices == dm.val_set.indices
    small = GLCanDataModule("cifar10", root=str(tmp_path), image_size=16)
    small.setup()
    assert small.image_shape == (3, 16, 16) and tuple(small.train_set[0][0].shape) == (3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "imagenet"}, "data.name must be one of mnist5k, cifar10"),
        ({"batch_size": 0}, "data.batch_size must be a positive integer, got 0"),
        ({"num_workers": -1}, "data.num_workers must be a non-negative integer, got -1"),
        ({"val_fraction": 1.0}, "data.val_fraction must be a number in (0, 1), got 1.0"),
        ({"image_size": 0}, "data.image_size must be a positive integer or null, got 0"),
        ({"seed": -3}, "data.seed must be a non-negative integer, got -3"),
        ({"name": "fake", "fake_num_classes": 1}, "data.fake_num_classes must be an integer >= 2, got 1"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, expected: str) -> None:
    with pytest.raises(DataError) as info:
        GLCanDataModule(**kwargs)
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)  # what the CLI entry point catches


def test_configs_parse_as_data_init_args() -> None:
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser()
    parser.add_lightning_class_args(GLCanDataModule, "data")
    names = set()
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = parser.parse_args([f"--data={path}"])
        names.add(cfg.data.name)
        assert cfg.data.name in DATASETS
    assert {"mnist5k", "cifar10", "cifar100", "fake", "folder"} <= names
    assert tuple(DATASETS) == typing.get_args(DatasetName)  # the CLI's choices and the descriptions agree
    cfg = parser.parse_args([f"--data={CONFIGS / 'mnist5k.yaml'}"])
    dm = GLCanDataModule(**{k: v for k, v in vars(cfg.data).items() if not k.startswith("__")})
    assert dm.image_shape == (1, 32, 32) and dm.batch_size == 128


# ---------------------------------------------------------------- augmentation by image size
def _steps(pipeline) -> list[str]:
    return [type(t).__name__ for t in pipeline.transforms]


@pytest.mark.parametrize("size, crop", [(32, "RandomCrop"), (64, "RandomCrop"), (96, "RandomResizedCrop"),
                                        (224, "RandomResizedCrop")])
def test_augmentation_follows_the_image_size(size: int, crop: str) -> None:
    from glcan.data.transforms import pipelines

    train, plain = pipelines(size, (0.5,), (0.5,), augment=True, hflip=False)
    assert crop in _steps(train) and "RandomHorizontalFlip" not in _steps(train)
    assert not any(s.startswith("Random") for s in _steps(plain))
    if crop == "RandomCrop":
        assert next(t for t in train.transforms if type(t).__name__ == "RandomCrop").padding == size // 8
    flipped, _ = pipelines(size, (0.5,), (0.5,), augment=True, hflip=True)
    assert "RandomHorizontalFlip" in _steps(flipped)


def test_a_folder_of_small_images_gets_the_cifar_recipe_and_hflip_is_an_option(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(tmp_path / cls / f"{i}.png")
    dm = GLCanDataModule(name="folder", root=str(tmp_path), image_size=32, val_fraction=0.2, hflip=False)
    dm.setup()
    steps = _steps(dm.train_set.transform)
    assert "RandomCrop" in steps and "RandomResizedCrop" not in steps and "RandomHorizontalFlip" not in steps


def test_train_size_keeps_a_seeded_subset_and_the_whole_test_set() -> None:
    dm = GLCanDataModule(name="mnist5k", train_size=1000, seed=3)
    dm.setup()
    again = GLCanDataModule(name="mnist5k", train_size=1000, seed=3)
    again.setup()
    assert len(dm.train_set) == 1000 and len(dm.test_set) == 500
    assert dm.train_set.indices == again.train_set.indices
    with pytest.raises(DataError, match="train_size=9999 is more than the 4000"):
        big = GLCanDataModule(name="mnist5k", train_size=9999)
        big.setup()
