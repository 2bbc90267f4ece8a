"""Real processes sent SIGTERM (what Slurm, Kubernetes and `docker stop` send to preempt a job):
the run ends KILLED, temporary folders are gone, the exit status is 128 + 15, and a resume ends
as the uninterrupted run does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.stage_helpers import TINY_TRAIN, all_runs, cli, read_artifact_text
from tests.test_stages import prune_args

LONG_TRAIN = [*TINY_TRAIN, "--epochs", "40", "--shapes-train", "512"]


def start(args, tmp_path) -> tuple[subprocess.Popen, Path]:
    """`mlprunes ARGS` in its own process, with its own temporary folder."""
    tmpdir = tmp_path / "proc-tmp"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmpdir)}
    mlprunes = str(Path(sys.executable).parent / "mlprunes")
    return subprocess.Popen([mlprunes, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True), tmpdir


def wait_for_running(proc, stage: str, artifact: str, exclude=(), timeout=120) -> str:
    """The ID of the process's RUNNING `stage` run, once it has logged `artifact`."""
    client = MlflowClient()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for run in all_runs():
            if (run.data.tags.get("mlprunes.stage") == stage and run.info.status == "RUNNING"
                    and run.info.run_id not in exclude):
                folder = str(Path(artifact).parent)
                if artifact in {f.path for f in client.list_artifacts(run.info.run_id, folder)}:
                    return run.info.run_id
        time.sleep(0.1)
    raise AssertionError(f"no running {stage} run logged {artifact}; the process said: "
                         f"{proc.communicate()[0] if proc.poll() is not None else '(running)'}")


def terminate(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    return out


def leftovers(tmpdir: Path) -> list[str]:
    return [p.name for p in tmpdir.iterdir() if p.name.startswith("mlprunes-")]


def stopped_then_resumed(args, stage: str, tmp_path) -> str:
    """`mlprunes ARGS` run straight, then again in a process sent SIGTERM once it saved a
    checkpoint and resumed: the killed run ends KILLED with no temporary folder left, and its
    resume ends FINISHED with the straight run's test figures. Returns the resumed run's ID."""
    client = MlflowClient()
    straight = cli(*args).run_id
    proc, tmpdir = start(args, tmp_path)
    run_id = wait_for_running(proc, stage, "checkpoints/last.pt", exclude={straight})
    terminate(proc)
    assert client.get_run(run_id).info.status == "KILLED"
    assert leftovers(tmpdir) == []

    assert cli(*args, "--resume-run-id", run_id).run_id == run_id
    resumed, reference = client.get_run(run_id), client.get_run(straight)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["test_error"] == reference.data.metrics["test_error"]
    assert resumed.data.metrics["test_loss"] == reference.data.metrics["test_loss"]
    return run_id


def test_sigterm_mid_train_kills_the_run_and_a_resume_finishes_it_identically(store, tmp_path):
    stopped_then_resumed(LONG_TRAIN, "train", tmp_path)


def test_sigterm_mid_prune_kills_the_run_and_a_resume_gives_the_same_history(store, tmp_path):
    client = MlflowClient()
    base = cli(*TINY_TRAIN).run_id
    args = prune_args(base, "--prune-every", "12", prunes=40)
    straight = cli(*args).run_id
    proc, tmpdir = start(args, tmp_path)
    run_id = wait_for_running(proc, "prune", "checkpoints/prunes_00004.pt", exclude={straight})
    terminate(proc)
    assert client.get_run(run_id).info.status == "KILLED"
    assert leftovers(tmpdir) == []

    assert cli(*args, "--resume-run-id", run_id).run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    histories = [json.loads(read_artifact_text(r, "prune_history.json", tmp_path / r))
                 for r in (straight, run_id)]
    assert len(histories[0]) == 40 and histories[0] == histories[1]


def test_sigterm_to_a_pipeline_kills_its_run_and_the_step_it_was_running(store, tmp_path):
    client = MlflowClient()
    # The tiny study's prune lasts well under a second on a fast machine, shorter than the
    # window the test polls in; more fine-tuning steps per prune keep it running for seconds.
    args = ["pipeline", "--preset", "tiny", "--set", "prune.prune_every=40", "--no-progress"]
    proc, tmpdir = start(args, tmp_path)
    wait_for_running(proc, "prune", "arch.json")
    terminate(proc)
    statuses = {r.info.run_id: (r.data.tags.get("mlprunes.stage"), r.info.status)
                for r in all_runs()}
    assert [st for stage, st in statuses.values() if stage == "pipeline"] == ["KILLED"]
    children = [st for stage, st in statuses.values() if stage != "pipeline"]
    # The step it was running (the prune, unless it had just finished) is KILLED; none is left
    # RUNNING for ever.
    assert "RUNNING" not in children and children.count("KILLED") <= 1
    assert leftovers(tmpdir) == []
    again = cli(*args).run_id
    assert client.get_run(again).info.status == "FINISHED"
