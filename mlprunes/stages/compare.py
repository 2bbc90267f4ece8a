"""The `compare` stage: gather a study's finished runs and log one table of their results."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import mlflow
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from mlprunes.stages import tracking

STUDY_STAGES = ("train", "prune", "scratch", "family-member", "evaluate")
TAG_STUDY_RUNS = "mlprunes.study_run_ids"

COLUMNS = ["run_id", "run_name", "stage", "criterion", "arch_spec", "params", "flops", "test_error",
           "test_top5_error", "final_val_error", "epochs", "prunes", "budget",
           "latency_masked_b1_ms", "latency_compressed_b1_ms", "base_run_id", "prune_run_id",
           "source_run_id", "parent_run_id"]


def gather_runs(experiment: str | None = None, run_ids: Sequence[str] = (),
                parent_run_id: str | None = None) -> list[Run]:
    """Finished mlprunes runs: the given IDs, or those a pipeline run used, or all of an
    experiment's."""
    client = MlflowClient()
    if run_ids:
        return [tracking.get_run(r, stage=STUDY_STAGES) for r in run_ids]
    if parent_run_id is not None:
        parent = tracking.get_run(parent_run_id, stage="pipeline", finished=False)
        listed = [r for r in parent.data.tags.get(TAG_STUDY_RUNS, "").split(",") if r]
        if not listed:
            raise tracking.StageError(f"pipeline run {parent_run_id} lists no study runs yet")
        runs = [client.get_run(r) for r in listed]
        # A family run stands for its members, which are its own children.
        for family in [r for r in runs if r.data.tags.get(tracking.TAG_STAGE) == "family"]:
            members = family.data.tags.get("mlprunes.member_run_ids", "")
            runs.extend(client.get_run(m) for m in members.split(",") if m)
        return [r for r in runs if r.info.status == "FINISHED"
                and r.data.tags.get(tracking.TAG_STAGE) in STUDY_STAGES]
    exp = client.get_experiment_by_name(experiment or tracking.DEFAULT_EXPERIMENT)
    if exp is None:
        raise tracking.StageError(f"no experiment named {experiment!r} in the tracking store at "
                                  f"{mlflow.get_tracking_uri()}")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=5000)
    return [r for r in runs if r.data.tags.get(tracking.TAG_STAGE) in STUDY_STAGES]


def row_for(run: Run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    return {
        "run_id": run.info.run_id,
        "run_name": tags.get("mlflow.runName", ""),
        "stage": tags.get(tracking.TAG_STAGE, ""),
        "criterion": tags.get("mlprunes.criterion", params.get("criterion", "")),
        "arch_spec": params.get("arch_spec", ""),
        "params": metrics.get("params"),
        "flops": metrics.get("flops"),
        "test_error": metrics.get("test_error"),
        "test_top5_error": metrics.get("test_top5_error"),
        "final_val_error": metrics.get("val_error"),
        "epochs": params.get("epochs"),
        "prunes": params.get("prunes"),
        "budget": params.get("budget", params.get("params_budget")),
        "latency_masked_b1_ms": metrics.get("latency_masked_b1_ms"),
        "latency_compressed_b1_ms": metrics.get("latency_compressed_b1_ms"),
        "base_run_id": tags.get(tracking.TAG_BASE_RUN, ""),
        "prune_run_id": tags.get(tracking.TAG_PRUNE_RUN, ""),
        "source_run_id": tags.get(tracking.TAG_SOURCE_RUN, ""),
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
    }


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return path


def run_compare(experiment: str = tracking.DEFAULT_EXPERIMENT, run_ids: Sequence[str] = (),
                parent_run_id: str | None = None, run_name: str | None = None,
                study_parent_run_id: str | None = None) -> str:
    """One run holding the study's table. `parent_run_id` selects the study (a pipeline run);
    `study_parent_run_id` makes the compare run that pipeline's child."""
    runs = gather_runs(experiment, run_ids, parent_run_id)
    if not runs:
        raise tracking.StageError("no finished mlprunes runs to compare")
    rows = sorted((row_for(r) for r in runs), key=lambda r: (r["stage"], r["run_name"]))
    tags = {"mlprunes.compared_runs": str(len(rows))}
    if parent_run_id:
        tags["mlprunes.study_parent_run_id"] = parent_run_id
    with tracking.stage_run("compare", experiment=experiment, run_name=run_name or "compare",
                            tags=tags, parent_run_id=study_parent_run_id) as run:
        tracking.log_params({"experiment": experiment, "run_ids": list(run_ids),
                             "parent_run_id": parent_run_id or ""})
        with tracking.scratch_dir("compare") as tmp:
            mlflow.log_artifact(str(write_table(rows, tmp / "runs.csv")))
        mlflow.log_metric("runs", len(rows))
        return run.info.run_id
