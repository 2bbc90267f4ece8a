"""The training loop shared by training, fine-tuning while pruning, and training from scratch.

`train_step` is one SGD step (forward, loss, backward, update). `Trainer` owns the model, the
optimiser and the position in the data stream (epoch, batch, step); `train_steps(n)` and
`train_epoch()` advance it, crossing epoch boundaries as the stream does. `fit` is the epoch
loop around it that evaluates and reports each epoch to callbacks (through which the stages log
and checkpoint, without the loop knowing about MLflow).
"""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mlprunes.data.loader import Batch, DeviceLoader
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.recipes import Recipe

PRECISIONS = ("auto", "fp32", "bf16")


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite: nothing after it would mean anything."""
EpochCallback = Callable[[int, dict[str, float]], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | None = None) -> torch.device:
    """The device to run on (`auto`: CUDA if there is one); a ValueError for a device that is
    not a device, or not on this machine."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name!r} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name!r} asked for, but this machine has no CUDA GPU")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{name!r} asked for, but this machine has {count} CUDA GPU(s)")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"{name!r}: mlprunes runs on cpu or cuda")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast by default on CUDA (`auto`), full fp32 elsewhere or when asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def train_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor, lr: float, device: torch.device,
               amp_dtype: torch.dtype | None, bn_scales: Sequence[torch.Tensor] = (),
               bn_l1: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on one batch: set the lr, forward, cross-entropy, backward, update.
    With `bn_l1`, network slimming's sparsity term (Liu et al., ICCV 2017): bn_l1 * sum |gamma|
    over `bn_scales`, added as its subgradient bn_l1 * sign(gamma), as their code does.
    Returns the (detached) loss and logits, for running statistics."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(device, amp_dtype):
        out = forward(x)
        loss = F.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if bn_l1:
        for gamma in bn_scales:
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma.detach()), alpha=bn_l1)
    optimizer.step()
    return loss.detach(), out.detach()


@dataclass
class Position:
    """Where training is: epochs finished, batches done in the current epoch, steps in all."""
    epoch: int = 0
    batch: int = 0
    step: int = 0


class Trainer:
    def __init__(self, model: nn.Module, recipe: Recipe, loader: DeviceLoader, *,
                 precision: str = "auto", channels_last: bool | None = None,
                 compile: bool = False, progress: bool = True, desc: str = "train"):
        self.device = loader.device
        self.amp_dtype = autocast_dtype(precision, self.device)
        if channels_last is None:
            channels_last = self.device.type == "cuda"
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._compile = compile
        self.recipe = recipe
        self.loader = loader
        self.position = Position()
        self.progress = progress
        self.desc = desc
        self._take(model)

    def _take(self, model: nn.Module) -> None:
        self.model = model.to(self.device, memory_format=self._memory_format)
        recipe = self.recipe
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=recipe.lr,
                                         momentum=recipe.momentum,
                                         weight_decay=recipe.weight_decay,
                                         nesterov=recipe.nesterov)
        # Network slimming's L1 term acts on every BatchNorm scale.
        self._bn_scales = [m.weight for m in self.model.modules()
                           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
        # The compiled module shares parameters with self.model; state dicts come from the
        # plain one so that checkpoints carry no compiler prefixes.
        self._forward = torch.compile(self.model) if self._compile else self.model

    def replace_model(self, model: nn.Module,
                      carry: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        """Train `model` from here on, in place of the current one (the same network cut to
        fewer channels): the optimiser's state for each new parameter is `carry(name, old
        state tensor, new parameter)` of the old parameter of that name. The position in the
        data stream is kept."""
        old = {name: self.optimizer.state.get(param, {})
               for name, param in self.model.named_parameters()}
        if self._compile:
            # Each cut network is compiled anew; dynamo's caches of the ones before would count
            # against its recompile limit (past which it runs uncompiled without a word).
            torch._dynamo.reset()
        self._take(model)
        for name, param in self.model.named_parameters():
            state = {key: carry(name, value, param) if isinstance(value, torch.Tensor)
                     and value.dim() > 0 else value for key, value in old[name].items()}
            if state:
                self.optimizer.state[param] = state

    @property
    def lr(self) -> float:
        p = self.position
        return self.recipe.lr_at(p.epoch, p.batch, len(self.loader))

    def train_epoch(self) -> dict[str, float]:
        """Finish the current epoch."""
        return self.train_steps(len(self.loader) - self.position.batch)

    def train_steps(self, steps: int) -> dict[str, float]:
        """Train `steps` SGD steps, continuing the data stream across epoch boundaries."""
        pos = self.position
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(total=steps, desc=f"{self.desc} epoch {pos.epoch + 1}", unit="step",
                   leave=False, file=sys.stderr, disable=not self.progress, mininterval=1.0,
                   dynamic_ncols=True)
        start = time.perf_counter()
        for x, y in islice(self._stream(), steps):
            lr = self.lr
            loss, out = train_step(self._forward, self.optimizer, x, y, lr,
                                   self.device, self.amp_dtype, self._bn_scales,
                                   self.recipe.bn_l1)
            # Accumulated on the device: no host sync per step.
            loss_sum += loss * len(y)
            wrong += (out.argmax(1) != y).sum()
            seen += len(y)
            self._advance()
            bar.update(1)
            if not bar.disable:
                bar.set_description(f"{self.desc} epoch {pos.epoch + 1}", refresh=False)
                if bar.n % 25 == 0:
                    elapsed = time.perf_counter() - start
                    bar.set_postfix(loss=f"{loss.item():.3f}",
                                    err=f"{100.0 * wrong.item() / seen:.1f}%", lr=f"{lr:.3g}",
                                    img_s=f"{seen / elapsed:.0f}", refresh=False)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        bar.close()
        seen = max(seen, 1)
        # Checked once per call, not per step: a host sync per step would cost more than a few
        # wasted steps after a divergence.
        if not math.isfinite(loss_sum.item()):
            raise TrainingDiverged(f"the training loss became {loss_sum.item()} by step "
                                   f"{pos.step} (epoch {pos.epoch + 1}); lower --lr")
        return {
            "train_loss": loss_sum.item() / seen,
            "train_error": 100.0 * wrong.item() / seen,
            "images_per_second": seen / elapsed if elapsed > 0 else float("nan"),
            "seconds": elapsed,
        }

    def _stream(self) -> Iterator[Batch]:
        """Training batches from the current position on, epoch after epoch. The position
        moves only when a batch has been trained on (`_advance`), so a stream cut short leaves
        the trainer exactly where the next one starts."""
        while True:
            yield from self.loader.epoch(self.position.epoch, self.position.batch)

    def _advance(self) -> None:
        pos = self.position
        pos.batch += 1
        pos.step += 1
        if pos.batch == len(self.loader):
            pos.epoch += 1
            pos.batch = 0

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "position": asdict(self.position), "recipe": self.recipe.to_dict(),
                "data_seed": self.loader.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` stopped: weights, optimizer, position and the data stream."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.position = Position(**state["position"])
        self.loader.seed = state["data_seed"]


def fit(trainer: Trainer, eval_loader: DeviceLoader | None = None,
        callbacks: Sequence[EpochCallback] = ()) -> dict[str, float]:
    """Train until `trainer.recipe.epochs` epochs are done (from wherever the trainer is),
    evaluating after each epoch; each callback gets (epochs done, that epoch's metrics)."""
    metrics: dict[str, float] = {}
    while trainer.position.epoch < trainer.recipe.epochs:
        lr = trainer.lr
        stats = trainer.train_epoch()
        metrics = {
            "train_loss": stats["train_loss"],
            "train_error": stats["train_error"],
            "lr": lr,
            "epoch_seconds": stats["seconds"],
            "images_per_second": stats["images_per_second"],
        }
        if eval_loader is not None:
            result = evaluate(trainer.model, eval_loader, trainer.amp_dtype)
            metrics["val_error"] = result["error"]
            metrics["val_loss"] = result["loss"]
        for callback in callbacks:
            callback(trainer.position.epoch, metrics)
    return metrics
