"""The `scratch` stage: the architecture a prune run reached, trained from a fresh init.

The architecture is rebuilt from the prune run's history after N prunes (or at the first point
under a parameter budget) and trained with the base network's recipe: the same epochs
(Scratch-E) or, for `scratch-b`, epochs scaled so that the training FLOPs equal the base
network's (Liu et al., ICLR 2019).
"""

from __future__ import annotations

from mlprunes.jobs import ScratchJob
from mlprunes.stages import contract
from mlprunes.stages.trained import epoch_factor, prepare, pruned_training, train_in_run


def run(job: ScratchJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    source = contract.load_pruned_source(job.prune_run_id)
    data = job.data.over(contract.data_of(source.prune_run))
    size = data.image_size or 32
    if job.macs_reduction is not None:  # the checkpoint a leaderboard reads at that reduction
        prunes = source.prunes_nearest_macs(job.macs_reduction,
                                            contract.saved_prune_counts(source.run_id),
                                            (size, size))
    elif job.params_budget is not None:
        prunes = source.prunes_for_budget(job.params_budget)
    else:
        prunes = job.prunes
    spec = source.spec_at(prunes)
    if resume_run_id is not None:
        contract.check_resumable(resume_run_id, job, parent_run_id)
    prepared = prepare(pruned_training(source, spec, job.budget, data, job.run, job.log_model,
                                       label=job.stage, max_epoch_factor=job.max_epoch_factor,
                                       init=job.init, model_name=(
                                           f"{source.spec.name}-{source.criterion}-p{prunes}-"
                                           f"{job.budget}" + ("-sliced" if job.init == "sliced"
                                                              else ""))))
    name = job.run_name or (f"scratch-{source.criterion}-{source.spec.name}-p{prunes}"
                            + ("-sliced" if job.init == "sliced" else ""))
    params = {"preset": contract.preset_of(source.base_run), "prune_run_id": source.run_id,
              "prunes": prunes, "budget": job.budget,
              "epoch_factor": epoch_factor(source.spec, spec, job.budget, (size, size),
                                           job.max_epoch_factor),
              "max_epoch_factor": job.max_epoch_factor or "", "init": job.init}
    if job.params_budget is not None:
        params["params_budget"] = job.params_budget
    if job.macs_reduction is not None:
        params["macs_reduction"] = job.macs_reduction
    tags = {**source.lineage_tags(), contract.TAG_PRESET: params["preset"]}
    with contract.stage_run(job, name, tags, parent_run_id=parent_run_id,
                            resume_run_id=resume_run_id) as run:
        train_in_run(prepared, run.info.run_id, name, params, resume=resume_run_id is not None)
        return run.info.run_id
