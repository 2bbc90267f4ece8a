"""The `family` stage: one pruned width profile scaled to several parameter budgets ("prune
once, get a family"), each member trained from scratch as a child run of the family run."""

from __future__ import annotations

import mlflow

from mlprunes.counting import count, scale_to_budget
from mlprunes.errors import StageError
from mlprunes.jobs import FamilyJob
from mlprunes.stages import contract, tracking
from mlprunes.stages.common import check_fits, say, spec_json
from mlprunes.stages.trained import epoch_factor, prepare, pruned_training, train_in_run


def run(job: FamilyJob, parent_run_id: str | None = None,
        resume_run_id: str | None = None) -> str:
    source = contract.load_pruned_source(job.prune_run_id)
    if resume_run_id is not None:
        contract.check_resumable(resume_run_id, job, parent_run_id)
    profile = source.spec_at(job.prunes)
    # A profile pruned R channels at a time scales to multiples of R, unless told otherwise.
    round_to = job.round_to if job.round_to is not None else source.round_to
    try:  # every budget checked before any run
        members = [scale_to_budget(profile, b, round_to) for b in job.budgets]
    except ValueError as err:
        raise StageError(str(err)) from None
    for member in members:
        check_fits(member)
        if job.init == "sliced" and any(m > f for m, f in zip(member.mids, member.full_mids())):
            raise StageError(f"--init sliced cuts the full network, but the member for "
                             f"{member.name} is wider than it in some block "
                             f"({list(member.mids)} against {list(member.full_mids())}); use "
                             f"--init fresh or smaller budgets")
    name = job.run_name or (f"family-{source.criterion}-{source.spec.name}-p{job.prunes}"
                            + ("-sliced" if job.init == "sliced" else ""))
    data = job.data.over(contract.data_of(source.prune_run))
    size = data.image_size or 32
    with contract.stage_run(job, name, source.lineage_tags(), parent_run_id=parent_run_id,
                            resume_run_id=resume_run_id) as family_run:
        family_id = family_run.info.run_id
        tracking.log_params({"prune_run_id": source.run_id, "prunes": job.prunes,
                             "budgets": list(job.budgets), "budget": job.budget,
                             "max_epoch_factor": job.max_epoch_factor or "", "init": job.init,
                             "round_to": round_to, "profile": profile.to_json(),
                             **vars(data), "seed": job.run.seed})
        mlflow.log_text(spec_json(profile), contract.PROFILE_ARCH)
        rows = []
        for params_budget, spec in zip(job.budgets, members):
            member = job.member(params_budget)
            # A member that finished in an earlier, interrupted family run is not retrained.
            done = [r for r in contract.runs_with_key(family_run.info.experiment_id, member.key)
                    if r.info.status == "FINISHED"]
            if done:
                child_id = done[0].info.run_id
                say(f"[family] budget {params_budget:,}: reusing finished run {child_id}")
            else:
                child_id = _train_member(member, spec, source, job, data,
                                         f"{name}-{params_budget}", family_id)
            counts = count(spec, (size, size))
            rows.append({"params_budget": params_budget, "run_id": child_id,
                         "params": counts.params, "flops": counts.flops,
                         "mids": list(spec.mids)})
        tracking.log_csv(rows, contract.FAMILY_TABLE, list(rows[0]))
        mlflow.set_tag(contract.TAG_FAMILY_MEMBERS, ",".join(r["run_id"] for r in rows))
        return family_id


def _train_member(member, spec, source, job: FamilyJob, data, name: str,
                  family_id: str) -> str:
    prepared = prepare(pruned_training(source, spec, job.budget, data, job.run, job.log_model,
                                       label=member.stage,
                                       max_epoch_factor=job.max_epoch_factor, init=job.init,
                                       model_name=(f"{source.spec.name}-{source.criterion}-"
                                                   f"family-{member.params_budget}")))
    preset = contract.preset_of(source.base_run)
    size = data.image_size or 32
    params = {"preset": preset, "prune_run_id": source.run_id, "prunes": job.prunes,
              "params_budget": member.params_budget, "budget": job.budget,
              "epoch_factor": epoch_factor(source.spec, spec, job.budget, (size, size),
                                           job.max_epoch_factor),
              "max_epoch_factor": job.max_epoch_factor or "", "init": job.init}
    tags = {**source.lineage_tags(), contract.TAG_PRESET: preset,
            contract.TAG_FAMILY_RUN: family_id}
    with contract.stage_run(member, name, tags, parent_run_id=family_id) as run:
        train_in_run(prepared, run.info.run_id, name, params)
        return run.info.run_id
