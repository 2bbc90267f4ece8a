"""Datasets as uint8 image tensors in memory: CIFAR-10/100, any ImageFolder tree, and `shapes`.

Every dataset comes back as `DataSplits`: train (minus an optional seeded validation hold-out),
val, test, the class names, and the per-channel mean and std that the loader normalises with.
CIFAR is downloaded only when asked (through torchvision) and read by our own reader of the
standard pickle batches, so that tests can exercise it on small fake folders.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlprunes.data.shapes import SHAPE_CLASSES, make_shapes

DATASETS = ("cifar10", "cifar100", "imagefolder", "shapes")
DEFAULT_DATA_DIR = Path("data")
IMAGEFOLDER_TEST_FRACTION = 0.2
# The largest image an ImageFolder may hold (8192 x 8192): a few hundred bytes of PNG can claim
# billions of pixels, and decoding one would take all the memory there is.
MAX_IMAGE_PIXELS = 2 ** 26

# Independent random streams per purpose, so that e.g. the validation hold-out does not change
# when the shapes images do. Each stream is numpy's generator seeded with [seed, stream].
_SHAPES_TRAIN, _SHAPES_TEST, _IMAGEFOLDER_SPLIT, _VAL_SPLIT = range(4)


class DatasetError(Exception):
    """A dataset that cannot be loaded; the message says what was looked for and how to fix it."""


@dataclass
class ImageSet:
    """Images (uint8, N x 3 x H x W, CPU, contiguous) and their labels (int64, N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DatasetError(f"images must be uint8 N x 3 x H x W, got {images.dtype} "
                               f"{tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images) or labels.is_floating_point():
            raise DatasetError(f"labels must be {len(images)} integers, got {labels.dtype} "
                               f"{tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64).contiguous()

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSplits:
    """A dataset's splits, classes and normalisation (mean and std in [0, 1] pixel units)."""

    name: str
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return tuple(self.train.images.shape[-2:])

    @property
    def eval_set(self) -> ImageSet:
        """The set to validate on: the hold-out if there is one, else the test set (as the
        seed's code does)."""
        return self.val if self.val is not None else self.test


def load_data(name: str, data_dir: str | Path | None = None, download: bool = False,
              image_size: int | None = None, val_split: float = 0.0, seed: int = 0,
              shapes_train: int = 5000, shapes_test: int = 1000) -> DataSplits:
    """Load dataset `name` (one of DATASETS) with `val_split` of its training set held out.

    `data_dir` (default `data`) is where CIFAR lives or is downloaded to, or the ImageFolder
    tree; `image_size` resizes ImageFolder images and sizes `shapes` (default 32; CIFAR is
    32 only). `seed` drives the shapes images, the ImageFolder split and the hold-out.
    Raises DatasetError with a one-line message on any problem.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    _check_val_split(val_split)
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise DatasetError(f"image size must be a positive integer, got {image_size!r}")

    if name in _CIFAR:
        layout = _CIFAR[name]
        if image_size not in (None, 32):
            raise DatasetError(f"{layout.title} images are 32x32; image size {image_size} is "
                               "not supported (only imagefolder and shapes are resized)")
        train, test, classes = _load_cifar(layout, root, download)
        mean, std = layout.mean, layout.std
        train, val = _hold_out(train, val_split, seed)
    else:
        if name == "imagefolder":
            train, test, classes = _load_imagefolder(root, image_size or 32, seed)
        else:
            train, test, classes = _load_shapes(image_size or 32, seed, shapes_train, shapes_test)
        # Statistics of what is trained on: the hold-out is left out of them.
        train, val = _hold_out(train, val_split, seed)
        mean, std = _channel_stats(train.images)
    return DataSplits(name=name, train=train, val=val, test=test, classes=classes,
                      mean=mean, std=std)


# -- CIFAR ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    """Where a CIFAR variant keeps its batches and what its pickles call things."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str
    torchvision_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR = {
    "cifar10": _CifarLayout(
        title="CIFAR-10", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_file="test_batch",
        meta_file="batches.meta", names_key="label_names", labels_key="labels",
        torchvision_class="CIFAR10",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": _CifarLayout(
        title="CIFAR-100", folder="cifar-100-python",
        train_files=("train",), test_file="test",
        meta_file="meta", names_key="fine_label_names", labels_key="fine_labels",
        torchvision_class="CIFAR100",
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}


def _load_cifar(layout: _CifarLayout, root: Path,
                download: bool) -> tuple[ImageSet, ImageSet, list[str]]:
    if download:
        _download_cifar(layout, root)
    folder = root / layout.folder
    for file in (*layout.train_files, layout.test_file, layout.meta_file):
        if not (folder / file).is_file():
            raise DatasetError(f"{layout.title} not found: looked for {folder / file}; pass "
                               f"--download to fetch it into {root}, or --data-dir DIR where "
                               "it already is")
    classes = _read_cifar_classes(folder / layout.meta_file, layout)
    parts = [_read_cifar_batch(folder / f, layout, len(classes)) for f in layout.train_files]
    train = ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    test = _read_cifar_batch(folder / layout.test_file, layout, len(classes))
    return train, test, classes


def _download_cifar(layout: _CifarLayout, root: Path) -> None:
    """Fetch and verify the archive through torchvision (a no-op when it is already there)."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, layout.torchvision_class)
    try:
        # torchvision prints progress to stdout, which belongs to the run ID a stage prints.
        with contextlib.redirect_stdout(sys.stderr):
            dataset_class(str(root), train=True, download=True)
    except Exception as err:  # network and archive failures come in many exception types
        raise DatasetError(f"could not download {layout.title} into {root}: {err}") from err


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers and nothing else, so that a
    tampered data file cannot run code."""

    _NUMPY = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str) -> Any:
        # numpy's array rebuilders (numpy.core.* in the real Python 2 files, numpy._core.* when
        # numpy 2 writes them), and _codecs.encode, which protocol 2 uses to write bytes.
        if (module.split(".")[0] == "numpy" and name in self._NUMPY) or (
                module == "_codecs" and name == "encode"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path, title: str) -> dict[str, Any]:
    """The dict in a CIFAR pickle, with str keys (Python 2 pickles need latin1 decoding)."""
    try:
        with path.open("rb") as file:
            obj = _ArrayUnpickler(file, encoding="latin1").load()
    except Exception as err:  # a corrupt pickle can fail in almost any way
        raise DatasetError(f"corrupt {title} file {path}: cannot unpickle it "
                           f"({type(err).__name__}: {err}); delete it and pass --download "
                           "to fetch it again") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"corrupt {title} file {path}: expected a dict, found "
                           f"{type(obj).__name__}; delete it and pass --download to fetch it again")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_classes(path: Path, layout: _CifarLayout) -> list[str]:
    names = _unpickle(path, layout.title).get(layout.names_key)
    if not isinstance(names, (list, tuple)) or not names or not all(
            isinstance(n, (str, bytes)) for n in names):
        raise DatasetError(f"corrupt {layout.title} file {path}: no list of class names under "
                           f"{layout.names_key!r}; delete it and pass --download to fetch it again")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _read_cifar_batch(path: Path, layout: _CifarLayout, num_classes: int) -> ImageSet:
    """One batch: rows of 3072 bytes (the red, green, then blue 32x32 planes, row-major)."""
    entry = _unpickle(path, layout.title)

    def corrupt(why: str) -> DatasetError:
        return DatasetError(f"corrupt {layout.title} file {path}: {why}; delete it and pass "
                            "--download to fetch it again")

    if "data" not in entry or layout.labels_key not in entry:
        raise corrupt(f"no 'data' and {layout.labels_key!r} entries")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        found = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise corrupt(f"expected uint8 image rows of shape (N, 3072), found {found}")
    try:
        labels = np.asarray(entry[layout.labels_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise corrupt(f"{layout.labels_key!r} is not a list of integers") from None
    if labels.shape != (len(data),):
        raise corrupt(f"{len(data)} images but {layout.labels_key!r} has shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt(f"labels outside 0..{num_classes - 1}")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.from_numpy(labels))


# -- ImageFolder ---------------------------------------------------------------------------------


def _load_imagefolder(root: Path, size: int, seed: int) -> tuple[ImageSet, ImageSet, list[str]]:
    """A class-per-folder tree, split by its train/ and test/ subfolders if it has them, else
    by a seeded per-class split holding out IMAGEFOLDER_TEST_FRACTION of each class."""
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root} is not a directory; pass --data-dir "
                           "DIR, a folder with one subfolder of images per class")
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() != test_dir.is_dir():
        have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
        raise DatasetError(f"{root} has a {have}/ folder but no {lack}/ folder: give both, or "
                           "neither (then each class folder is split 80/20)")
    if train_dir.is_dir():
        classes, train_samples = _scan_imagefolder(train_dir)
        test_classes, test_samples = _scan_imagefolder(test_dir)
        if classes != test_classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise DatasetError(f"{train_dir} and {test_dir} have different classes: only in "
                               f"train {only_train}, only in test {only_test}")
        return _read_images(train_samples, size), _read_images(test_samples, size), classes

    classes, samples = _scan_imagefolder(root)
    everything = _read_images(samples, size)
    train_idx, test_idx = _stratified_split(everything.labels.numpy(), IMAGEFOLDER_TEST_FRACTION,
                                            _rng(seed, _IMAGEFOLDER_SPLIT))
    return _subset(everything, train_idx), _subset(everything, test_idx), classes


def _scan_imagefolder(directory: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names and (path, class index) pairs, as torchvision's ImageFolder finds them."""
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(directory))
    except FileNotFoundError as err:  # no class folders, or a class folder with no images
        raise DatasetError(f"no images found in {directory}: {str(err).strip()} (expected one "
                           "subfolder of images per class)") from None
    return list(found.classes), list(found.samples)


def _read_images(samples: list[tuple[str, int]], size: int) -> ImageSet:
    """Every image as RGB, resized (squashed, antialiased) to size x size."""
    import warnings

    from PIL import Image

    images = np.empty((len(samples), size, size, 3), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        try:
            with warnings.catch_warnings():  # PIL warns of what is refused just below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(path)  # reads the header only
            with opened as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise DatasetError(
                        f"image {path} is {image.width} x {image.height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} an image may have here; shrink it first")
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                images[i] = np.asarray(image)
        except Image.DecompressionBombError:  # so large that PIL refuses to open it
            raise DatasetError(f"image {path} claims more than {MAX_IMAGE_PIXELS:,} pixels, "
                               f"the most an image may have here; shrink it first") from None
        except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
            raise DatasetError(f"cannot read image {path}: {err}") from None
    labels = torch.tensor([target for _, target in samples], dtype=torch.int64)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)


def _stratified_split(labels: np.ndarray, fraction: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) indices holding out `fraction` of every class, rounded, at least
    one image of any class that has two or more and never a class's last image."""
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = round(fraction * len(members))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        held.append(rng.permutation(members)[:count])
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


# -- shapes --------------------------------------------------------------------------------------


def _load_shapes(size: int, seed: int, n_train: int,
                 n_test: int) -> tuple[ImageSet, ImageSet, list[str]]:
    if size < 8:
        raise DatasetError(f"shapes images must be at least 8 pixels, got image size {size}")
    for what, n in (("shapes_train", n_train), ("shapes_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DatasetError(f"{what} must be a positive number of images, got {n!r}")
    train = ImageSet(*make_shapes(n_train, size, seed, _SHAPES_TRAIN))
    test = ImageSet(*make_shapes(n_test, size, seed, _SHAPES_TEST))
    return train, test, list(SHAPE_CLASSES)


# -- shared --------------------------------------------------------------------------------------


def _check_val_split(val_split: float) -> None:
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) \
            or not 0.0 <= val_split < 1.0:
        raise DatasetError(f"val_split must be a fraction in [0, 1), got {val_split!r}")


def _hold_out(train: ImageSet, val_split: float, seed: int) -> tuple[ImageSet, ImageSet | None]:
    """(train, val): round(val_split * N) training images (at least one) held out at random."""
    if val_split == 0:
        return train, None
    n = len(train)
    count = max(1, round(val_split * n))
    if count >= n:
        raise DatasetError(f"val_split {val_split} of {n} training images leaves none to train "
                           "on; use a smaller fraction")
    order = _rng(seed, _VAL_SPLIT).permutation(n)
    # Sorted, so that both sets keep the original order of the images they hold.
    return _subset(train, np.sort(order[count:])), _subset(train, np.sort(order[:count]))


def _subset(images: ImageSet, indices: np.ndarray) -> ImageSet:
    idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return ImageSet(images.images[idx], images.labels[idx])


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, in float64 chunks (a float
    copy of a whole large dataset would not fit in memory)."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    per_image = images[0].numel()
    for chunk in images.split(max(1, 2**22 // per_image)):
        x = chunk.to(torch.float64) / 255
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    count = len(images) * per_image // 3
    mean = total / count
    var = (squares / count - mean * mean).clamp(min=0)
    # A channel that never varies would divide by zero when normalised; one grey level is plenty.
    std = var.sqrt().clamp(min=1 / 255)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _rng(seed: int, stream: int) -> np.random.Generator:
    # SeedSequence wants non-negative entries; the modulus keeps distinct seeds distinct.
    return np.random.default_rng([seed % 2**64, stream])
