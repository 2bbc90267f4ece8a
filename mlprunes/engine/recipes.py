"""Training recipes: the paper's hyperparameters as named presets whose values can be overridden.

A recipe's learning-rate milestones are fractions of the run, so a 15-epoch run anneals as the
200-epoch one does (WRN: x0.2 at 30%, 60%, 80%; DenseNet-BC: x0.1 at 50%, 75%).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    schedule: str                            # "step" | "cosine" | "constant"
    milestones: tuple[float, ...] = ()       # fractions of the run, for "step"
    gamma: float = 0.1                       # lr factor at each milestone
    nesterov: bool = False
    pad: str = "zero"                        # random-crop padding: "zero" | "reflect"
    bn_l1: float = 0.0                       # network slimming: L1 on BatchNorm scales

    def key_settings(self) -> dict[str, Any]:
        """The recipe as a job's key sees it: every field, and `bn_l1` only when it is set, so
        that runs made before it existed keep their keys."""
        data = self.to_dict()
        if not self.bn_l1:
            data.pop("bn_l1")
        return data

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        for name in ("lr", "momentum", "weight_decay", "gamma"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number, got "
                                 f"{getattr(self, name)}")
        if self.lr < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"lr and weight decay must be >= 0 and momentum in [0, 1): {self}")
        if self.gamma <= 0:
            raise ValueError(f"gamma (the lr factor at each milestone) must be > 0, got "
                             f"{self.gamma}")
        if not (math.isfinite(self.bn_l1) and self.bn_l1 >= 0):
            raise ValueError(f"bn_l1 (the L1 weight on BatchNorm scales) must be a finite "
                             f"number >= 0, got {self.bn_l1}")
        if self.pad not in ("zero", "reflect"):
            raise ValueError(f"pad must be zero or reflect, got {self.pad!r}")
        if self.schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"schedule must be step, cosine or constant, got {self.schedule!r}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of the run in (0, 1), got "
                             f"{self.milestones}")

    def milestone_epochs(self) -> tuple[int, ...]:
        return tuple(int(round(m * self.epochs)) for m in self.milestones)

    def lr_at(self, epoch: int, batch: int = 0, batches_per_epoch: int = 1) -> float:
        """The learning rate for a step: per epoch for "step", per step for "cosine"."""
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "step":
            passed = sum(epoch >= m for m in self.milestone_epochs())
            return self.lr * self.gamma ** passed
        total = max(1, self.epochs * batches_per_epoch)
        t = min(1.0, (epoch * batches_per_epoch + batch) / total)
        return 0.5 * self.lr * (1 + math.cos(math.pi * t))

    def override(self, **changes: Any) -> "Recipe":
        """A copy with the given fields changed; None means keep the preset's value."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "Recipe":
        """A recipe logged as strings (MLflow params of `to_dict()`), read back."""
        return cls(epochs=int(params["epochs"]), batch_size=int(params["batch_size"]),
                   lr=float(params["lr"]), momentum=float(params["momentum"]),
                   weight_decay=float(params["weight_decay"]), schedule=params["schedule"],
                   milestones=tuple(json.loads(params["milestones"])),
                   gamma=float(params["gamma"]), nesterov=params["nesterov"] == "true",
                   pad=params.get("pad") or "zero",   # runs from before pad was logged
                   bn_l1=float(params.get("bn_l1") or 0.0))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        return data


PRESETS: dict[str, Recipe] = {
    # Zagoruyko & Komodakis' WRN recipe, as the paper's code uses it (its training script
    # pads crops with reflection).
    "wrn": Recipe(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                  schedule="step", milestones=(0.3, 0.6, 0.8), gamma=0.2, pad="reflect"),
    # Huang et al.'s DenseNet recipe: 300 epochs, batch 64, x0.1 at 50% and 75%.
    "densenet": Recipe(epochs=300, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4,
                       schedule="step", milestones=(0.5, 0.75), gamma=0.1, pad="reflect"),
    # Liu et al. (ICLR 2019, "Rethinking the value of network pruning") train their CIFAR
    # ResNets and VGGs for 160 epochs, batch 64, SGD lr 0.1 divided by 10 at 50% and 75%,
    # momentum 0.9, weight decay 1e-4, crops padded with zeros (torchvision's RandomCrop
    # padding=4): the recipe of every network but the seed's two families.
    "cifar": Recipe(epochs=160, batch_size=64, lr=0.1, momentum=0.9, weight_decay=1e-4,
                    schedule="step", milestones=(0.5, 0.75), gamma=0.1, pad="zero"),
}

# Fine-tuning while pruning: a small constant learning rate, crops padded with zeros (the
# paper's pruning script).
PRUNE_PRESETS: dict[str, Recipe] = {
    "wrn": Recipe(epochs=0, batch_size=128, lr=8e-4, momentum=0.9, weight_decay=5e-4,
                  schedule="constant"),
    "densenet": Recipe(epochs=0, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4,
                       schedule="constant"),
    # The paper pruned neither ResNet-56 nor VGG: its DenseNet-BC fine-tuning (lr 1e-3, the
    # batch and weight decay of Liu et al.'s recipe) is our choice for them, stated as ours.
    "cifar": Recipe(epochs=0, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4,
                    schedule="constant"),
}


# Fine-tuning a pruned network after pruning (the `finetune` stage).
FINETUNE_PRESETS: dict[str, Recipe] = {
    # Liu et al. (ICLR 2019) fine-tune their pruned CIFAR networks for 40 epochs with SGD at a
    # constant lr 1e-3, momentum 0.9, weight decay 1e-4, batch 64, crops padded with zeros
    # (the defaults of cifar/l1-norm-pruning/main_finetune.py in their code, the baseline their
    # Scratch-E and Scratch-B runs are compared against).
    "liu": Recipe(epochs=40, batch_size=64, lr=1e-3, momentum=0.9, weight_decay=1e-4,
                  schedule="constant", pad="zero"),
}
# `base`: the base run's own recipe (its epochs, batch, schedule, weight decay, padding) with
# its initial learning rate times this. Trained weights restarted at the initial rate would
# lose much of what they learned; a tenth is the usual fine-tuning rate (and the rate the
# DenseNet and CIFAR step schedules reach at their first milestone).
BASE_FINETUNE_LR_SCALE = 0.1
FINETUNE_PRESET_NAMES = (*FINETUNE_PRESETS, "base")


def finetune_preset(name: str, base: Recipe) -> Recipe:
    """A fine-tuning recipe: a named preset, or `base`, the base run's recipe `base` at
    BASE_FINETUNE_LR_SCALE times its learning rate."""
    if name == "base":
        return replace(base, lr=base.lr * BASE_FINETUNE_LR_SCALE, bn_l1=0.0)
    if name not in FINETUNE_PRESETS:
        raise ValueError(f"unknown fine-tuning preset {name!r}; choose one of "
                         f"{', '.join(FINETUNE_PRESET_NAMES)}")
    return FINETUNE_PRESETS[name]


def default_preset(family: str) -> str:
    """The recipe a network trains with unless told: its family's own for the seed's two,
    Liu et al.'s CIFAR recipe for every other network."""
    return family if family in PRESETS else "cifar"


def preset(name: str, pruning: bool = False) -> Recipe:
    table = PRUNE_PRESETS if pruning else PRESETS
    if name not in table:
        raise ValueError(f"unknown recipe preset {name!r}; choose one of {', '.join(table)}")
    return table[name]
