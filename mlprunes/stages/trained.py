"""The run of a network trained from a fresh init (`train`, `scratch`, each family member), and
the final logging every network-making stage ends with (`prune` too).

`pruned_training` says how to train a network derived from a prune run (`scratch`, `family`).

`prepare` does everything that can fail on bad input before a run is opened; `train_in_run`
trains inside the open run, logging per-epoch curves and resumable checkpoints, and finishes with
the test metrics, the final checkpoint and the logged model.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from mlprunes.arch import ArchSpec
from mlprunes.counting import count, size_metrics, training_macs
from mlprunes.data import DataSplits
from mlprunes.engine.checkpoint import make_checkpoint, save_checkpoint
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.recipes import Recipe
from mlprunes.engine.trainer import Trainer, fit, seed_everything
from mlprunes.errors import StageError
from mlprunes.signals import deferred
from mlprunes.jobs import DataConfig, RunConfig
from mlprunes.nets import build
from mlprunes.pruning import build_sliced
from mlprunes.stages import contract, digests, kept, tracking
from mlprunes.stages.contract import PrunedSource
from mlprunes.stages.common import (Loaders, check_batches, check_fits, check_input,
                                    load_splits, make_loaders, say, spec_json)


@dataclass(frozen=True)
class Training:
    """One network to train, everything resolved."""
    spec: ArchSpec
    recipe: Recipe
    data: DataConfig
    run: RunConfig
    label: str                 # the stage, for progress lines
    checkpoint_every: int = 1
    log_model: bool = True
    init: str = "fresh"        # fresh: build(spec); sliced: a full-network init, cut to spec
    model_name: str = ""       # the logged model's name [the network's]
    # finetune: the network to train on, its weights kept (None: a new init, as `init` says),
    # and the training it had before, which this run's train_macs continue.
    start: torch.nn.Module | None = None
    macs_before: float = 0.0


@dataclass
class Prepared:
    training: Training
    splits: DataSplits
    loaders: Loaders
    trainer: Trainer


def prepare(training: Training) -> Prepared:
    """Data, network and trainer, ready to train: bad data is an error before any run exists."""
    spec = training.spec
    check_fits(spec)
    splits = load_splits(training.data)
    check_input(spec, splits.image_size)
    if spec.num_classes != splits.num_classes:
        raise StageError(
            f"the network has {spec.num_classes} classes but {training.data.dataset} has "
            f"{splits.num_classes}; drop --num-classes or set it to {splits.num_classes}")
    seed_everything(training.run.seed)
    try:
        model = (training.start if training.start is not None
                 else build(spec) if training.init == "fresh" else build_sliced(spec))
    except ValueError as err:
        raise StageError(str(err)) from None
    loaders = make_loaders(splits, training.recipe.batch_size, training.run,
                           pad=training.recipe.pad)
    check_batches(loaders)
    run = training.run
    trainer = Trainer(model, training.recipe, loaders.train, precision=run.precision,
                      channels_last=run.channels_last, compile=run.compile,
                      progress=run.progress, desc=training.label)
    return Prepared(training, splits, loaders, trainer)


def training_params(training: Training) -> dict[str, Any]:
    """Everything a training run logs as params (stages add their own)."""
    run = training.run
    return {**training.recipe.to_dict(), **vars(training.data), "seed": run.seed,
            "precision": run.precision, **contract.arch_params(training.spec),
            "device": run.device, "compile": run.compile, "channels_last": run.channels_last,
            "log_model": training.log_model, "checkpoint_every": training.checkpoint_every}


def train_in_run(prepared: Prepared, run_id: str, name: str, params: dict[str, Any],
                 resume: bool = False) -> dict[str, float]:
    """Train in the open run `run_id` (continuing its last checkpoint if `resume`); return the
    final metrics."""
    t, trainer, loaders = prepared.training, prepared.trainer, prepared.loaders
    image_size = prepared.splits.image_size
    logged_through, checkpoint = -1, None
    with tracking.scratch_dir(t.label) as tmp:
        if resume:
            logged_through = tracking.last_logged_step(run_id, "train_loss")
            saved = contract.LAST in tracking.list_artifacts(run_id, contract.CHECKPOINTS)
            checkpoint = contract.resume_checkpoint(
                run_id, contract.LAST if saved else None, tmp / "resume",
                map_location=trainer.device,
                progress=lambda c: c["trainer"]["position"]["step"])
        if checkpoint is not None:
            if checkpoint["spec"] != trainer.model.spec:
                raise StageError(f"cannot resume run {run_id}: its checkpoint is a different "
                                 f"network")
            trainer.load_state_dict({"model": checkpoint["model"], **checkpoint["trainer"]})
            kept_at = checkpoint.get("kept_at")
            say(f"resuming run {run_id} after epoch {trainer.position.epoch}"
                + (f" from the checkpoint kept at {kept_at}" if kept_at else ""))
        else:
            if resume:  # killed before its first checkpoint: the same run, from the start
                say(f"run {run_id} saved no checkpoint; training it again from the start")
            tracking.log_params({**training_params(t), **params})  # skips those logged
            digests.log_text(spec_json(t.spec), contract.ARCH)
            if tracking.last_logged_step(run_id, "params") < 0:
                mlflow.log_metrics(size_metrics(t.spec, image_size), step=0)
            if t.start is not None and tracking.last_logged_step(run_id, "test_error") < 0:
                log_start(trainer, loaders)
        say(f"[{t.label}] {name}: {t.spec.name}, "
            f"{size_metrics(t.spec, image_size)['params']:,.0f} params, {t.recipe.epochs} "
            f"epochs on {t.data.dataset} ({len(prepared.splits.train)} images), run {run_id}")

        def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
            contract.fence(run_id)
            if epoch > logged_through:  # epochs after the checkpoint a killed run logged
                mlflow.log_metrics(metrics, step=epoch)
            say(f"[{t.label}] epoch {epoch}/{t.recipe.epochs} "
                f"loss {metrics['train_loss']:.3f} train err {metrics['train_error']:.2f}% "
                f"val err {metrics.get('val_error', float('nan')):.2f}% "
                f"({metrics['images_per_second']:.0f} img/s)")
            if epoch % t.checkpoint_every == 0 and epoch < t.recipe.epochs:
                checkpoint = make_checkpoint(trainer.model, trainer_state=trainer.state_dict())
                with deferred():  # a stop signal waits until the checkpoint is whole
                    # Kept on this machine too, in case the store is lost before the upload.
                    path = save_checkpoint(checkpoint, kept.path(run_id, Path(contract.LAST).name))
                    digests.log_file(path, contract.CHECKPOINTS)
                    kept.uploaded(path)

        fit(trainer, loaders.eval, callbacks=[log_epoch])
        spent = t.macs_before + training_macs(count(t.spec, image_size).flops,
                                              trainer.position.step * t.recipe.batch_size)
        return log_final(trainer.model, trainer.amp_dtype, loaders, image_size, tmp,
                         t.log_model, step=trainer.position.epoch, train_macs=spent,
                         model_name=t.model_name or network_model_name(t.spec))


def log_start(trainer: Trainer, loaders: Loaders) -> None:
    """Where a network trained on from its weights starts (step 0): its validation and test
    error before any step, so that its curves begin where its source left it."""
    start = evaluate(trainer.model, loaders.test, trainer.amp_dtype)
    metrics = {"test_error": start["error"], "test_loss": start["loss"]}
    if loaders.eval is not loaders.test:
        held = evaluate(trainer.model, loaders.eval, trainer.amp_dtype)
        metrics.update(val_error=held["error"], val_loss=held["loss"])
    else:
        metrics.update(val_error=start["error"], val_loss=start["loss"])
    mlflow.log_metrics(metrics, step=0)
    say(f"starting from {start['error']:.2f}% test error")


def log_final(model: torch.nn.Module, amp_dtype, loaders: Loaders, image_size, tmp: Path,
              log_model: bool, step: int, train_macs: float,
              model_name: str = "model") -> dict[str, float]:
    """Test metrics, sizes, training cost, the final checkpoint and the logged model (named
    `model_name`, its metrics linked to it, so that the Models page lists and ranks it)."""
    run_id = mlflow.active_run().info.run_id
    result = evaluate(model, loaders.test, amp_dtype)
    contract.fence(run_id)
    metrics = {"test_error": result["error"], "test_top5_error": result["top5_error"],
               "test_loss": result["loss"], "train_macs": train_macs,
               **size_metrics(model.spec, image_size)}
    checkpoint = make_checkpoint(model, meta={"test_error": result["error"]})
    with deferred():
        path = save_checkpoint(checkpoint, tmp / Path(contract.FINAL).name)
        digests.log_file(path, contract.CHECKPOINTS)
    model_id = log_network(model, image_size, model_name) if log_model else None
    # A run resumed after this point was logged (killed before it ended) logs it only once.
    fresh = {k: v for k, v in metrics.items() if tracking.last_logged_step(run_id, k) < step}
    if fresh:
        mlflow.log_metrics(fresh, step=step, model_id=model_id)
    say(f"test error {result['error']:.2f}% (top-5 {result['top5_error']:.2f}%), "
        f"{metrics['params']:,.0f} params, {metrics['flops']:,.0f} MACs")
    return metrics


def logged_model_name(text: str) -> str:
    """`text` as a logged model's name: MLflow refuses / : . % and quotes in one."""
    return re.sub(r"[/:.%\"'\s]", "_", text)


def network_model_name(spec: ArchSpec) -> str:
    """A trained network's model name: its name, and its channel count when its widths are
    not the family's own (a bottleneck, rounded widths)."""
    custom = spec.mids != spec.full_mids()
    return logged_model_name(spec.name + (f"-c{spec.prunable_channels}" if custom else ""))


def log_network(model: torch.nn.Module, image_size, name: str = "model") -> str:
    """The final network as an MLflow model named `name`, with an input example (batch 2: a
    batch-1 example would freeze the exported batch size); returns its model ID."""
    import mlflow.pytorch

    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = np.zeros((2, 3, *image_size), dtype=np.float32)
    info = mlflow.pytorch.log_model(model, name=logged_model_name(name), input_example=example,
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                      "mlprunes"])
    return info.model_id


def pruned_training(source: PrunedSource, spec: ArchSpec, budget: str, data: DataConfig,
                    run: RunConfig, log_model: bool, label: str,
                    max_epoch_factor: float | None = None, init: str = "fresh",
                    model_name: str = "") -> Training:
    """How to train a network derived from a prune run on `data` (the prune run's, read from
    where it lives now): its base run's recipe, with the epochs the budget gives."""
    recipe = contract.recipe_of(source.base_run)
    size = data.image_size or 32
    factor = epoch_factor(source.spec, spec, budget, (size, size), max_epoch_factor)
    # A slimming base's L1 on BatchNorm scales was for pruning it; its architectures train
    # as every other criterion's do.
    return Training(spec, replace(recipe, epochs=scratch_epochs(recipe.epochs, factor),
                                  bn_l1=0.0), data,
                    run, label=label, log_model=log_model, init=init, model_name=model_name)


def epoch_factor(base_spec: ArchSpec, spec: ArchSpec, budget: str, image_size,
                 max_epoch_factor: float | None = None) -> float:
    """Epochs relative to the base network's. Scratch-E: 1. Scratch-B: the base's FLOPs over
    this network's, so that both spend the same training compute (Liu et al., ICLR 2019),
    capped at `max_epoch_factor` (their ImageNet code caps it at 2; their CIFAR code does not
    cap it)."""
    if budget == "scratch-e":
        return 1.0
    ratio = count(base_spec, image_size).flops / max(1, count(spec, image_size).flops)
    return ratio if max_epoch_factor is None else min(ratio, max_epoch_factor)


def scratch_epochs(base_epochs: int, factor: float) -> int:
    """The integer part of base epochs x factor, as Liu et al.'s CIFAR code takes it."""
    return max(1, int(base_epochs * factor))
