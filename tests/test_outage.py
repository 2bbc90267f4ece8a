"""A real tracking server stopped for 30 s and restarted in the middle of a training run."""

import os
import signal
import subprocess
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.stage_helpers import TINY_TRAIN
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
        run_id, deadline = None, time.time() + 120
        while time.time() < deadline and train.poll() is None:
            runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and len(client.get_metric_history(runs[0].info.run_id, "train_loss")) >= 2:
                run_id = runs[0].info.run_id
                break
            time.sleep(0.2)
        assert run_id is not None and train.poll() is None, "training ended before the outage"
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
