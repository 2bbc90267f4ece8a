"""The `prune` stage: a trained network fine-tuned and pruned, a channel (or a group) at a time,
as one run.

The stage resolves its inputs (the base run's network, data and recipe), runs the core loop
(`mlprunes.pruning.loop`) and logs what it reports: a curve point per validation (step = prunes
done), a masked checkpoint, the prune history and the curve every `save_every` prunes, and the
compressed final network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow

from mlprunes.engine.checkpoint import save_checkpoint
from mlprunes.engine.trainer import Trainer, seed_everything
from mlprunes.errors import StageError
from mlprunes.signals import deferred
from mlprunes.jobs import PruneJob, criterion_label
from mlprunes.nets import build, is_mask_key
from mlprunes.pruning import Pruner, compress, make_saliency, spec_after
from mlprunes.pruning.loop import (CURVE_COLUMNS, finetune_share, prune_while_finetuning,
                                   restore, schedule_caveat)
from mlprunes.stages import contract, digests, kept, tracking
from mlprunes.stages.common import (check_batches, check_input, load_splits, make_loaders, say,
                                    spec_json)
from mlprunes.stages.trained import log_final


def run(job: PruneJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    base_run = contract.get_run(job.base_run_id, stage=contract.TRAIN)
    data = job.data.over(contract.data_of(base_run))
    preset = job.recipe.preset or contract.preset_of(base_run)
    recipe = job.recipe.resolve(preset, pruning=True)
    # Pruning's training cost continues the base network's.
    macs_before = base_run.data.metrics.get("train_macs", 0.0)
    if resume_run_id is not None:
        contract.check_resumable(resume_run_id, job, parent_run_id)
    with tracking.scratch_dir("prune") as tmp:
        base = contract.load_run_checkpoint(job.base_run_id, contract.FINAL, tmp / "base")
        spec = base["spec"]
        contract.check_logged_arch(base_run, spec, contract.FINAL)
        check_prune_count(spec, job.prunes, job.keep_one, job.round_to)
        splits = load_splits(data)
        check_input(spec, splits.image_size)
        if splits.num_classes != spec.num_classes:
            raise StageError(f"{data.dataset} has {splits.num_classes} classes but the base "
                             f"network has {spec.num_classes}; prune on the data it was "
                             f"trained on")
        seed_everything(job.run.seed)
        model = build(spec, masked=True)
        try:
            missing = model.load_state_dict(base["model"], strict=False).missing_keys
        except RuntimeError as err:   # shapes that differ: a factory that builds otherwise now
            raise StageError(f"base run {job.base_run_id}'s checkpoint does not fit the network "
                             f"its description builds here ({str(err).splitlines()[-1].strip()}"
                             f"); is its factory deterministic?") from None
        if any(not is_mask_key(k) for k in missing):
            raise StageError(f"base run {job.base_run_id}'s checkpoint does not fit its own "
                             f"architecture")
        loaders = make_loaders(splits, recipe.batch_size, job.run, pad=recipe.pad)
        check_batches(loaders)
        trainer = Trainer(model, recipe, loaders.train, precision=job.run.precision,
                          channels_last=job.run.channels_last, compile=job.run.compile,
                          progress=False, desc="prune")
        try:
            pruner = Pruner(trainer.model, make_saliency(job.criterion, seed=job.run.seed),
                            keep_one=job.keep_one, round_to=job.round_to,
                            flops_penalty=job.flops_penalty, image_size=splits.image_size)
        except ValueError as err:  # widths that are not multiples of --round-to
            raise StageError(str(err)) from None
        label = criterion_label(job.criterion, job.flops_penalty, job.round_to)
        name = job.run_name or f"prune-{label}-{spec.name}"
        tags = {contract.TAG_BASE_RUN: job.base_run_id, contract.TAG_PRESET: preset,
                contract.TAG_CRITERION: label}
        with contract.stage_run(job, name, tags, parent_run_id=parent_run_id,
                                resume_run_id=resume_run_id) as run:
            run_id = run.info.run_id
            start, curve, spent, logged_through = 0, [], None, -1
            if resume_run_id is not None:
                start, curve, spent = _resume(run_id, trainer, pruner, tmp, splits.image_size)
                logged_through = tracking.last_logged_step(run_id, "val_error")
            # The loop fine-tunes before each prune and once more after the last.
            share = finetune_share(job.prunes + 1, job.prune_every, recipe.batch_size,
                                   float(base_run.data.params.get("epochs") or 0),
                                   len(splits.train))
            tracking.describe_run(description(job, spec, label, share))
            if start == 0:  # params already on a resumed run are left as they are
                tracking.log_params({
                    "base_run_id": job.base_run_id, "criterion": job.criterion,
                    "prunes": job.prunes, "prune_every": job.prune_every,
                    "save_every": job.save_every, "val_every": job.val_every,
                    "keep_one": job.keep_one, "round_to": job.round_to,
                    "shrink_every": job.shrink_every,
                    "flops_penalty": job.flops_penalty, **recipe.to_dict(), **vars(data),
                    "seed": job.run.seed, "precision": job.run.precision, "preset": preset,
                    **contract.arch_params(spec), "device": job.run.device,
                    "compile": job.run.compile, "channels_last": job.run.channels_last,
                    "log_model": job.log_model})
                digests.log_text(spec_json(spec), contract.ARCH)
            each = f" of {job.round_to} channels" if job.round_to > 1 else ""
            say(f"[prune] {name}: {job.prunes} {label} prunes{each} of {spec.name} "
                f"({spec.prunable_channels} channels), {job.prune_every} steps each, "
                f"run {run_id}")

            def log_point(point: dict[str, Any]) -> None:
                contract.fence(run_id)
                if point["prunes"] <= logged_through:  # logged before a kill, recomputed now
                    return
                # The last point's size and cost are the final network's: `log_final` logs
                # them at this step, linked to its model, so they are not logged twice.
                last = point["prunes"] == job.prunes
                mlflow.log_metrics({k: v for k, v in point.items()
                                    if k != "prunes" and not (last and k in FINAL_KEYS)},
                                   step=point["prunes"])

            def log_checkpoint(prunes: int, checkpoint: dict[str, Any]) -> None:
                contract.fence(run_id)
                _log_saved(run_id, prunes, checkpoint, pruner.history,
                           checkpoint["meta"]["curve"], checkpoint_widths(spec, pruner.history,
                                                                          prunes, job))

            curve = prune_while_finetuning(trainer, pruner, job.schedule, loaders.eval,
                                   splits.image_size, start=start, curve=curve,
                                   macs_before=macs_before, spent=spent, on_point=[log_point],
                                   on_save=[log_checkpoint], test_loader=loaders.test,
                                   progress=job.run.progress)
            final = spec_after(spec, pruner.history)
            digests.log_text(spec_json(final), contract.FINAL_ARCH)
            tracking.log_params({"final_mids": list(final.mids)})
            mlflow.set_tag(contract.TAG_FINAL_MIDS, json.dumps(list(final.mids)))
            log_final(compress(trainer.model), trainer.amp_dtype, loaders, splits.image_size,
                      tmp, job.log_model, step=job.prunes,
                      model_name=f"{spec.name}-{label}-p{job.prunes}",
                      train_macs=curve[-1]["train_macs"])
            return run_id


FINAL_KEYS = ("params", "flops", "channels_left", "train_macs")   # also in `log_final`


def check_prune_count(spec, prunes: int, keep_one: bool, round_to: int) -> None:
    """Refuse more prunes than the network has channels to lose, before anything runs."""
    keeps = keep_one or not spec.can_empty_groups   # a traced network's groups keep one
    limit = max(0, (spec.prunable_channels - (spec.num_blocks * round_to if keeps else 0))
                // round_to)
    if prunes > limit:
        what = f"prunes of {round_to} channels" if round_to > 1 else "channels"
        why = (" with --keep-one" if keep_one else
               " (each of its groups keeps at least one)" if keeps else "")
        raise StageError(f"--prunes {prunes} is more than the {limit} {what} that "
                         f"{spec.name} can lose" + why)


def description(job: PruneJob, spec, label: str, share: float) -> str:
    """The prune run's description: what it does, its schedule against the paper's, and how to
    read its charts."""
    each = f"{job.round_to} channels of one block" if job.round_to > 1 else "one channel"
    caveat = schedule_caveat(share, job.round_to / spec.prunable_channels)
    return (f"Prunes {spec.name} ({spec.prunable_channels} channels) by **{label}**, "
            f"{job.prunes} times, fine-tuning {job.prune_every} steps before each prune.\n\n"
            f"**Schedule:** {caveat}.\n\n"
            f"**A step is one prune** ({each}): every metric at step n describes the network "
            f"after n prunes (`params`, `flops`, `channels_left`, `val_error`; `test_error` at "
            f"each saved checkpoint). `final_arch.json` and the param `final_mids` give the "
            f"network it ends with, `checkpoint_widths.json` the middle widths at every "
            f"saved checkpoint, `prune_history.json` the channels in the order they went.")


def checkpoint_widths(spec, history: list[int], prunes: int, job: PruneJob) -> dict[str, list]:
    """The middle widths at every checkpoint saved up to `prunes` prunes."""
    saved = [p for p in range(1, prunes + 1) if job.schedule.saves_at(p)]
    return {str(p): list(spec_after(spec, history[:p * job.round_to]).mids) for p in saved}


def _log_saved(run_id: str, prunes: int, checkpoint: dict[str, Any], history: list[int],
               curve: list[dict[str, Any]], widths: dict[str, list]) -> None:
    """A masked checkpoint, and the history and curve so far (overwritten at each save), all
    written before a stop signal takes effect. The newest checkpoint is also kept on this
    machine, in case the store is lost before it takes the upload."""
    with deferred():
        name = Path(contract.prune_checkpoint(prunes)).name
        path = save_checkpoint(checkpoint, kept.path(run_id, name))
        digests.log_file(path, contract.CHECKPOINTS)
        kept.uploaded(path)
        kept.keep_only(path)
        digests.log_text(json.dumps(history), contract.PRUNE_HISTORY)
        digests.log_text(json.dumps(widths, indent=1), contract.CHECKPOINT_WIDTHS)
        tracking.log_csv(curve, contract.PRUNING_CURVE, CURVE_COLUMNS)


def _resume(run_id: str, trainer: Trainer, pruner: Pruner, tmp: Path, image_size):
    counts = contract.saved_prune_counts(run_id)
    checkpoint = contract.resume_checkpoint(
        run_id, contract.prune_checkpoint(counts[-1]) if counts else None, tmp / "resume",
        map_location=trainer.device, progress=lambda c: c["meta"]["prunes"])
    if checkpoint is None:  # killed before its first checkpoint: the same run, from the start
        say(f"prune run {run_id} saved no checkpoint; pruning again from the start")
        return 0, [], None
    start, curve, spent = restore(checkpoint, trainer, pruner, image_size)
    kept_at = checkpoint.get("kept_at")
    say(f"resuming prune run {run_id} after {start} prunes"
        + (f" from the checkpoint kept at {kept_at}" if kept_at else ""))
    return start, curve, spent
