"""The `train` stage (and the training part of `scratch` and `family`): a network from a fresh
init, one tracked run with per-epoch curves, checkpoints, the final model and its size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from mlprunes.arch import ArchSpec
from mlprunes.counting import count
from mlprunes.engine.checkpoint import (CheckpointError, load_checkpoint, make_checkpoint,
                                        save_checkpoint)
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.recipes import Recipe
from mlprunes.engine.trainer import Trainer, fit, seed_everything
from mlprunes.nets import build
from mlprunes.stages import tracking
from mlprunes.stages.common import (DataConfig, RunConfig, check_batches, config_key, load_splits,
                                    make_loaders, recipe_params, result_settings, say,
                                    size_metrics, spec_json, training_macs)

LAST = "checkpoints/last.pt"
FINAL = "checkpoints/final.pt"


@dataclass
class TrainJob:
    """One network to train from scratch, and where its run goes."""
    spec: ArchSpec
    recipe: Recipe
    data: DataConfig
    run: RunConfig = field(default_factory=RunConfig)
    stage: str = "train"
    preset: str = "wrn"
    experiment: str = tracking.DEFAULT_EXPERIMENT
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    extra_params: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 1
    log_model: bool = True

    def settings(self) -> dict[str, Any]:
        """The options this job runs with, as logged."""
        return {"arch_spec": self.spec.to_dict(), **recipe_params(self.recipe),
                **vars(self.data), "seed": self.run.seed, "precision": self.run.precision,
                "preset": self.preset, **self.extra_params}

    @property
    def key(self) -> str:
        """A digest of what determines the result (not where data lives, nor speed)."""
        return config_key(self.stage, {"arch_spec": self.spec.to_dict(),
                                       **recipe_params(self.recipe),
                                       **result_settings(self.data, self.run),
                                       "preset": self.preset, **self.extra_params})


def run_training(job: TrainJob, parent_run_id: str | None = None,
                 resume_run_id: str | None = None) -> str:
    """Train `job.spec` in one MLflow run; return the run ID. With `resume_run_id`, reopen that
    interrupted run and continue from its last checkpoint."""
    if job.checkpoint_every < 1:
        raise tracking.StageError(f"--checkpoint-every must be at least 1, got "
                                  f"{job.checkpoint_every}")
    if resume_run_id is not None:
        tracking.check_resumable(resume_run_id, job.stage, job.key)
    splits = load_splits(job.data)  # bad data is an error before any run exists
    if job.spec.num_classes != splits.num_classes:
        raise tracking.StageError(
            f"the network has {job.spec.num_classes} classes but {job.data.dataset} has "
            f"{splits.num_classes}; drop --num-classes or set it to {splits.num_classes}")
    seed_everything(job.run.seed)
    model = build(job.spec)
    loaders = make_loaders(splits, job.recipe.batch_size, job.run)
    check_batches(loaders)
    trainer = Trainer(model, job.recipe, loaders.train, precision=job.run.precision,
                      channels_last=job.run.channels_last, compile=job.run.compile,
                      progress=job.run.progress, desc=job.stage)
    name = job.run_name or f"{job.stage}-{job.spec.name}"
    tags = {tracking.TAG_PRESET: job.preset, tracking.TAG_CONFIG: job.key, **job.tags}

    with tracking.stage_run(job.stage, experiment=job.experiment, run_name=name, tags=tags,
                            parent_run_id=parent_run_id, resume_run_id=resume_run_id) as run:
        run_id = run.info.run_id
        with tracking.scratch_dir("train") as tmp:
            if resume_run_id is not None:
                _resume(trainer, run_id, tmp)
            else:
                tracking.log_params({**job.settings(), **arch_params(job.spec),
                                     "device": job.run.device,
                                     "compile": job.run.compile,
                                     "channels_last": job.run.channels_last,
                                     "log_model": job.log_model,
                                     "checkpoint_every": job.checkpoint_every})
                mlflow.log_text(spec_json(job.spec), "arch.json")
                mlflow.log_metrics(size_metrics(job.spec, splits.image_size), step=0)
            say(f"[{job.stage}] {name}: {job.spec.name}, {size_metrics(job.spec, splits.image_size)['params']:,.0f} "
                f"params, {job.recipe.epochs} epochs on {job.data.dataset} "
                f"({len(splits.train)} images), run {run_id}")

            def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics(metrics, step=epoch)
                say(f"[{job.stage}] epoch {epoch}/{job.recipe.epochs} "
                    f"loss {metrics['train_loss']:.3f} train err {metrics['train_error']:.2f}% "
                    f"val err {metrics.get('val_error', float('nan')):.2f}% "
                    f"({metrics['images_per_second']:.0f} img/s)")
                if epoch % job.checkpoint_every == 0 and epoch < job.recipe.epochs:
                    path = save_checkpoint(make_checkpoint(trainer.model,
                                                           trainer_state=trainer.state_dict()),
                                           tmp / "last.pt")
                    mlflow.log_artifact(str(path), "checkpoints")

            fit(trainer, loaders.eval, callbacks=[log_epoch])
            spent = training_macs(count(job.spec, splits.image_size).flops,
                                  trainer.position.step * job.recipe.batch_size)
            finish(trainer.model, trainer.amp_dtype, loaders, splits.image_size, tmp,
                   job.log_model, step=trainer.position.epoch, train_macs=spent)
    return run_id


def finish(model: torch.nn.Module, amp_dtype, loaders, image_size, tmp: Path,
           log_model: bool, step: int, train_macs: float) -> dict[str, float]:
    """Test metrics, sizes, training cost, the final checkpoint and the logged model."""
    result = evaluate(model, loaders.test, amp_dtype)
    metrics = {"test_error": result["error"], "test_top5_error": result["top5_error"],
               "test_loss": result["loss"], "train_macs": train_macs,
               **size_metrics(model.spec, image_size)}
    mlflow.log_metrics(metrics, step=step)
    checkpoint = make_checkpoint(model, meta={"test_error": result["error"]})
    mlflow.log_artifact(str(save_checkpoint(checkpoint, tmp / "final.pt")), "checkpoints")
    if log_model:
        log_network(model, image_size)
    say(f"test error {result['error']:.2f}% (top-5 {result['top5_error']:.2f}%), "
        f"{metrics['params']:,.0f} params, {metrics['flops']:,.0f} MACs")
    return metrics


def arch_params(spec) -> dict[str, Any]:
    """The architecture as options (`arch` is the family, as on the command line) and as the
    full description (`arch_spec`, JSON)."""
    options = {"arch": spec.family, "depth": spec.depth, "num_classes": spec.num_classes}
    if spec.family == "wrn":
        options["width"] = spec.width
    else:
        options.update(growth=spec.growth, reduction=spec.reduction)
    return {**options, "arch_spec": spec.to_json()}


def log_network(model: torch.nn.Module, image_size) -> None:
    """The final network as an MLflow model, with an input example (batch 2: a batch-1 example
    would freeze the exported batch size)."""
    import mlflow.pytorch

    model = model.to("cpu", memory_format=torch.contiguous_format).eval()
    example = np.zeros((2, 3, *image_size), dtype=np.float32)
    mlflow.pytorch.log_model(model, name="model", input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                               "mlprunes"])


def _resume(trainer: Trainer, run_id: str, tmp: Path) -> None:
    path = tracking.download_artifact(run_id, LAST, tmp / "resume")
    try:
        checkpoint = load_checkpoint(path, map_location=trainer.device)
    except CheckpointError as err:
        raise tracking.StageError(f"cannot resume run {run_id}: {err}") from None
    if checkpoint["spec"] != trainer.model.spec:
        raise tracking.StageError(f"cannot resume run {run_id}: its checkpoint is a different "
                                  f"network")
    trainer.load_state_dict({"model": checkpoint["model"], **checkpoint["trainer"]})
    say(f"resuming run {run_id} after epoch {trainer.position.epoch}")
