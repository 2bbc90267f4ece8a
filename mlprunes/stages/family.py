"""The `family` stage: one pruned width profile scaled to several parameter budgets, each member
trained from scratch as a child run."""

from __future__ import annotations

import csv
from typing import Sequence

import mlflow

from mlprunes.counting import count
from mlprunes.stages import tracking
from mlprunes.stages.common import (DataConfig, RunConfig, config_key, result_settings, say,
                                    spec_json)
from mlprunes.stages.scratch import PrunedSource, lineage_tags, scale_family, scratch_job
from mlprunes.stages.train import run_training


def family_key(source: PrunedSource, prunes: int, budgets: Sequence[int], budget: str,
               data: DataConfig, run: RunConfig) -> str:
    return config_key("family", {"prune_run_id": source.run_id, "prunes": prunes,
                                 "budgets": list(budgets), "budget": budget,
                                 **result_settings(data, run)})


def run_family(source: PrunedSource, *, prunes: int, budgets: Sequence[int], budget: str,
               data: DataConfig, run: RunConfig, experiment: str,
               run_name: str | None = None, parent_run_id: str | None = None,
               log_model: bool = True) -> str:
    if not budgets:
        raise tracking.StageError("--budgets needs at least one parameter budget")
    profile = source.spec_at(prunes)
    members = [scale_family(profile, b) for b in budgets]  # every budget checked before any run
    crit = source.prune_run.data.params.get("criterion", "pruned")
    name = run_name or f"family-{crit}-{source.spec.name}-p{prunes}"
    tags = {**lineage_tags(source),
            tracking.TAG_CONFIG: family_key(source, prunes, budgets, budget, data, run)}
    size = data.image_size or 32
    with tracking.stage_run("family", experiment=experiment, run_name=name, tags=tags,
                            parent_run_id=parent_run_id) as family_run:
        family_id = family_run.info.run_id
        tracking.log_params({"prune_run_id": source.run_id, "prunes": prunes,
                             "budgets": list(budgets), "budget": budget,
                             "profile": profile.to_json(), **vars(data), "seed": run.seed})
        mlflow.log_text(spec_json(profile), "profile_arch.json")
        rows = []
        for params_budget, member in zip(budgets, members):
            job = scratch_job(source, member, budget, data, stage="family-member", run=run,
                              experiment=experiment, log_model=log_model,
                              run_name=f"{name}-{params_budget}",
                              tags={**lineage_tags(source), "mlprunes.family_run_id": family_id},
                              extra_params={"prune_run_id": source.run_id, "prunes": prunes,
                                            "params_budget": params_budget, "budget": budget})
            # A member that finished in an earlier, interrupted family run is not retrained.
            done = [r for r in tracking.runs_with_key(family_run.info.experiment_id, job.key)
                    if r.info.status == "FINISHED"]
            if done:
                child_id = done[0].info.run_id
                say(f"[family] budget {params_budget:,}: reusing finished run {child_id}")
            else:
                child_id = run_training(job, parent_run_id=family_id)
            counts = count(member, (size, size))
            rows.append({"params_budget": params_budget, "run_id": child_id,
                         "params": counts.params, "flops": counts.flops,
                         "mids": list(member.mids)})
        with tracking.scratch_dir("family") as tmp:
            with open(tmp / "family.csv", "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            mlflow.log_artifact(str(tmp / "family.csv"))
        mlflow.set_tag("mlprunes.member_run_ids", ",".join(r["run_id"] for r in rows))
    return family_id
