"""The MLflow boundary: opening a stage's run, resolving input runs, moving artifacts.

Everything MLflow-specific that the stages share lives here, so that the stages read as
"resolve inputs, call the core, log".
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

TAG_STAGE = "mlprunes.stage"
TAG_BASE_RUN = "mlprunes.base_run_id"
TAG_PRUNE_RUN = "mlprunes.prune_run_id"
TAG_SOURCE_RUN = "mlprunes.source_run_id"
TAG_PRESET = "mlprunes.preset"
TAG_CONFIG = "mlprunes.config_key"
DEFAULT_EXPERIMENT = "mlprunes"


class StageError(Exception):
    """Bad input to a stage: reported as one line, with a non-zero exit, before any run starts."""


def configure_client() -> None:
    """Fail in seconds, not minutes, when a tracking server is down (unless the user chose)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Our own progress goes to stderr; MLflow's per-download bars would drown it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def check_tracking_store() -> None:
    """One cheap request, so an unreachable server is one clear error before any work."""
    uri = mlflow.get_tracking_uri()
    try:
        MlflowClient().search_experiments(max_results=1)
    except Exception as err:  # connection errors arrive as several exception types
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if "Connection refused" in str(err):
            reason = "Connection refused"
        raise StageError(f"cannot reach the MLflow tracking store at {uri}: "
                         f"{reason[:200]}") from None


def param_value(value: Any) -> str:
    """The one string form of a param, so that equal settings compare equal when searched."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def log_params(params: dict[str, Any]) -> None:
    """Log params, leaving alone those already on the run: `mlflow run` logs each -P value as
    given (e.g. '03'), and MLflow refuses to change a logged param."""
    run = mlflow.active_run()
    logged = MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh = {k: param_value(v) for k, v in params.items() if k not in logged}
    if fresh:
        mlflow.log_params(fresh)


@contextmanager
def stage_run(stage: str, *, experiment: str, run_name: str, tags: dict[str, str],
              parent_run_id: str | None = None, resume_run_id: str | None = None
              ) -> Iterator[Run]:
    """The stage's one MLflow run.

    Under `mlflow run`, the run it made (MLFLOW_RUN_ID) is the one; otherwise a new run in
    `experiment` (as a child of `parent_run_id`, for the pipeline), or `resume_run_id` reopened
    to finish an interrupted stage. A failure marks the run FAILED and propagates.
    """
    all_tags = {TAG_STAGE: stage, **tags}
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id, nested=mlflow.active_run() is not None)
    elif parent_run_id is not None:
        # A pipeline's child: in the parent's experiment (under `mlflow run` that experiment
        # was chosen by MLflow, and set_experiment would refuse to change it).
        experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                               parent_run_id=parent_run_id, nested=True)
    elif os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run()  # the run `mlflow run` made for this entry point
    else:
        exp = mlflow.set_experiment(experiment)
        run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name)
    with run:
        mlflow.set_tags({**all_tags, "mlflow.runName": run_name})
        yield run


def get_run(run_id: str, *, stage: str | tuple[str, ...] | None = None,
            finished: bool = True) -> Run:
    """The run with this ID, checked to be of the expected stage and finished."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            raise StageError(f"no run with ID {run_id!r} in the tracking store at "
                             f"{mlflow.get_tracking_uri()}") from None
        raise StageError(f"cannot read run {run_id!r}: {str(err).splitlines()[0]}") from None
    stages = (stage,) if isinstance(stage, str) else stage
    actual = run.data.tags.get(TAG_STAGE)
    if stages is not None and actual not in stages:
        wanted = " or ".join(f"'{s}'" for s in stages)
        raise StageError(f"run {run_id} is a {actual!r} run, not a {wanted} run"
                         if actual else f"run {run_id} is not an mlprunes run (no "
                         f"{TAG_STAGE} tag); expected a {wanted} run")
    if finished and run.info.status != "FINISHED":
        raise StageError(f"run {run_id} ({actual}) has status {run.info.status}, not FINISHED; "
                         f"finish or re-run it first")
    return run


def runs_with_key(experiment_id: str, key: str) -> list[Run]:
    """Runs tagged with this settings digest, newest first."""
    return MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_CONFIG}` = '{key}'",
        order_by=["attributes.start_time DESC"], max_results=50)


def check_resumable(run_id: str, stage: str, key: str) -> None:
    """Only an unfinished run of this stage, started with these same settings, is resumed."""
    # A stage's own entry point under `mlflow run` already has a run to attach to; inside the
    # pipeline (a run is active) a step may reopen an interrupted child.
    if os.environ.get("MLFLOW_RUN_ID") and mlflow.active_run() is None:
        raise StageError("--resume-run-id cannot be used under `mlflow run`, which starts a "
                         "run of its own; call `mlprunes` directly to resume")
    run = get_run(run_id, stage=stage, finished=False)
    if run.info.status == "FINISHED":
        raise StageError(f"run {run_id} has already finished; there is nothing to resume")
    if run.data.tags.get(TAG_CONFIG) != key:
        raise StageError(f"run {run_id} was started with other settings; resume it with the "
                         f"options it ran with (its params show them)")


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    return [f.path for f in MlflowClient().list_artifacts(run_id, path)]


def download_artifact(run_id: str, path: str, dst: Path) -> Path:
    """One artifact of a run into `dst` (a directory we own, never MLflow's temp default)."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                    dst_path=str(dst))
    except (MlflowException, OSError) as err:
        raise StageError(f"run {run_id} has no artifact {path!r} ({str(err).splitlines()[0]})"
                         ) from None
    return Path(local)


def require_artifact(run_id: str, path: str) -> None:
    parent = str(Path(path).parent) if "/" in path else None
    if path not in list_artifacts(run_id, parent):
        raise StageError(f"run {run_id} has no artifact {path!r}")


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"mlprunes-{prefix}-") as d:
        yield Path(d)
