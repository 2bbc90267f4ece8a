"""MLflow plumbing: the client's settings, opening a run, reading one, moving artifacts.

It knows MLflow, not mlprunes: what the tags and artifacts of a stage's run mean is the run
contract's (`contract.py`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator, Sequence

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlprunes import signals
from mlprunes.errors import Interrupted, StageError
from mlprunes.stages import digests, liveness

# Retries of the first request: a server that is down when a stage starts is one clear line in
# seconds. Once a stage has begun, MLflow's own retries apply (7, with backoff: about four
# minutes), so that a server restarting under a long run does not kill it.
FIRST_REQUEST_RETRIES = "2"
_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
# However the first request is retried, a store that accepts connections but never answers is
# given up on after the configured request timeout (or this floor, which covers the retries of a
# refused connection).
_FIRST_REQUEST_FLOOR_SECONDS = 10.0


class StoreLost(StageError):
    """The tracking store stopped answering in the middle of a stage, after MLflow's retries."""


def configure_client() -> None:
    os.environ.setdefault(_TIMEOUT, "30")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Our own progress goes to stderr; MLflow's per-download bars would drown it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A locked SQLite store is said in one line of ours; MLflow would log its traceback first.
    logging.getLogger("mlflow.store.db.utils").addFilter(_not_a_lock)


def _not_a_lock(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return error is None or _LOCKED not in _chain_text(error)


def tracking_uri() -> str:
    return mlflow.get_tracking_uri()


# Settings a worker process of a study (a Ray task) takes from the driver.
_PASSED_ON = (_TIMEOUT, _RETRIES, "MLFLOW_DISABLE_TELEMETRY",
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLPRUNES_HEARTBEAT_SECONDS",
              "MLPRUNES_CHECKPOINT_DIR", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_INSECURE_TLS",
              "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
              "MLFLOW_S3_ENDPOINT_URL",
              # The modules a traced network's factory may come from (`nets.builders`).
              "MLPRUNES_ALLOWED_MODULES")


def worker_env() -> dict[str, str]:
    """What another process needs to log where this one logs: the tracking URI (a local
    store's path made absolute, since workers run elsewhere), the client's settings and
    credentials (the tracking server's, and an S3 artifact store's)."""
    env = {k: v for k, v in os.environ.items() if k in _PASSED_ON or k.startswith("AWS_")}
    env["MLFLOW_TRACKING_URI"] = absolute_uri(mlflow.get_tracking_uri())
    return env


def absolute_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if uri.startswith("file:") or _is_path(uri):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    return uri


def _is_path(uri: str) -> bool:
    """A bare path (MLflow's file store), not a scheme such as `databricks`."""
    return "://" not in uri and not uri.startswith("databricks")


def is_local_store(uri: str) -> bool:
    """A store only this machine can reach (a file or SQLite database)."""
    return uri.startswith(("sqlite:", "file:")) or _is_path(uri)


def check_tracking_store() -> None:
    """One cheap request, so an unreachable server is one clear error before any work."""
    uri = mlflow.get_tracking_uri()
    chosen = os.environ.get(_RETRIES)  # a user's own setting applies throughout
    os.environ[_RETRIES] = chosen or FIRST_REQUEST_RETRIES
    try:
        if uri.startswith(("http://", "https://")):
            _within_deadline(lambda: _first_request(uri), uri)
        else:  # a database: its own lock timeout applies
            _first_request(uri)
    except StageError:
        raise
    except Exception as err:  # connection errors arrive as several exception types
        raise StageError(f"cannot reach the MLflow tracking store at {uri}: {reason(err)}"
                         ) from None
    finally:
        if chosen is None:
            del os.environ[_RETRIES]


def _within_deadline(request, uri: str) -> None:
    """Run `request`, giving up once the request timeout has passed: MLflow retries a read
    that timed out as it retries a refused connection, so a server that accepts and never
    answers would otherwise take (retries + 1) x the timeout."""
    import threading

    deadline = max(float(os.environ.get(_TIMEOUT, "30")), _FIRST_REQUEST_FLOOR_SECONDS)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            request()
            outcome.append(None)
        except BaseException as err:  # handed to the caller's thread
            outcome.append(err)

    # A daemon thread: a request still hanging must not keep the process from exiting.
    worker = threading.Thread(target=attempt, name="first-request", daemon=True)
    worker.start()
    worker.join(deadline)
    if not outcome:
        raise StageError(f"the MLflow tracking store at {uri} did not answer within "
                         f"{deadline:.0f} s ({_TIMEOUT})")
    if outcome[0] is not None:
        raise outcome[0]


def reason(err: BaseException) -> str:
    """The part of a failed request's error that says why, in a few words."""
    text = str(err)
    if _LOCKED in _chain_text(err):
        return ("the SQLite database stayed locked by another process past SQLite's timeout; "
                "SQLite takes one writer at a time: for studies that run at once, start a "
                "tracking server (mlflow server) and point MLFLOW_TRACKING_URI at it")
    if "Connection refused" in text:
        return "Connection refused"
    if "Read timed out" in text:
        return "it did not answer in time"
    status = re.search(r"error code (\d+) != 200", text)
    if status:
        return (f"it answered HTTP {status.group(1)} to an MLflow API request; is it an MLflow "
                f"tracking server?")
    lines = [line for line in text.strip().splitlines() if line.strip(" '\"")]
    return lines[-1][:200] if lines else type(err).__name__


_LOCKED = "database is locked"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = err
    while seen is not None:
        yield seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)


def _chain_text(err: BaseException) -> str:
    return "\n".join(str(e) for e in _chain(err))


def unreachable(err: BaseException) -> bool:
    """Whether `err` is the tracking store not answering (a refused connection, a timeout, a
    server error, a SQLite file locked by others) once the retries were spent."""
    import requests

    lost = (StoreLost, requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            requests.exceptions.RetryError)
    return any(isinstance(e, lost) for e in _chain(err)) or _LOCKED in _chain_text(err)


@contextmanager
def failing_fast() -> Iterator[None]:
    """Requests in this block are tried once, briefly: for tidying up after the store was
    lost, which must not wait through another round of retries."""
    saved = {k: os.environ.get(k) for k in (_RETRIES, _TIMEOUT)}
    os.environ.update({_RETRIES: "1", _TIMEOUT: "5"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_request(uri: str) -> None:
    """The first request creates a fresh SQLite store's tables. Two processes that start on one
    fresh store would race to do it and fail; a lock file beside the database lets one make
    the tables while the other waits."""
    if not uri.startswith("sqlite:///"):
        MlflowClient().search_experiments(max_results=1)
        return
    import fcntl

    database = Path(uri.removeprefix("sqlite:///").split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.init-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient().search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def set_experiment(name: str):
    """The experiment, made if it does not exist (two processes may both try to make it),
    with an artifact location this process can write: checked before it is made, so that an
    experiment is never left pointing at a folder no run can write."""
    if MlflowClient().get_experiment_by_name(name) is None:
        _check_default_artifact_root(name)
    try:
        experiment = mlflow.set_experiment(name)
    except MlflowException:
        time.sleep(0.5)
        experiment = mlflow.set_experiment(name)
    check_artifact_location(experiment)
    return experiment


def _local_path(location: str) -> Path | None:
    """The folder an artifact location names on this machine, or None (a server's, a cloud
    bucket's)."""
    if location.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(location).path))
    return Path(location) if location and ":" not in location else None


def _writable(folder: Path) -> bool:
    """Whether this process can make or write `folder`: tried in its nearest existing ancestor
    (permission bits do not tell for root, nor on a read-only mount)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        handle, name = tempfile.mkstemp(prefix=".mlprunes-write-test-", dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(name)
    return True


def _check_default_artifact_root(name: str) -> None:
    # A database store reached directly (SQLite, PostgreSQL, MySQL) puts a new experiment's
    # artifacts under ./mlruns, where it runs; a server or a file store has its own place.
    if is_server(mlflow.get_tracking_uri()) or _is_path(mlflow.get_tracking_uri()) or \
            mlflow.get_tracking_uri().startswith(("file:", "databricks")):
        return
    root = Path.cwd() / "mlruns"
    if not _writable(root):
        raise StageError(f"cannot make the experiment {name!r} here: its artifacts would go "
                         f"under {root}, which this process cannot write; run from a folder "
                         f"it can write")


def check_artifact_location(experiment) -> None:
    local = _local_path(experiment.artifact_location or "")
    if local is not None and not _writable(local):
        raise StageError(f"experiment {experiment.name!r} keeps its artifacts at {local}, which "
                         f"this process cannot write; make it writable, or use another "
                         f"experiment (--experiment)")


EXPERIMENT_KIND = "mlflow.experimentKind"
_kinds_marked: set[tuple[str, str]] = set()


def mark_experiment_kind(experiment_id: str) -> None:
    """Tag the experiment as model training (`custom_model_development`), so that MLflow
    versions that read the tag open it in that mode, not GenAI's; a kind someone chose is
    left alone. (MLflow 3.17 goes by the URL's workflowType instead: see `ui_link`.)"""
    marked = (mlflow.get_tracking_uri(), experiment_id)
    if marked in _kinds_marked:
        return
    client = MlflowClient()
    if EXPERIMENT_KIND not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, "custom_model_development")
    _kinds_marked.add(marked)


DEFAULT_UI = "http://127.0.0.1:5000"


def is_server(uri: str) -> bool:
    """A tracking server, whose address is also its UI's."""
    return uri.startswith(("http://", "https://"))


def ui_link(run: Run, artifact: str = "", relative: bool = False) -> str:
    """The run's page in the MLflow UI (or one of its artifacts), opened in model-training mode
    (MLflow 3.17 opens every experiment as GenAI unless the URL says
    `workflowType=machine_learning`): on the tracking server for a remote store, on what
    `mlflow ui` serves by default for a local one. `relative`: the hash route alone, for links
    inside the UI (run descriptions), which then work on whatever address serves it."""
    path = f"/artifacts/{artifact}" if artifact else ""
    route = (f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}{path}"
             f"?workflowType=machine_learning")
    return route if relative else f"{ui_base()}/{route}"


def ui_base() -> str:
    """Where the MLflow UI of this store is: the tracking server for a remote store, what
    `mlflow ui` serves by default for a local one."""
    uri = tracking_uri()
    return uri.rstrip("/") if is_server(uri) else DEFAULT_UI


NOTE = "mlflow.note.content"   # the run's Description in the UI (markdown)
TAG_PRUNING_CURVES = "mlprunes.pruning_curves"   # a study's curves in the chart view (a route)


def describe_run(text: str, run_id: str | None = None) -> None:
    """Set a run's description (the active run's by default)."""
    if run_id is None:
        mlflow.set_tag(NOTE, text)
    else:
        MlflowClient().set_tag(run_id, NOTE, text)


def ui_hint(run: Run) -> str:
    """The line a command prints at its end: where to look at its run."""
    uri = tracking_uri()
    line = f"MLflow UI: {ui_link(run)}"
    curves = run.data.tags.get(TAG_PRUNING_CURVES)
    if curves:  # a compare or pipeline run: its study's curves in MLflow's chart view
        line += f"\nPruning curves: {ui_base()}/{curves}"
    if not is_server(uri):
        line += f"\n  (serve this store first: mlflow ui --backend-store-uri {absolute_uri(uri)})"
    return line


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
def open_run(*, experiment: str, run_name: str, tags: dict[str, str],
             parent_run_id: str | None = None, resume_run_id: str | None = None
             ) -> Iterator[Run]:
    """A run to log into: under `mlflow run`, the run it made (MLFLOW_RUN_ID); otherwise a new
    run in `experiment` (as a child of `parent_run_id`, for the pipeline), or `resume_run_id`
    reopened to finish an interrupted job. A failure marks the run FAILED and propagates."""
    all_tags = {**tags, "mlflow.runName": run_name}
    if resume_run_id is not None:
        run = mlflow.start_run(run_id=resume_run_id, nested=mlflow.active_run() is not None)
    elif parent_run_id is not None:
        # A pipeline's child: in the parent's experiment (under `mlflow run` that experiment
        # was chosen by MLflow, and set_experiment would refuse to change it).
        experiment_id = MlflowClient().get_run(parent_run_id).info.experiment_id
        # Tags go in with the run, so that no one sees it without them (a claim is a key tag).
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                               parent_run_id=parent_run_id, nested=True, tags=all_tags)
    elif os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run()  # the run `mlflow run` made for this entry point
    else:
        exp = set_experiment(experiment)
        run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=run_name,
                               tags=all_tags)
    with run:
        mlflow.set_tags(all_tags)
        with suppress(Exception):  # how the UI opens it; never a reason to fail a run
            mark_experiment_kind(run.info.experiment_id)
        try:
            yield run
        except BaseException as err:
            if isinstance(err, liveness.RunTakenOver) and err.run_id == run.info.run_id:
                # Another process owns the run now: leave it exactly as that process has it.
                _forget_active_run(run.info.run_id)
                raise
            if unreachable(err):
                # The run cannot be marked now: it stays as the store last saw it, and once
                # its heartbeat is stale it is taken for interrupted (and can be resumed).
                with failing_fast(), suppress(Exception):
                    mlflow.end_run("FAILED")
                if isinstance(err, StoreLost):
                    raise
                raise StoreLost(f"lost the MLflow tracking store at {mlflow.get_tracking_uri()}"
                                f" ({reason(err)}) during run {run.info.run_id}") from None
            if not isinstance(err, (Interrupted, KeyboardInterrupt)) and not signals.received():
                raise
            # Stopped from outside, not failed: KILLED, and resumable from its last checkpoint.
            # Briefly: signals are held off meanwhile, and a store that is down would hold the
            # stop for minutes of retries (the run then goes stale, and is resumable anyway).
            with failing_fast():
                try:
                    mlflow.end_run("KILLED")
                except Exception as end_err:
                    if not unreachable(end_err):
                        raise
            print(f"run {run.info.run_id} stopped and marked KILLED", file=sys.stderr,
                  flush=True)
            raise


def _forget_active_run(run_id: str) -> None:
    """Drop a run from MLflow's stack of active runs without ending it (ending it would write
    its status into a run another process now owns). MLflow has no public call for this."""
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    stack[:] = [r for r in stack if r.info.run_id != run_id]


def fetch_run(run_id: str) -> Run:
    """The run with this ID, or one clear error."""
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err).lower():
            raise StageError(f"no run with ID {run_id!r} in the tracking store at "
                             f"{mlflow.get_tracking_uri()}") from None
        raise StageError(f"cannot read run {run_id!r}: {str(err).splitlines()[0]}") from None


def last_logged_step(run_id: str, key: str) -> int:
    """The last step at which a run logged `key` (-1 if never): a resumed run recomputes the
    steps after its checkpoint and must not log them twice."""
    history = MlflowClient().get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def metric_steps(run_id: str, key: str) -> dict[int, float]:
    """A metric's logged values by step."""
    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


def runs_tagged(experiment_id: str, tag: str, value: str) -> list[Run]:
    """Runs of an experiment with this tag value, newest first."""
    return MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
        order_by=["attributes.start_time DESC"], max_results=50)


def delete_tag(run_id: str, key: str) -> None:
    MlflowClient().delete_tag(run_id, key)


def list_artifacts(run_id: str, path: str | None = None) -> list[str]:
    return [f.path for f in MlflowClient().list_artifacts(run_id, path)]


def download_artifact(run_id: str, path: str, dst: Path) -> Path:
    """One artifact of a run into `dst` (a directory we own, never MLflow's temp default),
    checked against the digest its run recorded."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                    dst_path=str(dst))
    except (MlflowException, OSError) as err:
        if unreachable(err):  # the store is gone, not the artifact
            raise
        raise StageError(f"run {run_id} has no artifact {path!r} ({str(err).splitlines()[0]})"
                         ) from None
    digests.check(run_id, path, Path(local))
    return Path(local)


def require_artifact(run_id: str, path: str) -> None:
    parent = str(Path(path).parent) if "/" in path else None
    if path not in list_artifacts(run_id, parent):
        raise StageError(f"run {run_id} has no artifact {path!r}")


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"mlprunes-{prefix}-") as d:
        yield Path(d)


def log_csv(rows: Sequence[dict[str, Any]], name: str, columns: Sequence[str] | None = None,
            artifact_path: str | None = None) -> None:
    """A table as a CSV artifact of the active run."""
    from mlprunes.report.table import write_csv

    with scratch_dir("csv") as tmp:
        mlflow.log_artifact(str(write_csv(rows, tmp / name, columns)), artifact_path)
