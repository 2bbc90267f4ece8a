"""Two processes on one store: a live run is not resumed from under its process, and two
pipelines on one fresh store train each job once."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.stage_helpers import TINY_TRAIN, all_runs, cli
from tests.test_mlflow_integration import server  # noqa: F401 (a fixture)
from tests.test_signals import LONG_TRAIN, start, wait_for_running


def test_a_live_run_is_refused_for_resume_and_a_silent_one_taken_over(store, tmp_path,
                                                                       monkeypatch):
    client = MlflowClient()
    proc, _ = start(LONG_TRAIN, tmp_path)
    run_id = wait_for_running(proc, "train", "checkpoints/last.pt")
    result = cli(*LONG_TRAIN, "--resume-run-id", run_id)
    assert result.exit_code != 0
    assert f"run {run_id} is running on host" in result.error_lines[0]
    assert f"pid {proc.pid}" in result.error_lines[0]
    proc.send_signal(signal.SIGKILL)  # dies without a word: RUNNING, its heartbeat ageing
    proc.wait()
    assert client.get_run(run_id).info.status == "RUNNING"
    monkeypatch.setenv("MLPRUNES_HEARTBEAT_SECONDS", "0.2")  # stale after 0.6 s of silence
    time.sleep(1.0)
    assert cli(*LONG_TRAIN, "--resume-run-id", run_id).run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


def test_two_pipelines_on_one_fresh_store_train_each_job_once(store, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLPRUNES_HEARTBEAT_SECONDS": "1"}
    mlprunes = str(Path(sys.executable).parent / "mlprunes")
    args = [mlprunes, "pipeline", "--preset", "tiny", "--no-progress"]
    # The store does not exist yet: both processes make it at the same moment.
    assert not Path(store.removeprefix("sqlite:///")).exists()
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-1200:] for o in outputs]

    runs = [r for r in all_runs() if r.data.tags.get("mlprunes.config_key")]
    finished = Counter(r.data.tags["mlprunes.config_key"] for r in runs
                       if r.info.status == "FINISHED")
    assert finished and set(finished.values()) == {1}, finished  # each job trained once
    assert all(r.info.status == "FINISHED" for r in runs)
    pipelines = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "pipeline"]
    assert sorted(r.info.status for r in pipelines) == ["FINISHED", "FINISHED"]
    # Between them they waited for, or reused, what the other made.
    assert any("waiting" in out or "reusing" in out for out in outputs), outputs


def test_two_processes_resuming_one_interrupted_run_at_once_leave_it_to_one(store, tmp_path):
    client = MlflowClient()
    proc, _ = start(LONG_TRAIN, tmp_path)
    run_id = wait_for_running(proc, "train", "checkpoints/last.pt")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert client.get_run(run_id).info.status == "KILLED"
    # Both find it interrupted; the one whose takeover was overwritten yields to the other.
    resumers = [start([*LONG_TRAIN, "--resume-run-id", run_id], tmp_path)[0] for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in resumers]
    codes = sorted(p.returncode for p in resumers)
    assert codes == [0, 1], [o[-1500:] for o in outputs]
    loser = outputs[[p.returncode for p in resumers].index(1)]
    assert f"Error: run {run_id} is running on host" in loser
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 41))  # one process logged each epoch, once


def test_a_takeover_overwritten_while_it_settles_yields_to_the_other_process(store,
                                                                             monkeypatch):
    import pytest

    from mlprunes.errors import Claimed, StageError
    from mlprunes.stages import contract

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("takeover")).info.run_id
    client.set_terminated(run_id, "KILLED")

    def other_process_takes_it(seconds):  # its write lands while this one waits
        client.set_tag(run_id, contract.TAG_HEARTBEAT, f"{time.time()} otherhost 4242 resuming")

    from mlprunes.stages import liveness

    real_sleep = time.sleep
    monkeypatch.setattr(liveness.time, "sleep", other_process_takes_it)
    with pytest.raises(StageError, match=f"run {run_id} is running on host otherhost, pid 4242"):
        contract._take_over(run_id, in_study=False)
    # A third process now finds the run taken; inside a pipeline it waits rather than fails.
    with pytest.raises(Claimed):
        contract._take_over(run_id, in_study=True)
    monkeypatch.setattr(liveness.time, "sleep", real_sleep)
    client.set_tag(run_id, contract.TAG_HEARTBEAT, "1.0 otherhost 4242 resuming")  # went stale
    contract._take_over(run_id, in_study=False)  # taken over
    assert client.get_run(run_id).data.tags[contract.TAG_HEARTBEAT].endswith(" resuming")


def _lock(store_uri: str):
    """Another process's write transaction holding the SQLite store, as many writers at once
    would."""
    import sqlite3

    connection = sqlite3.connect(store_uri.removeprefix("sqlite:///"), isolation_level=None)
    connection.execute("BEGIN EXCLUSIVE")
    return connection


def test_a_sqlite_store_locked_past_its_timeout_is_one_line_that_recommends_a_server(store):
    MlflowClient().search_experiments()  # the store exists
    lock = _lock(store)
    try:
        result = cli(*TINY_TRAIN)
    finally:
        lock.close()
    assert result.exit_code == 1
    assert len(result.error_lines) == 1, result.stderr
    assert "the SQLite database stayed locked by another process" in result.error_lines[0]
    assert "start a tracking server (mlflow server)" in result.error_lines[0]
    assert not all_runs()


def test_a_sqlite_store_locked_mid_run_stops_it_with_one_line_and_it_resumes(store, tmp_path,
                                                                            monkeypatch):
    proc, _ = start(LONG_TRAIN, tmp_path)
    run_id = wait_for_running(proc, "train", "checkpoints/last.pt")
    lock = _lock(store)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        lock.close()
    assert proc.returncode == 1, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "stayed locked by another process" in errors[0], out[-2000:]
    assert f"during run {run_id}" in errors[0] and "--resume-run-id" in errors[0]
    monkeypatch.setenv("MLPRUNES_HEARTBEAT_SECONDS", "0.2")
    time.sleep(1.0)
    assert cli(*LONG_TRAIN, "--resume-run-id", run_id).run_id == run_id
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 41))


def test_a_run_is_alive_while_its_heartbeat_is_fresh_and_its_process_could_be_running(store):
    import socket

    from mlprunes.stages import contract

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("alive")).info.run_id
    here = socket.gethostname()

    def alive_with(beat):
        client.set_tag(run_id, contract.TAG_HEARTBEAT, beat)
        return contract.alive(client.get_run(run_id))

    from mlprunes.stages.liveness import process_start

    now = time.time()
    other = subprocess.Popen(["sleep", "60"])          # a live process of this machine
    try:
        pid, started = other.pid, process_start(other.pid)
        assert started is not None
        assert alive_with(f"{now} otherhost 4242") == "host otherhost, pid 4242"
        assert alive_with(f"{now - 1000} otherhost 4242") is None  # silent for three beats
        assert alive_with(f"{now} {here} {pid}") == f"host {here}, pid {pid}"
        assert alive_with(f"{now} {here} {pid} {started}") == f"host {here}, pid {pid}"
        # A pid now running another program is not the run's process.
        assert alive_with(f"{now} {here} {pid} {int(started) + 1}") is None
        # With no lock to tell, a silent process is alive only while it is stopped (paused).
        assert alive_with(f"{now - 1000} {here} {pid} {started}") is None
        other.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        assert alive_with(f"{now - 1000} {here} {pid} {started}") == f"host {here}, pid {pid}"
    finally:
        other.kill()
        other.wait()
    # This very process does not have the run open, whatever its beat says.
    assert alive_with(f"{now} {here} {os.getpid()} {process_start(os.getpid())}") is None
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert alive_with(f"{now} {here} {dead.pid}") is None  # this machine, its process gone
    client.set_terminated(run_id, "KILLED")
    assert alive_with(f"{now} otherhost 4242") is None  # ended, and not being taken over
    assert alive_with(f"{now} otherhost 4242 resuming") == "host otherhost, pid 4242"


def test_a_paused_pipeline_keeps_its_run_and_a_second_pipeline_waits_for_it(server, tmp_path,
                                                                           monkeypatch):
    """SIGSTOP a pipeline for ten heartbeats: on this host its process still has the run open,
    so a second pipeline waits for its run instead of taking it over; after SIGCONT both end
    well, each job trained once, each metric logged once per step. (On a tracking server: a
    process paused inside a SQLite write would lock a shared file store for everyone.)"""
    from tests.conftest import assert_logged_once

    monkeypatch.setenv("MLPRUNES_HEARTBEAT_SECONDS", "0.3")
    args = ["pipeline", "--preset", "tiny", "--no-progress", "--set",
            "train.epochs=30;data.shapes_train=512"]
    first, _ = start(args, tmp_path)
    run_id = wait_for_running(first, "train", "checkpoints/last.pt")
    first.send_signal(signal.SIGSTOP)
    try:
        time.sleep(3.0)                                   # ten beats of silence
        second, _ = start(args, tmp_path)
        deadline = time.time() + 60
        while time.time() < deadline and second.poll() is None:
            runs = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "pipeline"]
            if len(runs) == 2:
                break
            time.sleep(0.2)
        time.sleep(4.0)                                   # time enough to take a run over
        run = MlflowClient().get_run(run_id)
        assert run.info.status == "RUNNING" and second.poll() is None
        assert f" {first.pid} " in run.data.tags["mlprunes.heartbeat"]   # still the first's
    finally:
        first.send_signal(signal.SIGCONT)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], [o[-1500:] for o in outputs]
    assert f"run {run_id} is running on host" in outputs[1], outputs[1][-1500:]
    runs = [r for r in all_runs() if r.data.tags.get("mlprunes.config_key")]
    finished = Counter(r.data.tags["mlprunes.config_key"] for r in runs
                       if r.info.status == "FINISHED")
    assert set(finished.values()) == {1}, finished
    steps = [m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 31))
    assert_logged_once(tmp_path / "server" / "server.db")


def test_a_process_whose_run_is_taken_over_stops_before_its_next_log(store, tmp_path,
                                                                    monkeypatch):
    """As when a process on another host, paused past three heartbeats, comes back to find
    its run resumed by someone else: it logs nothing more, leaves the run as the new owner has
    it, says so in one line and exits non-zero."""
    monkeypatch.setenv("MLPRUNES_HEARTBEAT_SECONDS", "0.3")
    client = MlflowClient()
    proc, _ = start(LONG_TRAIN, tmp_path)
    run_id = wait_for_running(proc, "train", "checkpoints/last.pt")
    proc.send_signal(signal.SIGSTOP)          # paused, as the other host saw it
    time.sleep(1.0)
    owner = f"{time.time():.1f} otherhost 4242 - resuming"
    client.set_tag(run_id, "mlprunes.heartbeat", owner)
    taken_at = time.time()
    proc.send_signal(signal.SIGCONT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-1500:]
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: run {run_id} was taken over by host otherhost, pid 4242 while "
                      f"this process was not heard from; stopping without logging into it"]
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"                 # the new owner's to end
    assert run.data.tags["mlprunes.heartbeat"] == owner
    # One beat (0.3 s) to notice, then no log: nothing after the takeover but one epoch's
    # worth of slack for the log that was under way.
    logged = client.get_metric_history(run_id, "train_loss")
    assert logged and max(m.step for m in logged) < 40
    late = [m for m in logged if m.timestamp / 1000 > taken_at + 1.0]
    assert late == [], [(m.step, m.timestamp / 1000 - taken_at) for m in late]
