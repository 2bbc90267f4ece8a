"""The tracking store going away: a real server stopped for 30 s and restarted mid-train, a
server gone for good (the checkpoint kept on local disk, the run resumed from it once the store
is back), a store that accepts connections and never answers, and a server that is not MLflow.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.stage_helpers import TINY_TRAIN, all_runs, cli
from tests.test_mlflow_integration import BIN, env_with_venv, free_port


def serve(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on `port` with its store in `folder`, answering /health."""
    import urllib.request

    env = env_with_venv(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder}/server.db",
         "--artifacts-destination", str(folder / "artifacts")],
        env=env, stdout=open(folder / "server.log", "a"), stderr=subprocess.STDOUT,
        start_new_session=True, cwd=str(folder))
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError((folder / "server.log").read_text()[-2000:])


def two_epochs_in(train: subprocess.Popen, client: MlflowClient) -> str:
    """The ID of the training process's run, once it has logged two epochs."""
    deadline = time.time() + 120
    while time.time() < deadline and train.poll() is None:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train_loss")) >= 2:
            return runs[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("training ended before the outage")


def point_at(url: str, monkeypatch) -> None:
    """This process's MLflow client (and its children's) at `url`, restored after the test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", url)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_run_rides_out_a_server_restart_and_logs_every_epoch_once(tmp_path, monkeypatch):
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    epochs = 40
    args = [*TINY_TRAIN, "--epochs", str(epochs), "--shapes-train", "512"]
    env = {**env_with_venv(MLFLOW_TRACKING_URI=url), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    server = serve(folder, port)
    train = None
    try:
        train = subprocess.Popen([str(BIN / "mlprunes"), *args], env=env, cwd=str(tmp_path),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(url)
        run_id = two_epochs_in(train, client)
        stop(server)
        time.sleep(30)
        assert train.poll() is None, train.communicate()[0][-3000:]
        server = serve(folder, port)
        out, _ = train.communicate(timeout=600)
        assert train.returncode == 0, out[-3000:]
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert sorted(steps) == list(range(1, epochs + 1))  # every epoch, none twice
        assert "test_error" in run.data.metrics
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        stop(server)


def test_a_server_lost_for_good_is_one_line_naming_the_kept_checkpoint_and_a_resume_finishes(
        tmp_path, monkeypatch):
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    point_at(url, monkeypatch)
    epochs = 40
    args = [*TINY_TRAIN, "--epochs", str(epochs), "--shapes-train", "512"]
    # Few, short retries: "gone for good" arrives in seconds rather than MLflow's four minutes.
    env = {**env_with_venv(MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
                           MLFLOW_HTTP_REQUEST_TIMEOUT="3"), "PYTHONUNBUFFERED": "1"}
    server = serve(folder, port)
    train = None
    try:
        train = subprocess.Popen([str(BIN / "mlprunes"), *args], env=env, cwd=str(tmp_path),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = MlflowClient(url)
        run_id = two_epochs_in(train, client)
        stop(server)
        out, _ = train.communicate(timeout=300)
        assert train.returncode == 1, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, out[-3000:]
        assert f"lost the MLflow tracking store at {url}" in errors[0]
        assert f"during run {run_id}" in errors[0] and "--resume-run-id" in errors[0]
        kept = Path(errors[0].split("kept at ")[1].split(". Once")[0])
        assert kept.is_file() and kept.name == "last.pt" and kept.parent.name == run_id

        server = serve(folder, port)
        assert client.get_run(run_id).info.status == "RUNNING"  # as the store last saw it
        monkeypatch.setenv("MLPRUNES_HEARTBEAT_SECONDS", "0.5")  # stale after 1.5 s
        time.sleep(2)
        resumed = cli(*args, "--resume-run-id", run_id)
        assert resumed.run_id == run_id
        assert f"resuming run {run_id} after epoch" in resumed.stderr
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert sorted(steps) == list(range(1, epochs + 1))  # every epoch, none twice
        assert not kept.parent.exists()  # the store has everything now
    finally:
        if train is not None and train.poll() is None:
            train.kill()
        stop(server)


def test_a_checkpoint_the_store_never_got_is_resumed_from_the_copy_kept_on_disk(store,
                                                                               monkeypatch):
    import mlflow
    import requests

    args = [*TINY_TRAIN, "--epochs", "4"]
    uploads = []
    real_log_artifact = mlflow.log_artifact

    def store_gone_at_second_checkpoint(local_path, artifact_path=None, *a, **k):
        if str(local_path).endswith("last.pt"):
            uploads.append(local_path)
            if len(uploads) == 2:
                raise requests.exceptions.ConnectionError("Connection refused")
        return real_log_artifact(local_path, artifact_path, *a, **k)

    monkeypatch.setattr(mlflow, "log_artifact", store_gone_at_second_checkpoint)
    lost = cli(*args)
    assert lost.exit_code == 1 and len(lost.error_lines) == 1, (lost.stderr, lost.exception)
    assert "lost the MLflow tracking store" in lost.error_lines[0]
    kept = Path(lost.error_lines[0].split("kept at ")[1].split(". Once")[0])
    assert kept.is_file()
    run_id = kept.parent.name
    monkeypatch.setattr(mlflow, "log_artifact", real_log_artifact)

    # The store holds epoch 1's checkpoint; this machine kept epoch 2's.
    resumed = cli(*args, "--resume-run-id", run_id)
    assert resumed.run_id == run_id
    assert f"resuming run {run_id} after epoch 2 from the checkpoint kept at {kept}" in \
        resumed.stderr
    client = MlflowClient()
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4]
    uninterrupted = client.get_run(cli(*args).run_id).data.metrics
    assert client.get_run(run_id).data.metrics["test_error"] == uninterrupted["test_error"]
    assert client.get_run(run_id).data.metrics["test_loss"] == uninterrupted["test_loss"]
    assert not kept.parent.exists()


def test_a_store_that_accepts_but_never_answers_fails_within_the_timeout(store, monkeypatch):
    import contextlib
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []

    def accept_and_say_nothing():
        with contextlib.suppress(OSError):  # the listener is closed when the test ends
            while True:
                held.append(listener.accept())

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    point_at(url, monkeypatch)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "4")
    try:
        started = time.time()
        result = cli(*TINY_TRAIN)
        took = time.time() - started
    finally:
        listener.close()
    assert result.exit_code == 1
    assert result.error_lines == [
        f"Error: the MLflow tracking store at {url} did not answer within 10 s "
        f"(MLFLOW_HTTP_REQUEST_TIMEOUT)"]
    assert took < 25  # not (retries + 1) x the timeout


def test_a_server_that_is_not_mlflow_is_named_as_such(store, monkeypatch):
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test's output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    point_at(url, monkeypatch)
    try:
        result = cli(*TINY_TRAIN)
    finally:
        server.shutdown()
    assert result.exit_code == 1
    assert result.error_lines == [
        f"Error: cannot reach the MLflow tracking store at {url}: it answered HTTP 501 to an "
        f"MLflow API request; is it an MLflow tracking server?"]


def test_a_checkpoint_whose_upload_failed_otherwise_is_kept_until_a_resume_uploads_it(
        store, monkeypatch):
    import mlflow

    from mlprunes.stages import kept

    args = [*TINY_TRAIN, "--epochs", "3"]
    real_log_artifact = mlflow.log_artifact

    def artifact_store_trouble(local_path, *a, **k):  # not the tracking store: an ordinary error
        if str(local_path).endswith("last.pt"):
            raise OSError("the artifact store refused the upload")
        return real_log_artifact(local_path, *a, **k)

    monkeypatch.setattr(mlflow, "log_artifact", artifact_store_trouble)
    failed = cli(*args)
    assert failed.exit_code == 1
    run_id = all_runs()[0].info.run_id
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FAILED"
    assert not client.list_artifacts(run_id, "checkpoints")
    assert kept.pending(run_id)  # the only copy of epoch 1's checkpoint: not thrown away
    monkeypatch.setattr(mlflow, "log_artifact", real_log_artifact)

    resumed = cli(*args, "--resume-run-id", run_id)
    assert f"resuming run {run_id} after epoch 1 from the checkpoint kept at" in resumed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1, 2, 3]
    assert kept.newest(run_id) is None
