"""``sr_images``: colour photographs for super-resolution, from scikit-image or any folder.

**Targets and inputs.** Every photograph is a high-resolution (HR) target. Its width and
height are first cropped (bottom and right) to multiples of the scale, so that an image the
scale does not divide loses at most ``scale - 1`` rows and columns. The low-resolution (LR)
input is the HR image downscaled by ``scale`` (2, 3 or 4) with
``torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=True)``
(torch's antialiased bicubic kernel, a = -0.75), clamped to [0, 1] and rounded to 8 bits, as a
saved LR image would be (:func:`bicubic_downscale`: the one place LR images are made). Both are
RGB in [0, 1], not normalised. The bicubic *upsampling* the heads and the baseline metrics use
is ``glcan.heads.sr.bicubic_upscale`` (the same ``interpolate`` without antialiasing). **This is
not MATLAB's ``imresize``** (a = -0.5), which SR papers use to make LR images and their bicubic
rows: glcan's PSNR figures, bicubic's included, compare with each other, not with published
tables (every summary names the kernel: ``glcan.heads.sr.BICUBIC_KERNEL``).

**Training** draws ``patches_per_epoch`` random HR patches of ``patch_size`` x ``patch_size``
per epoch (an image picked uniformly, a position uniformly, aligned with the LR grid so the LR
patch is exactly the LR image's crop), each flipped horizontally, vertically and rotated by 90
degrees with probability 1/2 (``augment``). **Validation and test** use whole images, one per
batch.

**Where the photographs come from** (``root``):

* ``skimage`` (the default): the colour photographs that ship inside scikit-image, no
  download, with a fixed split by image:
  train: astronaut, motorcycle_left, motorcycle_right, hubble_deep_field, retina, color;
  val: ihc; test: chelsea, coffee, rocket
  (the stereo pair stays together; the test photographs are three distinct natural scenes).
* a folder with ``train/`` and ``test/`` subfolders (and ``val/``; else validation photographs
  are held out of ``train/`` by ``val_fraction`` and ``seed``, never taken from ``test/``): those.
* any other folder: every image under it (any depth, sorted), split by image with a
  permutation drawn from ``seed``: ``max(1, round(n * val_fraction))`` images each for val
  and test, the rest for training (at least 3 images).
* ``python train.py test`` with *another* folder than the model was trained on evaluates
  **every** photograph under it (its ``test/`` folder for the train/test layout): no split,
  however few images there are. On the training folder itself it evaluates that folder's test
  split, never the photographs the model was trained on.

**Bad input**, one line each (:class:`~glcan.data.errors.DataError`): a missing root, a
folder without photographs, too few images to split, a training image smaller than the patch
(or an evaluation image too small for SSIM's 11-pixel window after the border shave), and
greyscale images, which are **refused** (mixed with colour or alone: the networks take RGB;
convert them, e.g. ``Image.open(p).convert("RGB").save(p)``). Palette and RGBA images are
colour and are converted to RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from glcan.data.errors import DataError
from glcan.io import atomic_write
from glcan.data.folder import list_images, load_image

EMBEDDED = "skimage"  # data.root value that means the photographs inside scikit-image
EMBEDDED_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("astronaut.png", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg",
              "color.png"),
    "val": ("ihc.png",),
    "test": ("chelsea.png", "coffee.png", "rocket.jpg"),
}
SCALES = (2, 3, 4)
DEFAULT_PATCH = 96
SSIM_WINDOW = 11
GREYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def check_args(scale: Any, patch_size: Any, patches_per_epoch: Any, image_size: Any) -> None:
    """One-line DataErrors for sr_images' own arguments."""
    if isinstance(scale, bool) or scale not in SCALES:
        raise DataError(f"data.scale must be 2, 3 or 4, got {scale!r}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < scale or patch_size % scale:
        raise DataError(f"data.patch_size must be a positive multiple of data.scale ({scale}), got {patch_size!r}")
    if isinstance(patches_per_epoch, bool) or not isinstance(patches_per_epoch, int) or patches_per_epoch < 1:
        raise DataError(f"data.patches_per_epoch must be a positive integer, got {patches_per_epoch!r}")
    if image_size is not None:
        raise DataError("data.image_size does not apply to sr_images: the training patch is data.patch_size (HR pixels), "
                        "and evaluation uses whole images")


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR image of an HR one (C x H x W or N x C x H x W, in [0, 1], sides divisible by
    ``scale``): antialiased bicubic, clamped, rounded to 8 bits."""
    batched = hr if hr.dim() == 4 else hr[None]
    h, w = batched.shape[-2:]
    lr = F.interpolate(batched.float(), size=(h // scale, w // scale), mode="bicubic", align_corners=False,
                       antialias=True)
    lr = lr.clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0)
    return lr if hr.dim() == 4 else lr[0]


def skimage_folder() -> Path:
    """Where scikit-image keeps its bundled photographs."""
    try:
        import skimage
    except ImportError:
        raise DataError("data.root 'skimage' needs scikit-image (pip install scikit-image), which ships the "
                        "embedded photographs") from None
    return Path(skimage.__file__).resolve().parent / "data"


# ---------------------------------------------------------------- which photographs
def _folder(root: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"data.root '{root}' does not exist (sr_images wants a folder of photographs, "
                        f"or '{EMBEDDED}' for the embedded ones)")
    if not path.is_dir():
        raise DataError(f"data.root '{root}' is a file, not a folder of photographs")
    return path


def _photos(folder: Path, root: str) -> list[Path]:
    try:
        return list_images(str(folder))
    except DataError:
        raise DataError(f"data.root '{root}': '{folder}' contains no photographs (.png, .jpg, ...)") from None


def splits(root: str, seed: int, val_fraction: float) -> dict[str, list[Path]]:
    """``{"train", "val", "test"}`` photograph paths for ``root`` (see the module docstring)."""
    if root == EMBEDDED:
        base = skimage_folder()
        found = {s: [base / f for f in files] for s, files in EMBEDDED_SPLIT.items()}
        missing = [p for ps in found.values() for p in ps if not p.is_file()]
        if missing:
            raise DataError(f"scikit-image's photograph '{missing[0]}' is missing; reinstall scikit-image")
        return found
    path = _folder(root)
    train, test, val = path / "train", path / "test", path / "val"
    if train.is_dir() and test.is_dir():
        if val.is_dir():
            return {"train": _photos(train, root), "val": _photos(val, root), "test": _photos(test, root)}
        # No val/: validation photographs are held out of train/, never taken from test/ (a
        # variant chosen on the test photographs would be judged on what chose it).
        kept = _photos(train, root)
        n_val = max(1, round(len(kept) * val_fraction))
        if len(kept) - n_val < 1:
            raise DataError(f"data.root '{root}': train/ has {len(kept)} photograph(s), too few to hold out validation "
                            f"photographs from; add a val/ folder or more training photographs")
        perm = torch.randperm(len(kept), generator=torch.Generator().manual_seed(seed)).tolist()
        return {"train": [kept[i] for i in sorted(perm[n_val:])], "val": [kept[i] for i in sorted(perm[:n_val])],
                "test": _photos(test, root)}
    if train.is_dir() != test.is_dir():
        have, missing = ("train", "test") if train.is_dir() else ("test", "train")
        raise DataError(f"data.root '{root}' has a '{have}' folder but no '{missing}' folder; add '{path / missing}' "
                        f"or put the photographs directly under '{root}'")
    photos = _photos(path, root)
    n = len(photos)
    n_eval = max(1, round(n * val_fraction))
    if n - 2 * n_eval < 1:
        raise DataError(f"data.root '{root}' has only {n} photograph(s): too few to split into train/val/test by image "
                        "(need 3; or use train/ and test/ folders; `train.py test` evaluates every photograph of a folder)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return {"train": [photos[i] for i in sorted(perm[2 * n_eval:])], "val": [photos[i] for i in sorted(perm[:n_eval])],
            "test": [photos[i] for i in sorted(perm[n_eval:2 * n_eval])]}


def every_photo(root: str) -> list[Path]:
    """What ``train.py test`` evaluates on a folder: its ``test/`` folder for a train/test layout,
    else every photograph under it."""
    path = _folder(root)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return _photos(path / "test", root)
    return _photos(path, root)


# ---------------------------------------------------------------- checks (headers only)
def _header(path: Path) -> tuple[tuple[int, int], str]:
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception as e:  # noqa: BLE001 - unreadable files: the one-line message load_image gives
        load_image(str(path))
        raise DataError(f"cannot read image '{path}': {e}") from e


def check_photos(root: str, sets: dict[str, list[Path]], scale: int, patch_size: int) -> None:
    """Refuse greyscale photographs, training photographs smaller than the patch and evaluation
    photographs too small to measure, each in one line naming the file (PIL reads headers only)."""
    headers = {p: _header(p) for ps in sets.values() for p in ps}
    grey = [p for p, (_, mode) in headers.items() if mode in GREYSCALE_MODES]
    if grey:
        colour = [p for p, (_, mode) in headers.items() if mode not in GREYSCALE_MODES]
        what = f"mixes greyscale and colour photographs ('{grey[0].name}' is greyscale, '{colour[0].name}' colour)" \
            if colour else f"holds greyscale photographs only (e.g. '{grey[0].name}')"
        raise DataError(f"data.root '{root}' {what}: sr_images refuses greyscale (the networks take RGB); convert "
                        f"them to RGB or remove them ({len(grey)} greyscale file(s))")
    need_eval = SSIM_WINDOW + 2 * scale
    for split, paths in sets.items():
        for p in paths:
            w, h = headers[p][0]
            w, h = w - w % scale, h - h % scale
            if split == "train" and (w < patch_size or h < patch_size):
                raise DataError(f"training photograph '{p}' is {w}x{h} pixels (cropped to multiples of {scale}), smaller "
                                f"than the {patch_size}x{patch_size} training patch: lower data.patch_size or remove it")
            if split != "train" and (w < need_eval or h < need_eval):
                raise DataError(f"photograph '{p}' is {w}x{h} pixels, too small to evaluate at x{scale} "
                                f"(PSNR/SSIM need at least {need_eval}x{need_eval}: an {SSIM_WINDOW}-pixel window after "
                                f"a {scale}-pixel border shave)")


# ---------------------------------------------------------------- reading
def read_photo(path: Path) -> torch.Tensor:
    """The photograph as a 3 x H x W uint8 tensor (palette and RGBA converted to RGB); greyscale refused."""
    image = load_image(str(path), rgb=False)
    if image.mode in GREYSCALE_MODES:
        raise DataError(f"photograph '{path}' is greyscale (mode {image.mode}); sr_images refuses greyscale: "
                        "convert it to RGB or remove it")
    array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def hr_lr_pair(path: Path, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR, LR) uint8 tensors of one photograph: HR cropped to multiples of ``scale``, LR made from it."""
    hr = read_photo(path)
    h, w = hr.shape[-2:]
    hr = hr[:, : h - h % scale, : w - w % scale].contiguous()
    lr = bicubic_downscale(hr.float() / 255.0, scale)
    return hr, lr.mul(255.0).round().to(torch.uint8)


class _Pairs:
    """HR/LR pairs read on first use and kept (per process: each DataLoader worker has its own)."""

    def __init__(self, paths: list[Path], scale: int) -> None:
        self.paths, self.scale = list(paths), scale
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._cache:
            self._cache[i] = hr_lr_pair(self.paths[i], self.scale)
        return self._cache[i]


class SRPatches(Dataset):
    """``length`` random (LR, HR) training patches per epoch, float in [0, 1].

    Item ``i`` comes from photograph ``i % n``; the position and the flips/rotation are drawn
    from torch's global generator (seeded by the run's seed, as the classification crops are).
    """

    def __init__(self, paths: list[Path], scale: int, patch_size: int, length: int, augment: bool = True) -> None:
        self.pairs, self.scale, self.patch, self.length, self.augment = _Pairs(paths, scale), scale, patch_size, length, augment

    @property
    def paths(self) -> list[Path]:
        return self.pairs.paths

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = self.pairs[index % len(self.pairs)]
        lp, s = self.patch // self.scale, self.scale
        top = int(torch.randint(0, lr.shape[1] - lp + 1, ()))
        left = int(torch.randint(0, lr.shape[2] - lp + 1, ()))
        lr_p = lr[:, top:top + lp, left:left + lp]
        hr_p = hr[:, s * top:s * (top + lp), s * left:s * (left + lp)]
        if self.augment:
            flips = torch.rand(3)
            if flips[0] < 0.5:
                lr_p, hr_p = lr_p.flip(-1), hr_p.flip(-1)
            if flips[1] < 0.5:
                lr_p, hr_p = lr_p.flip(-2), hr_p.flip(-2)
            if flips[2] < 0.5:
                lr_p, hr_p = lr_p.transpose(-1, -2), hr_p.transpose(-1, -2)  # with the flips: all 8 orientations
        return lr_p.float().div(255.0), hr_p.float().div(255.0)


class SRImages(Dataset):
    """Whole (LR, HR) photographs, float in [0, 1], for validation and test (batch size 1)."""

    def __init__(self, paths: list[Path], scale: int) -> None:
        self.pairs = _Pairs(paths, scale)

    @property
    def paths(self) -> list[Path]:
        return self.pairs.paths

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = self.pairs[index]
        return lr.float().div(255.0), hr.float().div(255.0)


class SRInputs(Dataset):
    """Photographs to upscale (``predict``): each as the network's input, RGB in [0, 1]."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_photo(self.paths[index]).float().div(255.0), index


def build(root: str, seed: int, val_fraction: float, scale: int, patch_size: int, patches_per_epoch: int,
          augment: bool, every: bool = False) -> dict[str, Optional[Dataset]]:
    """``{"train", "val", "test"}`` datasets; ``every``: only a test set of every photograph under
    ``root`` (``train.py test``; see :func:`every_photo`)."""
    if every and root != EMBEDDED:
        photos = every_photo(root)
        check_photos(root, {"test": photos}, scale, patch_size)
        return {"train": None, "val": SRImages(photos, scale), "test": SRImages(photos, scale)}
    sets = splits(root, seed, val_fraction)
    check_photos(root, sets, scale, patch_size)
    return {"train": SRPatches(sets["train"], scale, patch_size, patches_per_epoch, augment),
            "val": SRImages(sets["val"], scale), "test": SRImages(sets["test"], scale)}


def broken(root: str, seed: int, val_fraction: float) -> tuple[int, list[tuple[str, str]]]:
    """Decode every photograph once: (count, [(path, what is wrong), ...])."""
    paths = sorted({p for ps in splits(root, seed, val_fraction).values() for p in ps})
    bad = []
    for p in paths:
        try:
            read_photo(p)
        except DataError as e:
            bad.append((str(p), str(e).split(": ", 1)[-1]))
    return len(paths), bad


def write_upscaled(images: list[torch.Tensor], files: list, root: str, out: Path) -> int:
    """Each upscaled image (a batch of one, in [0, 1]) as an 8-bit PNG under ``out``, at its input's
    path relative to ``root``; the number written."""
    base = Path(root).expanduser()
    for image, source in zip(images, files):
        rel = Path(source).relative_to(base) if Path(source).is_relative_to(base) else Path(Path(source).name)
        pixels = Image.fromarray(image[0].mul(255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy())
        atomic_write(out / rel.with_suffix(".png"), lambda f, im=pixels: im.save(f, format="PNG"), binary=True)
    return len(images)
