"""The `finetune` stage: a prune run's network at one of its checkpoints, compressed, trained on
from its surviving weights (the field's third step: train, prune, fine-tune).

The recipe is a fine-tuning preset (Liu et al.'s by default) or the base run's own at a tenth of
its learning rate. The epochs are the recipe's, or, with `--budget scratch-e|scratch-b`, those
the Scratch-E or Scratch-B run of the same architecture trains for: question 2 then compares the
pruned weights and the pruned architecture at equal epochs of training.
"""

from __future__ import annotations

from dataclasses import replace

from mlprunes.errors import StageError
from mlprunes.jobs import FINETUNE_TAGS, FinetuneJob
from mlprunes.pruning import compress
from mlprunes.stages import contract, tracking
from mlprunes.stages.common import say
from mlprunes.stages.trained import Training, epoch_factor, prepare, scratch_epochs, train_in_run


def run(job: FinetuneJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    source = contract.load_pruned_source(job.prune_run_id)
    saved = contract.saved_prune_counts(source.run_id)
    prunes = chosen_checkpoint(source, saved, job.prunes, job.params_budget)
    spec = source.spec_at(prunes)
    if resume_run_id is not None:
        contract.check_resumable(resume_run_id, job, parent_run_id)
    data = job.data.over(contract.data_of(source.prune_run))
    base_recipe = contract.recipe_of(source.base_run)
    recipe = job.recipe.resolve_finetune(base_recipe)
    size = data.image_size or 32
    if job.budget != "recipe":  # the epochs of the from-scratch run it is compared with
        factor = epoch_factor(source.spec, spec, job.budget, (size, size), job.max_epoch_factor)
        recipe = replace(recipe, epochs=scratch_epochs(base_recipe.epochs, factor))
    with tracking.scratch_dir("finetune") as tmp:
        masked = contract.load_network(source.run_id, contract.prune_checkpoint(prunes),
                                       source.prune_run, "cpu", tmp)
    network = compress(masked)
    if network.spec != spec:
        raise StageError(f"prune run {source.run_id}'s checkpoint at {prunes} prunes holds "
                         f"middle widths {list(network.spec.mids)}, but its history gives "
                         f"{list(spec.mids)} after {prunes} prunes; the artifacts disagree")
    before = prior_training(source, prunes)
    label = "finetune" + FINETUNE_TAGS[job.budget]
    name = job.run_name or f"{label}-{source.criterion}-{source.spec.name}-p{prunes}"
    preset = job.recipe.preset or "liu"
    prepared = prepare(Training(
        spec, recipe, data, job.run, label=job.stage, checkpoint_every=job.checkpoint_every,
        log_model=job.log_model, start=network, macs_before=before["train_macs"],
        model_name=f"{source.spec.name}-{source.criterion}-p{prunes}-finetuned"))
    params = {"preset": contract.preset_of(source.base_run), "finetune_preset": preset,
              "prune_run_id": source.run_id, "prunes": prunes, "budget": job.budget,
              "max_epoch_factor": job.max_epoch_factor or "",
              "prior_epochs": before["epochs"], "prior_train_macs": before["train_macs"]}
    if job.params_budget is not None:
        params["params_budget"] = job.params_budget
    tags = {**source.lineage_tags(), contract.TAG_PRESET: params["preset"]}
    with contract.stage_run(job, name, tags, parent_run_id=parent_run_id,
                            resume_run_id=resume_run_id) as run:
        tracking.describe_run(description(source, prunes, recipe, job.budget, before, preset))
        train_in_run(prepared, run.info.run_id, name, params, resume=resume_run_id is not None)
        return run.info.run_id


def chosen_checkpoint(source: contract.PrunedSource, saved: list[int], prunes: int | None,
                      params_budget: int | None) -> int:
    """The prune count to fine-tune from: `prunes`, which must have a saved checkpoint, or the
    first saved checkpoint with at most `params_budget` parameters."""
    if not saved:
        raise StageError(f"prune run {source.run_id} saved no masked checkpoint to fine-tune")
    if params_budget is not None:
        return source.prunes_for_budget(params_budget, among=saved)
    if prunes not in saved:
        raise StageError(f"prune run {source.run_id} saved no checkpoint at {prunes} prunes; it "
                         f"saved them at {', '.join(map(str, saved))} (its --save-every and "
                         f"its last prune)")
    return prunes


def prior_training(source: contract.PrunedSource, prunes: int) -> dict[str, float]:
    """The training the network had at that checkpoint: the base run's epochs plus the
    pruning's fine-tuning so far, in epochs and in training MACs (the prune run's own
    accounts, logged at each checkpoint)."""
    base_epochs = float(source.base_run.data.params.get("epochs") or 0)
    epochs = tracking.metric_steps(source.run_id, "finetune_epochs").get(prunes)
    macs = tracking.metric_steps(source.run_id, "train_macs").get(prunes)
    if epochs is None or macs is None:  # a prune run that logged no accounts there
        say(f"[finetune] prune run {source.run_id} logged no training account at {prunes} "
            f"prunes; its fine-tuning so far is not counted in this run's train_macs")
    return {"epochs": base_epochs + (epochs or 0.0), "train_macs": macs if macs is not None
            else source.base_run.data.metrics.get("train_macs", 0.0)}


def description(source: contract.PrunedSource, prunes: int, recipe, budget: str,
                before: dict[str, float], preset: str) -> str:
    epochs = {"recipe": f"the {preset} recipe's {recipe.epochs} epochs",
              "scratch-e": f"{recipe.epochs} epochs, as many as the Scratch-E run of this "
                           f"architecture",
              "scratch-b": f"{recipe.epochs} epochs, as many as the Scratch-B run of this "
                           f"architecture"}[budget]
    return (f"Fine-tunes the network prune run `{source.run_id}` ({source.criterion}) reached "
            f"after {prunes} prunes, compressed, from its weights, for {epochs} (lr "
            f"{recipe.lr:g}, {recipe.schedule} schedule).\n\n"
            f"**A step is an epoch.** Step 0 is the network as the prune run left it "
            f"(`test_error`, `val_error` before any step). Before this run it had "
            f"{before['epochs']:g} epochs of training (the base's and the pruning's "
            f"fine-tuning); `train_macs` counts them too.")
