"""What the stages share that is not MLflow: data, loaders, progress lines."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from mlprunes.arch import ArchSpec, GraphSpec, Spec
from mlprunes.counting import count, count_params
from mlprunes.data import DataSplits, DatasetError, load_data
from mlprunes.data.loader import DeviceLoader
from mlprunes.engine.trainer import resolve_device
from mlprunes.errors import StageError
from mlprunes.jobs import DataConfig, RunConfig


def load_splits(data: DataConfig) -> DataSplits:
    try:
        splits = load_data(data.dataset, data.data_dir, download=data.download,
                         image_size=data.image_size, val_split=data.val_split,
                         seed=data.data_seed, shapes_train=data.shapes_train,
                         shapes_test=data.shapes_test)
    except DatasetError as err:
        raise StageError(str(err)) from None
    if splits.num_classes < 2:
        raise StageError(f"{data.dataset} at {data.data_dir} has {splits.num_classes} class; "
                         f"a classifier needs at least 2")
    return splits


@dataclass
class Loaders:
    train: DeviceLoader
    eval: DeviceLoader     # validation split if held out, else test (the paper's setting)
    test: DeviceLoader


CROP_PADDING = 4   # the loader's default random-crop padding, in pixels


def make_loaders(splits: DataSplits, batch_size: int, run: RunConfig,
                 eval_batch_size: int = 500, pad: str = "zero") -> Loaders:
    device = resolve_device(run.device)
    if pad == "reflect" and min(splits.image_size) <= CROP_PADDING:
        raise StageError(f"reflection padding of {CROP_PADDING} pixels needs images larger than "
                         f"that, got {splits.image_size[0]}x{splits.image_size[1]}; use --pad "
                         f"zero (or pad = \"zero\" in the study's [train])")
    channels_last = device.type == "cuda" if run.channels_last is None else run.channels_last
    common = dict(mean=splits.mean, std=splits.std, device=device, channels_last=channels_last)
    train = DeviceLoader(splits.train.images, splits.train.labels, batch_size, train=True,
                         seed=run.seed, pad_mode=pad, **common)
    test = DeviceLoader(splits.test.images, splits.test.labels, eval_batch_size, train=False,
                        **common)
    if splits.eval_set is splits.test:
        return Loaders(train, test, test)
    val = DeviceLoader(splits.eval_set.images, splits.eval_set.labels, eval_batch_size,
                       train=False, **common)
    return Loaders(train, val, test)


# Training holds each parameter about four times in fp32: the weight, its gradient, the SGD
# momentum and a copy in the checkpoint being written. Activations come on top.
BYTES_PER_TRAINED_PARAM = 16


def check_fits(spec: ArchSpec) -> None:
    """Refuse, before it is built, a network whose parameters alone would not fit in this
    machine's memory (`family --budgets 1e11` would otherwise allocate until it is killed)."""
    params = count_params(spec)
    needed = params * BYTES_PER_TRAINED_PARAM
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return
    if needed > memory:
        raise StageError(f"{spec.name} has {params:,} parameters: training it needs at least "
                         f"{needed / 2**30:,.1f} GiB, and this machine has "
                         f"{memory / 2**30:,.1f} GiB")


def check_input(spec: Spec, image_size) -> None:
    """A traced network must take the data's images: counting it at their size runs it once,
    and an input it cannot take is one ArchError before any run."""
    if isinstance(spec, GraphSpec):
        count(spec, image_size)


def check_batches(loaders: Loaders) -> None:
    train = loaders.train
    if len(train) == 0:
        raise StageError(f"the training set ({train.num_samples} images) is smaller than one "
                         f"batch ({train.batch_size}); lower --batch-size")


def dataset_classes(data: DataConfig) -> int:
    """Classes of a dataset, without loading it where the number is known."""
    known = {"cifar10": 10, "cifar100": 100, "shapes": 10}
    if data.dataset in known:
        return known[data.dataset]
    return load_splits(data).num_classes


def say(message: str) -> None:
    """Progress for people goes to stderr; stdout ends with the run ID."""
    print(message, file=sys.stderr, flush=True)


def spec_json(spec: ArchSpec) -> str:
    return json.dumps(spec.to_dict(), indent=2, sort_keys=True)
