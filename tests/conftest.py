import random

import mlflow
import pytest
import torch

from mlprunes import arch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    random.seed(0)


# Tiny members of each family: fast enough to build and run many times in a test.
TINY_SPECS = {
    "wrn": arch.wrn(depth=10, width=1, num_classes=5),
    "wrn-deeper": arch.wrn(depth=16, width=1.5, num_classes=7),
    "densenet": arch.densenet(depth=16, growth=4, num_classes=5),
}


@pytest.fixture(params=sorted(TINY_SPECS))
def tiny_spec(request):
    return TINY_SPECS[request.param]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store, with artifacts under the test's own folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    uri = f"sqlite:///{work}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    while mlflow.active_run():
        mlflow.end_run()
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    assert_logged_once(work / "mlflow.db")


def assert_logged_once(db) -> None:
    """Every metric of every run has one value per step: a curve whose x axis is another
    metric pairs values by position, so a repeated step shifts every point after it. Checked
    on the store of every test that has one (what a test leaves there is what a user gets)."""
    import sqlite3
    from pathlib import Path

    if not Path(db).exists():
        return
    with sqlite3.connect(db) as connection:
        try:
            repeated = connection.execute(
                "SELECT r.name, m.key, m.step, COUNT(*) FROM metrics m JOIN runs r ON "
                "r.run_uuid = m.run_uuid GROUP BY m.run_uuid, m.key, m.step "
                "HAVING COUNT(*) > 1 LIMIT 10").fetchall()
        except sqlite3.OperationalError:   # a store the test never made tables in
            return
    assert not repeated, f"metrics logged more than once at one step: {repeated}"


@pytest.fixture(autouse=True, scope="session")
def _kept_checkpoints(tmp_path_factory):
    """Checkpoints a stage keeps on this machine go under the session's temporary folder (not
    the user's cache); subprocesses inherit the variable."""
    import os

    os.environ["MLPRUNES_CHECKPOINT_DIR"] = str(tmp_path_factory.mktemp("kept"))
    yield
