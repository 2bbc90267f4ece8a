"""The `train` stage: a network (full, reduced, or with a bottleneck) trained from a fresh init,
one tracked run with per-epoch curves, checkpoints, the final model and its size."""

from __future__ import annotations

from mlprunes.jobs import TrainJob
from mlprunes.stages import contract
from mlprunes.stages.trained import Training, prepare, train_in_run


def run(job: TrainJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    """Train `job.spec` in one MLflow run; return the run ID. With `resume_run_id`, reopen that
    interrupted run and continue from its last checkpoint."""
    if resume_run_id is not None:
        contract.check_resumable(resume_run_id, job, parent_run_id)
    prepared = prepare(Training(job.spec, job.recipe, job.data, job.run, label=job.stage,
                                checkpoint_every=job.checkpoint_every,
                                log_model=job.log_model))
    name = job.run_name or f"train-{job.spec.name}"
    with contract.stage_run(job, name, {contract.TAG_PRESET: job.preset},
                            parent_run_id=parent_run_id, resume_run_id=resume_run_id) as run:
        train_in_run(prepared, run.info.run_id, name, {"preset": job.preset},
                     resume=resume_run_id is not None)
        return run.info.run_id
