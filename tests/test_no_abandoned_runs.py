"""No run is left RUNNING for ever: a pipeline killed outright (SIGKILL, no handler runs) leaves
its runs RUNNING, and the next pipeline on the store marks those whose process is gone KILLED,
resuming what saved a checkpoint; a check that refuses before anything starts leaves no run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.stage_helpers import all_runs, cli
from tests.test_signals import start, wait_for_running

TINY = ["pipeline", "--preset", "tiny", "--no-progress"]


@pytest.mark.parametrize("executor", ["sequential", "ray"])
def test_a_pipeline_killed_outright_leaves_no_run_running_once_it_is_run_again(
        store, tmp_path, monkeypatch, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    monkeypatch.setenv("MLPRUNES_HEARTBEAT_SECONDS", "1")
    args = [*TINY, "--executor", executor]
    if executor == "ray":   # Ray's socket paths must stay short: not under tmp_path
        monkeypatch.setenv("TMPDIR", "/tmp")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlprunes"), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    else:
        proc, _ = start(args, tmp_path)
    prune_id = wait_for_running(proc, "prune", "arch.json", timeout=240)  # before a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)   # Ray's workers go with their driver
    left = {r.info.run_id: r for r in all_runs() if r.info.status == "RUNNING"}
    pipeline_id = next(i for i, r in left.items()
                       if r.data.tags.get("mlprunes.stage") == "pipeline")
    if executor == "sequential":   # a Ray worker is stopped by Ray, and ends its run itself
        assert prune_id in left

    again = cli(*args)
    assert again.exit_code == 0, again.stderr[-2000:]
    client = MlflowClient()
    assert client.get_run(pipeline_id).info.status == "KILLED"
    assert f"run {pipeline_id} (pipeline-tiny) was left RUNNING by a process that is gone; " \
           f"marked KILLED" in again.stderr
    statuses = {r.info.run_id: r.info.status for r in all_runs()}
    assert "RUNNING" not in statuses.values(), statuses
    # The prune run died before its first checkpoint (KILLED, replaced) or after it (resumed).
    assert statuses[prune_id] in ("KILLED", "FINISHED")
    prunes = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "prune"]
    assert [r.info.status for r in prunes].count("FINISHED") == 1


def test_a_ray_job_larger_than_any_node_is_refused_with_no_run_made(store):
    pytest.importorskip("ray")
    result = cli(*TINY, "--executor", "ray", "--cpus-per-job", "512")
    assert result.exit_code == 1
    assert len(result.error_lines) == 1 and "no job could ever start" in result.error_lines[0]
    assert all_runs() == []
