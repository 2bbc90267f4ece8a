"""What the stages share that is not MLflow: data and run settings, loaders, checkpoints."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, fields
from typing import Any

from mlprunes.arch import ArchSpec
from mlprunes.counting import count
from mlprunes.data import DataSplits, DatasetError, load_data
from mlprunes.data.loader import DeviceLoader
from mlprunes.engine.recipes import Recipe
from mlprunes.engine.trainer import autocast_dtype, resolve_device
from mlprunes.stages.tracking import StageError


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    data_dir: str = "data"
    download: bool = False
    val_split: float = 0.0
    image_size: int | None = None
    shapes_train: int = 5000
    shapes_test: int = 1000
    data_seed: int = 0

    @classmethod
    def from_params(cls, params: dict[str, str]) -> "DataConfig":
        """The data settings a finished run logged, so that later stages see the same data."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in params and params[f.name] != "":
                raw = params[f.name]
                kind = f.type if isinstance(f.type, str) else f.type.__name__
                if "bool" in kind:
                    kwargs[f.name] = raw == "true"
                elif "float" in kind:
                    kwargs[f.name] = float(raw)
                elif "int" in kind:
                    kwargs[f.name] = int(raw)
                else:
                    kwargs[f.name] = raw
        return cls(**kwargs)


@dataclass(frozen=True)
class RunConfig:
    """How to run (not what): device, precision, seeds, progress."""
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    seed: int = 0
    progress: bool = True


def load_splits(data: DataConfig) -> DataSplits:
    try:
        return load_data(data.dataset, data.data_dir, download=data.download,
                         image_size=data.image_size, val_split=data.val_split,
                         seed=data.data_seed, shapes_train=data.shapes_train,
                         shapes_test=data.shapes_test)
    except DatasetError as err:
        raise StageError(str(err)) from None


@dataclass
class Loaders:
    train: DeviceLoader
    eval: DeviceLoader     # validation split if held out, else test (the paper's setting)
    test: DeviceLoader


def make_loaders(splits: DataSplits, batch_size: int, run: RunConfig,
                 eval_batch_size: int = 500) -> Loaders:
    device = resolve_device(run.device)
    channels_last = device.type == "cuda" if run.channels_last is None else run.channels_last
    common = dict(mean=splits.mean, std=splits.std, device=device, channels_last=channels_last)
    train = DeviceLoader(splits.train.images, splits.train.labels, batch_size, train=True,
                         seed=run.seed, **common)
    test = DeviceLoader(splits.test.images, splits.test.labels, eval_batch_size, train=False,
                        **common)
    if splits.val is None:
        return Loaders(train, test, test)
    val = DeviceLoader(splits.val.images, splits.val.labels, eval_batch_size, train=False,
                       **common)
    return Loaders(train, val, test)


def result_settings(data: DataConfig, run: RunConfig) -> dict[str, Any]:
    """The data and run settings that change a result. Not where the data lives or whether it
    may be downloaded; the precision as it takes effect on the device (`auto` is bf16 on a GPU
    and fp32 on a CPU, two different results)."""
    settings = {k: v for k, v in vars(data).items() if k not in ("data_dir", "download")}
    device = resolve_device(run.device)
    precision = "bf16" if autocast_dtype(run.precision, device) is not None else "fp32"
    return {**settings, "seed": run.seed, "precision": precision}


def check_batches(loaders: Loaders) -> None:
    train = loaders.train
    if len(train) == 0:
        raise StageError(f"the training set ({train.num_samples} images) is smaller than one "
                         f"batch ({train.batch_size}); lower --batch-size")


def config_key(stage: str, settings: dict[str, Any]) -> str:
    """A digest of everything that determines a stage's result: equal keys, reusable runs."""
    text = json.dumps({"stage": stage, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def training_macs(flops_per_image: float, images: int) -> float:
    """Multiply-accumulates spent training on `images` images: forward and backward, taken as
    three forward passes (the usual estimate)."""
    return 3.0 * flops_per_image * images


def size_metrics(spec: ArchSpec, image_size: tuple[int, int]) -> dict[str, float]:
    counts = count(spec, image_size)
    return {"params": counts.params, "flops": counts.flops,
            "channels_left": spec.prunable_channels}


def say(message: str) -> None:
    """Progress for people goes to stderr; stdout ends with the run ID."""
    print(message, file=sys.stderr, flush=True)


def spec_json(spec: ArchSpec) -> str:
    return json.dumps(spec.to_dict(), indent=2, sort_keys=True)


def recipe_params(recipe: Recipe) -> dict[str, Any]:
    data = recipe.to_dict()
    return {k: data[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                 "schedule", "milestones", "gamma", "nesterov")}



def recipe_from_params(params: dict[str, str]) -> Recipe:
    """The recipe a finished run logged."""
    try:
        return Recipe(epochs=int(params["epochs"]), batch_size=int(params["batch_size"]),
                      lr=float(params["lr"]), momentum=float(params["momentum"]),
                      weight_decay=float(params["weight_decay"]), schedule=params["schedule"],
                      milestones=tuple(json.loads(params["milestones"])),
                      gamma=float(params["gamma"]), nesterov=params["nesterov"] == "true")
    except (KeyError, ValueError) as err:
        raise StageError(f"cannot read the training recipe from the run's params ({err})"
                         ) from None


def dataset_classes(data: DataConfig) -> int:
    """Classes of a dataset, without loading it where the number is known."""
    known = {"cifar10": 10, "cifar100": 100, "shapes": 10}
    if data.dataset in known:
        return known[data.dataset]
    return load_splits(data).num_classes
