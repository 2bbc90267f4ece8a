"""Interrupted stages resume where they saved; the pipeline reuses what finished."""

import json
import math

from mlflow.tracking import MlflowClient

from mlprunes.engine import latency
from mlprunes.pruning import pruner as pruner_module
from tests.stage_helpers import TINY_TRAIN, all_runs, cli, read_artifact_text, read_csv
from tests.test_stages import prune_args


def crash_at(monkeypatch, prunes_done: int):
    """Make the next prune run die (as on Ctrl-C) when it has pruned `prunes_done` channels."""
    real = pruner_module.Pruner.prune

    def prune(self):
        if len(self.history) == prunes_done:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(pruner_module.Pruner, "prune", prune)


def test_a_killed_prune_resumes_from_its_checkpoint_with_the_same_history(store, monkeypatch,
                                                                          tmp_path):
    client = MlflowClient()
    base = cli(*TINY_TRAIN).run_id
    straight = cli(*prune_args(base, prunes=12)).run_id

    with monkeypatch.context() as m:
        crash_at(m, 7)
        crashed = cli(*prune_args(base, prunes=12))
    assert crashed.exit_code != 0
    killed = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "prune"
              and r.info.status != "FINISHED"]
    assert len(killed) == 1
    killed_id = killed[0].info.run_id
    saved = {f.path for f in client.list_artifacts(killed_id, "checkpoints")}
    assert saved == {"checkpoints/prunes_00004.pt"}  # it died after 7 prunes, saved at 4

    # It had validated at 6 prunes, after its checkpoint at 4: the resumed run recomputes that
    # point and must not log it again.
    assert [m.step for m in client.get_metric_history(killed_id, "val_error")] == [0, 2, 4, 6]
    resumed = cli(*prune_args(base, "--resume-run-id", killed_id, prunes=12)).run_id
    assert resumed == killed_id
    assert client.get_run(killed_id).info.status == "FINISHED"

    def history(run_id):
        return json.loads(read_artifact_text(run_id, "prune_history.json", tmp_path / run_id))

    assert len(history(straight)) == 12
    assert history(resumed) == history(straight)
    curve = read_csv(read_artifact_text(resumed, "pruning_curve.csv", tmp_path / "c1"))
    assert curve == read_csv(read_artifact_text(straight, "pruning_curve.csv", tmp_path / "c2"))
    assert (client.get_run(resumed).data.metrics["test_error"]
            == client.get_run(straight).data.metrics["test_error"])
    for key in ("val_error", "test_error", "params", "train_macs"):
        def history(run_id):
            return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        assert sorted(history(resumed)) == sorted(history(straight)), key


def test_resume_refuses_a_run_of_another_stage(store):
    base = cli(*TINY_TRAIN).run_id
    result = cli(*prune_args(base, "--resume-run-id", base))
    assert result.exit_code != 0
    assert "is a 'train' run, not a 'prune' run" in result.error_lines[0]


def stages_count():
    counts = {}
    for r in all_runs():
        stage = r.data.tags.get("mlprunes.stage")
        counts[stage] = counts.get(stage, 0) + 1
    return counts


def dry_run_table(result) -> dict[str, list[str]]:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    return {line.split()[0]: line.split()[1:] for line in lines[1:-1]}


def test_the_pipeline_run_twice_reuses_every_finished_run(store, tmp_path, monkeypatch):
    # An evaluation whose latency repeats spread (a busy machine) is measured anew by design
    # (tests/test_ray.py counts those); this test is about reuse, so every measurement counts.
    monkeypatch.setattr(latency, "MAX_SPREAD", math.inf)
    client = MlflowClient()
    planned = dry_run_table(cli("pipeline", "--preset", "tiny", "--dry-run"))
    assert all_runs() == []  # a dry run runs and logs nothing
    assert list(planned)[0] == "base" and list(planned)[-1] == "compare"
    assert all("to run" in " ".join(row) for row in planned.values())
    assert planned["base"][-1] == "-" and planned["prune-fisher"][-1] == "base"
    assert planned["scratch-fisher-p12"][1] == "(after"   # its key needs the prune run's ID

    first = cli("pipeline", "--preset", "tiny", "--no-progress").run_id
    after_first = stages_count()
    assert after_first["train"] == 2 and after_first["prune"] == 1
    assert after_first["family-member"] == 1 and after_first["evaluate"] == 2
    first_steps = read_csv(read_artifact_text(first, "pipeline_runs.csv", tmp_path / "a"))
    assert {s["how"] for s in first_steps} == {"new"}
    assert [s["step"] for s in first_steps] == list(planned)
    replanned = dry_run_table(cli("pipeline", "--preset", "tiny", "--dry-run"))
    for step in first_steps[:-1]:
        assert replanned[step["step"]][2:4] == ["finished", step["run_id"]]
    assert replanned["compare"][2:] == ["to", "run", "(always)", *replanned["compare"][5:]]

    second = cli("pipeline", "--preset", "tiny", "--no-progress").run_id
    after_second = stages_count()
    # Only the new pipeline run and its compare run are new.
    assert after_second == {**after_first, "pipeline": 2, "compare": 2}
    steps = read_csv(read_artifact_text(second, "pipeline_runs.csv", tmp_path / "b"))
    assert [s["how"] for s in steps[:-1]] == ["reused"] * (len(steps) - 1)
    assert [s["run_id"] for s in steps[:-1]] == [s["run_id"] for s in first_steps[:-1]]
    run = client.get_run(second)
    assert run.data.metrics["runs_reused"] == len(steps) - 1
    assert set(run.data.tags["mlprunes.reused_runs"].split(",")) == {
        s["run_id"] for s in steps[:-1]}
    # The second compare still sees the whole study, family members included.
    table = read_csv(read_artifact_text(run.data.tags["mlprunes.compare_run_id"], "runs.csv",
                                        tmp_path / "c"))
    assert sorted(r["stage"] for r in table) == sorted(
        ["train"] * 2 + ["prune", "scratch", "family-member"] + ["evaluate"] * 2)


def test_the_pipeline_resumes_an_interrupted_prune(store, monkeypatch, tmp_path):
    with monkeypatch.context() as m:
        crash_at(m, 8)
        assert cli("pipeline", "--preset", "tiny", "--no-progress").exit_code != 0
    second = cli("pipeline", "--preset", "tiny", "--no-progress").run_id
    steps = {s["step"]: s["how"] for s in
             read_csv(read_artifact_text(second, "pipeline_runs.csv", tmp_path))}
    assert steps["base"] == "reused" and steps["prune-fisher"] == "resumed"
    assert steps["scratch-fisher-p12"] == "new"
    prunes = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "prune"]
    assert len(prunes) == 1 and prunes[0].info.status == "FINISHED"
    history = json.loads(read_artifact_text(prunes[0].info.run_id, "prune_history.json",
                                            tmp_path / "h"))
    assert len(history) == 12


def test_the_pipeline_resumes_under_mlflow_run(store, monkeypatch, tmp_path):
    """`mlflow run -e main` sets MLFLOW_RUN_ID for the pipeline's own run; resuming a child
    inside it is still allowed."""
    client = MlflowClient()
    exp = client.create_experiment("study")

    def as_mlflow_run():
        run = client.create_run(exp)
        monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
        return run.info.run_id

    with monkeypatch.context() as m:
        crash_at(m, 8)
        as_mlflow_run()
        assert cli("pipeline", "--preset", "tiny", "--no-progress").exit_code != 0
    parent = as_mlflow_run()
    assert cli("pipeline", "--preset", "tiny", "--no-progress").run_id == parent
    steps = {s["step"]: s["how"] for s in
             read_csv(read_artifact_text(parent, "pipeline_runs.csv", tmp_path))}
    assert steps["prune-fisher"] == "resumed"


def test_a_prune_process_killed_with_sigkill_resumes_to_the_same_history(store, tmp_path,
                                                                         monkeypatch):
    """A real kill: the process dies without a word, its run stays RUNNING."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    client = MlflowClient()
    base = cli(*TINY_TRAIN).run_id
    args = prune_args(base, "--prune-every", "12", prunes=40)
    straight = cli(*args).run_id

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    mlprunes = str(Path(sys.executable).parent / "mlprunes")
    proc = subprocess.Popen([mlprunes, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_id = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        running = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "prune"
                   and r.info.status == "RUNNING"]
        if running:
            run_id = running[0].info.run_id
            saved = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
            if "checkpoints/prunes_00004.pt" in saved:
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the prune finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert client.get_run(run_id).info.status == "RUNNING"
    saved = {f.path for f in client.list_artifacts(run_id, "checkpoints")}
    assert "checkpoints/prunes_00040.pt" not in saved
    # Its heartbeat is fresh, but it was written on this machine by a process that is gone:
    # taken over at once, without waiting for three beats to pass.
    assert cli(*args, "--resume-run-id", run_id).run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "val_error")]
    assert len(steps) == len(set(steps)), "a resumed run logged a step twice"
    assert sorted(steps) == [m.step for m in client.get_metric_history(straight, "val_error")]
    history = [json.loads(read_artifact_text(r, "prune_history.json", tmp_path / r))
               for r in (straight, run_id)]
    assert len(history[0]) == 40 and history[0] == history[1]


def test_runs_keyed_by_an_older_mlprunes_are_named_and_not_reused(store):
    """Keys carry a version: a store made before it is re-run beside, never half-reused."""
    client = MlflowClient()
    exp = client.create_experiment("mlprunes")
    old = client.create_run(exp, tags={"mlprunes.stage": "train",
                                       "mlprunes.config_key": "0123456789abcdef0123"})
    client.set_terminated(old.info.run_id, "FINISHED")
    result = cli("pipeline", "--preset", "tiny", "--dry-run")
    assert "1 run(s) in this experiment were keyed by an older mlprunes" in result.stderr
    assert result.stdout.strip().splitlines()[-1].endswith("0 finished, 0 to resume, 8 to run")


def test_a_run_that_failed_before_its_first_checkpoint_is_resumed_from_the_start(store,
                                                                               monkeypatch):
    import mlflow

    from mlprunes.stages import kept

    args = [*TINY_TRAIN, "--epochs", "3"]
    real_log_metrics = mlflow.log_metrics

    def fails_at_the_first_epoch(metrics, *a, **k):
        if "train_loss" in metrics:
            raise RuntimeError("something went wrong before the first checkpoint")
        return real_log_metrics(metrics, *a, **k)

    monkeypatch.setattr(mlflow, "log_metrics", fails_at_the_first_epoch)
    failed = cli(*args)
    assert failed.exit_code != 0
    run_id = all_runs()[0].info.run_id
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FAILED"
    assert not client.list_artifacts(run_id, "checkpoints") and kept.newest(run_id) is None
    monkeypatch.setattr(mlflow, "log_metrics", real_log_metrics)

    resumed = cli(*args, "--resume-run-id", run_id)
    assert resumed.run_id == run_id
    assert f"run {run_id} saved no checkpoint; training it again from the start" in \
        resumed.stderr
    steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "params")] == [0, 3]
    fresh = client.get_run(cli(*args).run_id).data.metrics
    assert client.get_run(run_id).data.metrics["test_error"] == fresh["test_error"]
