"""The MLproject entry points through `mlflow run`, and the stages against a real
`mlflow server` on 127.0.0.1 with proxied artifacts."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mlprunes.arch import ArchSpec
from tests.stage_helpers import TINY_TRAIN, cli

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def env_with_venv(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN")}
    # `mlflow run --env-manager local` runs the entry point with the first `python` and
    # `mlprunes` on PATH: make them this interpreter's.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update(extra)
    return env


def test_train_entry_point_through_mlflow_run(store):
    params = ["-P", "dataset=shapes", "-P", "depth=10", "-P", "width=1", "-P", "epochs=1",
              "-P", "batch-size=64", "-P", "image-size=8", "-P", "shapes-train=128",
              "-P", "shapes-test=64"]
    done = subprocess.run(
        [str(BIN / "mlflow"), "run", str(REPO), "-e", "train", "--env-manager", "local",
         "--experiment-name", "via-mlflow-run", *params],
        env=env_with_venv(MLFLOW_TRACKING_URI=store), capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name("via-mlflow-run")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlprunes.stage"] == "train"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert run.data.params["dataset"] == "shapes" and run.data.params["arch"] == "wrn"
    assert ArchSpec.from_json(run.data.params["arch_spec"]).name == "wrn-10-1"
    assert "test_error" in run.data.metrics
    # The stage attached to the run `mlflow run` made and printed its ID last.
    assert run.info.run_id in done.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(folder: Path, backend: str | None = None, cwd: Path | None = None):
    """`mlflow server` on a free loopback port, stopped (with its workers) on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = env_with_venv(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    backend = backend or f"sqlite:///{folder}/server.db"
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", backend,
         "--artifacts-destination", str(folder / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=str(cwd or folder))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: "
                                   f"{(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    with start_server(tmp_path / "server") as url:
        work = tmp_path / "client"
        work.mkdir()
        monkeypatch.chdir(work)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(url)
        yield url, tmp_path / "server" / "artifacts", work


def test_stages_against_a_real_tracking_server(server):
    url, artifacts, work = server
    base = cli(*TINY_TRAIN).run_id
    prune = cli("prune", "--base-run-id", base, "--prunes", "6", "--prune-every", "2",
                "--save-every", "3", "--val-every", "3", "--no-progress",
                "--no-log-model").run_id
    scratch = cli("scratch", "--prune-run-id", prune, "--prunes", "6", "--no-progress",
                  "--no-log-model").run_id
    client = MlflowClient(url)
    assert client.get_run(scratch).data.tags["mlprunes.prune_run_id"] == prune
    assert client.get_run(prune).info.artifact_uri.startswith("mlflow-artifacts:")
    saved = {f.path for f in client.list_artifacts(prune, "checkpoints")}
    assert saved == {"checkpoints/prunes_00003.pt", "checkpoints/prunes_00006.pt",
                     "checkpoints/final.pt"}
    # Artifacts went through the server into its destination, not into the client's folder.
    assert any(p.name == "prunes_00006.pt" for p in artifacts.rglob("*.pt"))
    assert not list(work.rglob("*.pt"))
    for run_id in (base, prune, scratch):
        assert client.get_run(run_id).info.status == "FINISHED"
