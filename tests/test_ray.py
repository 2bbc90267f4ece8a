"""A study on Ray: the same jobs and metrics as the sequential executor, against a real
`mlflow server` on PostgreSQL; a failed job's dependants skipped and the rest finished; a stop
cancels the running jobs as KILLED, and a re-run finishes the study."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.postgres import postgres_database
from tests.stage_helpers import cli
from tests.test_mlflow_integration import start_server

pytest.importorskip("ray")

TINY = ["pipeline", "--preset", "tiny", "--no-progress"]
RAY = ["--executor", "ray", "--cpus-per-job", "1"]
# What differs between two runs of the same job by nature: how long things took.
TIMINGS = ("seconds", "per_second", "latency", "speedup")


@pytest.fixture
def postgres_server(tmp_path, monkeypatch):
    with postgres_database(tmp_path / "postgres") as database:
        with start_server(tmp_path / "server", backend=database) as url:
            work = tmp_path / "client"
            work.mkdir()
            monkeypatch.chdir(work)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
            import mlflow

            monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", url)
            yield url


def finished_by_step(experiment: str) -> dict[str, tuple[str, dict[str, float]]]:
    """Each pipeline step's finished run: its key and its metrics, timings left out."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    steps = [r for r in runs if r.data.tags.get("mlprunes.pipeline_step")
             and r.info.status == "FINISHED"]
    keys = Counter(r.data.tags["mlprunes.config_key"] for r in steps
                   if "mlprunes.config_key" in r.data.tags)
    assert set(keys.values()) == {1}  # each job once
    return {r.data.tags["mlprunes.pipeline_step"]: (
        r.data.tags.get("mlprunes.config_key", ""),
        {k: v for k, v in r.data.metrics.items() if not any(t in k for t in TIMINGS)})
        for r in steps}


def test_ray_runs_the_same_jobs_with_the_same_metrics_as_sequential_on_a_postgres_server(
        postgres_server):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray job with one CPU runs: sums in the same order
    try:
        sequential = cli(*TINY, "--experiment", "sequential").run_id
    finally:
        torch.set_num_threads(threads)
    fanned = cli(*TINY, *RAY, "--experiment", "fanned")
    assert "[ray] started base" in fanned.stderr and "0 failed, 0 skipped" in fanned.stderr
    client = MlflowClient()
    assert client.get_run(fanned.run_id).info.status == "FINISHED"
    assert client.get_run(fanned.run_id).data.params["executor"] == "ray"
    ours, theirs = finished_by_step("sequential"), finished_by_step("fanned")
    assert set(ours) == set(theirs) and len(ours) == 7  # every step but compare
    for step in ours:
        if step in ("base", "reduced-bottle0.5"):  # no input runs: the very same key
            assert ours[step][0] == theirs[step][0]
        mine, other = ours[step][1], theirs[step][1]
        assert set(mine) == set(other), step
        for name, value in mine.items():
            assert other[name] == value, (step, name)
    # Lineage as the sequential executor makes it: children of the pipeline run.
    children = client.search_runs(
        [client.get_experiment_by_name("fanned").experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{fanned.run_id}'")
    assert len(children) == 8  # the family member is the family run's child
    # Run again, everything is reused but the comparison (and an evaluation whose latency a
    # busy machine made unsteady: it is measured anew, by design).
    remeasured = sum("mlprunes.latency_refused" in r.data.tags for r in children)
    again = cli(*TINY, *RAY, "--experiment", "fanned").run_id
    metrics = client.get_run(again).data.metrics
    assert metrics["runs_new"] == 1 + remeasured and metrics["runs_reused"] == 7 - remeasured
    assert client.get_run(sequential).data.metrics["runs_new"] == 8


def test_a_failed_job_skips_what_needs_it_and_a_fixed_rerun_does_only_what_is_missing(store):
    # A scratch point below the smallest network the prune run reached: that job fails when it
    # runs (it cannot be known before the prune run exists).
    broken = cli(*TINY, *RAY, "--set", "scratch.prunes=[]", "--set",
                 "scratch.params_budgets=[10]")
    assert broken.exit_code == 1
    assert "[ray] failed scratch-fisher-params10" in broken.stderr
    assert "below the smallest network" in broken.stderr
    # Evaluations wait for every network to train, so that no training shares the machine
    # with a timing: they are skipped too.
    assert "[ray] skipped evaluate-base: it needs scratch-fisher-params10" in broken.stderr
    errors = [line for line in broken.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: 1 job(s) failed, 3 skipped, 4 finished:"]
    assert "  compare: skipped" in broken.stderr
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    pipeline = next(r for r in runs if r.data.tags.get("mlprunes.stage") == "pipeline")
    assert pipeline.info.status == "FAILED"
    assert pipeline.data.metrics["jobs_failed"] == 1 and pipeline.data.metrics["jobs_skipped"] == 3
    by_stage = Counter((r.data.tags.get("mlprunes.stage"), r.info.status) for r in runs)
    assert not any(stage == "scratch" for stage, _ in by_stage)  # refused before its run began
    assert by_stage[("train", "FINISHED")] == 2 and by_stage[("family", "FINISHED")] == 1

    fixed = cli(*TINY, *RAY, "--set", "scratch.prunes=[]", "--set",
                "scratch.params_budgets=[70000]")
    metrics = client.get_run(fixed.run_id).data.metrics
    # Reused: base, reduced, prune, family. New: the scratch point, the two evaluations that
    # waited for it, and the comparison.
    assert (metrics["runs_reused"], metrics["runs_new"]) == (4, 4)


def test_a_stopped_ray_pipeline_kills_its_running_jobs_and_a_rerun_finishes(store, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLPRUNES_HEARTBEAT_SECONDS": "1"}
    mlprunes = str(Path(sys.executable).parent / "mlprunes")
    long = [*TINY, *RAY, "--set", "train.epochs=150", "--set", "data.shapes_train=1024"]
    proc = subprocess.Popen([mlprunes, *long], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    client = MlflowClient()
    deadline = time.time() + 180
    running = []
    while time.time() < deadline and proc.poll() is None and len(running) < 2:
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps) if exps else []
        running = [r for r in runs if r.data.tags.get("mlprunes.stage") == "train"
                   and r.info.status == "RUNNING"
                   and client.get_metric_history(r.info.run_id, "train_loss")]
        time.sleep(0.5)
    assert len(running) == 2, "the base and the baseline did not train at once"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "[ray] stopping 2 running job(s)" in out
    statuses = {r.info.run_id: r.info.status for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert all(statuses[r.info.run_id] == "KILLED" for r in running), statuses
    assert "RUNNING" not in statuses.values()

    again = subprocess.run([mlprunes, *long], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for run in running:  # the very runs that were stopped, continued
        assert f"run {run.info.run_id} (resumed," in again.stderr
        assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_cluster_is_refused_a_store_only_this_machine_can_reach(store):
    result = cli(*TINY, *RAY, "--ray-address", "10.0.0.1:6379")
    assert result.exit_code == 1
    assert result.error_lines[0].startswith(
        "Error: a study on a Ray cluster needs a tracking store every node can reach")
    assert not [r for r in MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()])]  # nothing started


def test_ray_options_without_the_ray_executor_are_refused(store):
    result = cli(*TINY, "--gpus-per-job", "1")
    assert result.exit_code == 2 and "apply to --executor ray" in result.stderr
