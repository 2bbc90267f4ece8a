"""The `prune` stage: fine-tune a trained network and prune it one channel at a time.

The loop, for p = 0 .. N prunes done: fine-tune `prune_every` steps (recovering from the last
prune while the saliency of the next one accumulates), validate every `val_every` prunes, save
every `save_every`, prune one channel. A checkpoint holds everything the loop needs (weights,
masks, optimizer, data position, saliency, history), so a killed run resumes where it saved and
ends with the same prune history as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from mlprunes.counting import count
from mlprunes.engine.checkpoint import (CheckpointError, load_checkpoint, make_checkpoint,
                                        restore_rng, save_checkpoint)
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.recipes import Recipe
from mlprunes.engine.trainer import Trainer, seed_everything
from mlprunes.nets import build
from mlprunes.pruning import Pruner, apply_history, compress, make_saliency, spec_after
from mlprunes.stages import tracking
from mlprunes.stages.common import (DataConfig, RunConfig, check_batches, config_key, load_splits,
                                    make_loaders, recipe_params, result_settings, say,
                                    size_metrics, spec_json, training_macs)
from mlprunes.stages.train import FINAL, arch_params, finish

CHECKPOINT_RE = re.compile(r"checkpoints/prunes_(\d+)\.pt$")


def checkpoint_name(prunes: int) -> str:
    return f"prunes_{prunes:05d}.pt"


@dataclass
class PruneJob:
    base_run_id: str
    criterion: str
    prunes: int
    recipe: Recipe
    data: DataConfig
    prune_every: int = 100
    save_every: int = 100
    val_every: int = 10
    keep_one: bool = False
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "wrn"
    experiment: str = tracking.DEFAULT_EXPERIMENT
    run_name: str | None = None
    log_model: bool = True

    def settings(self) -> dict[str, Any]:
        return {"base_run_id": self.base_run_id, "criterion": self.criterion,
                "prunes": self.prunes, "prune_every": self.prune_every,
                "save_every": self.save_every, "val_every": self.val_every,
                "keep_one": self.keep_one, **recipe_params(self.recipe), **vars(self.data),
                "seed": self.run.seed, "precision": self.run.precision, "preset": self.preset}

    @property
    def key(self) -> str:
        settings = {k: v for k, v in self.settings().items()
                    if k not in ("data_dir", "download", "precision")}
        return config_key("prune", {**settings, **result_settings(self.data, self.run)})


def base_data_config(base_run) -> DataConfig:
    return DataConfig.from_params(base_run.data.params)


def run_pruning(job: PruneJob, parent_run_id: str | None = None,
                resume_run_id: str | None = None) -> str:
    for name, value in (("prune-every", job.prune_every), ("save-every", job.save_every),
                        ("val-every", job.val_every)):
        if value < 1:
            raise tracking.StageError(f"--{name} must be at least 1, got {value}")
    if job.prunes < 0:
        raise tracking.StageError(f"--prunes must be >= 0, got {job.prunes}")
    base_run = tracking.get_run(job.base_run_id, stage="train")
    # Pruning's training cost continues the base network's.
    macs_before = base_run.data.metrics.get("train_macs", 0.0)
    if resume_run_id is not None:
        tracking.check_resumable(resume_run_id, "prune", job.key)
    with tracking.scratch_dir("prune") as tmp:
        base = load_checkpoint(tracking.download_artifact(job.base_run_id, FINAL, tmp / "base"))
        spec = base["spec"]
        limit = spec.prunable_channels - (spec.num_blocks if job.keep_one else 0)
        if job.prunes > limit:
            raise tracking.StageError(
                f"--prunes {job.prunes} is more than the {limit} channels that "
                f"{spec.name} can lose" + (" with --keep-one" if job.keep_one else ""))
        splits = load_splits(job.data)
        if splits.num_classes != spec.num_classes:
            raise tracking.StageError(
                f"{job.data.dataset} has {splits.num_classes} classes but the base network "
                f"has {spec.num_classes}; prune on the data it was trained on")
        seed_everything(job.run.seed)
        model = build(spec, masked=True)
        missing = model.load_state_dict(base["model"], strict=False).missing_keys
        if any(not k.endswith(".mask") for k in missing):
            raise tracking.StageError(f"base run {job.base_run_id}'s checkpoint does not fit "
                                      f"its own architecture")
        loaders = make_loaders(splits, job.recipe.batch_size, job.run)
        check_batches(loaders)
        trainer = Trainer(model, job.recipe, loaders.train, precision=job.run.precision,
                          channels_last=job.run.channels_last, compile=job.run.compile,
                          progress=False, desc="prune")
        saliency = make_saliency(job.criterion, seed=job.run.seed)
        pruner = Pruner(trainer.model, saliency, keep_one=job.keep_one)
        name = job.run_name or f"prune-{job.criterion}-{spec.name}"
        tags = {tracking.TAG_BASE_RUN: job.base_run_id, tracking.TAG_PRESET: job.preset,
                tracking.TAG_CONFIG: job.key, "mlprunes.criterion": job.criterion}
        with tracking.stage_run("prune", experiment=job.experiment, run_name=name, tags=tags,
                                parent_run_id=parent_run_id,
                                resume_run_id=resume_run_id) as run:
            run_id = run.info.run_id
            curve: list[dict[str, Any]] = []
            start = 0
            if resume_run_id is not None:
                start, curve = _resume(run_id, trainer, pruner, tmp)
            else:
                tracking.log_params({**job.settings(), **arch_params(spec),
                                     "device": job.run.device, "compile": job.run.compile,
                                     "channels_last": job.run.channels_last,
                                     "log_model": job.log_model})
                mlflow.log_text(spec_json(spec), "arch.json")
            say(f"[prune] {name}: {job.prunes} {job.criterion} prunes of {spec.name} "
                f"({spec.prunable_channels} channels), {job.prune_every} steps each, run {run_id}")
            _loop(job, spec, splits.image_size, trainer, pruner, loaders, curve, start, tmp,
                  macs_before)
            final = compress(trainer.model)
            finish(final, trainer.amp_dtype, loaders, splits.image_size, tmp, job.log_model,
                   step=job.prunes,
                   train_macs=macs_before + finetune_macs(trainer, spec, splits.image_size))
    return run_id


def _loop(job: PruneJob, spec, image_size, trainer: Trainer, pruner: Pruner, loaders,
          curve: list[dict[str, Any]], start: int, tmp: Path, macs_before: float) -> None:
    from tqdm import tqdm

    bar = tqdm(total=job.prunes, initial=start, desc="prune", unit="prune",
               disable=not job.run.progress, mininterval=1.0, dynamic_ncols=True)
    for p in range(start, job.prunes + 1):
        resumed_here = p == start and start > 0
        if not resumed_here:  # a resumed run saved after this point's fine-tuning
            trainer.train_steps(job.prune_every)
            if p % job.val_every == 0 or p == job.prunes:
                point = _validate(p, spec, pruner, trainer, loaders, image_size, macs_before)
                curve.append(point)
                mlflow.log_metrics({k: v for k, v in point.items() if k != "prunes"}, step=p)
                bar.set_postfix(val_err=f"{point['val_error']:.2f}%",
                                params=f"{point['params']:,.0f}", refresh=False)
            if (p > 0 and p % job.save_every == 0) or p == job.prunes:
                _save(p, trainer, pruner, curve, tmp)
        if p < job.prunes:
            pruner.prune()
            bar.update(1)
    bar.close()
    pruner.detach()


def finetune_macs(trainer: Trainer, spec, image_size) -> float:
    """Fine-tuning so far. The masked network computes at full width whatever its masks say,
    so this is the full network's cost: what this run really spent."""
    images = trainer.position.step * trainer.loader.batch_size
    return training_macs(count(spec, image_size).flops, images)


def _validate(p, spec, pruner, trainer, loaders, image_size, macs_before) -> dict[str, Any]:
    current = spec_after(spec, pruner.history)
    result = evaluate(trainer.model, loaders.eval, trainer.amp_dtype)
    loader = trainer.loader
    return {"prunes": p, "val_error": result["error"], "val_loss": result["loss"],
            "finetune_epochs": trainer.position.step * loader.batch_size / loader.num_samples,
            "train_macs": macs_before + finetune_macs(trainer, spec, image_size),
            **size_metrics(current, image_size)}


def _save(p: int, trainer: Trainer, pruner: Pruner, curve, tmp: Path) -> None:
    checkpoint = make_checkpoint(trainer.model, trainer_state=trainer.state_dict(),
                                 prune_history=pruner.history,
                                 meta={"prunes": p, "saliency": pruner.saliency.state_dict(),
                                       "curve": curve})
    path = save_checkpoint(checkpoint, tmp / checkpoint_name(p))
    mlflow.log_artifact(str(path), "checkpoints")
    path.unlink()
    (tmp / "prune_history.json").write_text(json.dumps(pruner.history))
    mlflow.log_artifact(str(tmp / "prune_history.json"))
    write_curve(curve, tmp / "pruning_curve.csv")
    mlflow.log_artifact(str(tmp / "pruning_curve.csv"))


def write_curve(curve: list[dict[str, Any]], path: Path) -> None:
    columns = ["prunes", "channels_left", "params", "flops", "val_error", "val_loss",
               "finetune_epochs", "train_macs"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in curve:
            writer.writerow({c: row[c] for c in columns})


def saved_prune_counts(run_id: str) -> list[int]:
    counts = []
    for path in tracking.list_artifacts(run_id, "checkpoints"):
        match = CHECKPOINT_RE.search(path)
        if match:
            counts.append(int(match.group(1)))
    return sorted(counts)


def _resume(run_id: str, trainer: Trainer, pruner: Pruner, tmp: Path):
    counts = saved_prune_counts(run_id)
    if not counts:
        raise tracking.StageError(f"cannot resume prune run {run_id}: it saved no checkpoint")
    p = counts[-1]
    path = tracking.download_artifact(run_id, f"checkpoints/{checkpoint_name(p)}",
                                      tmp / "resume")
    try:
        checkpoint = load_checkpoint(path, map_location=trainer.device)
    except CheckpointError as err:
        raise tracking.StageError(f"cannot resume run {run_id}: {err}") from None
    trainer.load_state_dict({"model": checkpoint["model"], **checkpoint["trainer"]})
    history = checkpoint["prune_history"]
    apply_history(trainer.model, history)
    pruner.history = list(history)
    pruner.saliency.load_state_dict(checkpoint["meta"]["saliency"])
    restore_rng(checkpoint)
    say(f"resuming prune run {run_id} after {p} prunes")
    return p, list(checkpoint["meta"]["curve"])
