"""Every bad value is one clear line before any run starts; a diverging run stops as FAILED;
deleted runs are never inputs."""

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.stage_helpers import TINY_TRAIN, all_runs, cli


@pytest.mark.parametrize("args, fragment", [
    ([*TINY_TRAIN, "--lr", "nan"], "lr must be a finite number"),
    ([*TINY_TRAIN, "--weight-decay", "inf"], "weight decay must be a finite number"),
    ([*TINY_TRAIN, "--gamma", "-1"], "gamma (the lr factor at each milestone) must be > 0"),
    ([*TINY_TRAIN, "--epochs", "0"], "--epochs must be at least 1"),
    ([*TINY_TRAIN, "--width", "nan"], "width: must be a positive finite number, got nan"),
    ([*TINY_TRAIN, "--width", "inf"], "width: must be a positive finite number, got inf"),
    ([*TINY_TRAIN, "--bottle", "inf"], "bottle: must be a positive finite number"),
    (["family", "--prune-run-id", "x", "--prunes", "1", "--budgets", "inf"],
     "every number must be finite"),
    (["family", "--prune-run-id", "x", "--prunes", "1", "--budgets", "0"],
     "--budgets must be positive parameter counts"),
    ([*TINY_TRAIN, "--device", "tpu9"], "'tpu9' is not a device"),
    ([*TINY_TRAIN, "--experiment", ""], "--experiment must name an experiment"),
    ([*TINY_TRAIN, "--milestones", "0.5,nan"], "every number must be finite"),
])
def test_a_bad_value_is_one_clear_line_and_no_run(store, args, fragment):
    result = cli(*args)
    assert result.exit_code != 0
    assert len(result.error_lines) == 1, result.stderr
    assert fragment in result.error_lines[0]
    assert "Traceback" not in result.stderr
    assert all_runs() == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_on_a_machine_without_one(store):
    result = cli(*TINY_TRAIN, "--device", "cuda")
    assert result.exit_code != 0
    assert "this machine has no CUDA GPU" in result.error_lines[0]
    assert all_runs() == []


def test_a_one_class_dataset_is_refused(store, tmp_path):
    folder = tmp_path / "one" / "cats"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(folder / f"{i}.png")
    result = cli("train", "--arch", "wrn", "--depth", "10", "--width", "1", "--epochs", "1",
                 "--dataset", "imagefolder", "--data-dir", str(tmp_path / "one"),
                 "--image-size", "8", "--batch-size", "4", "--no-progress", "--no-log-model")
    assert result.exit_code != 0
    assert "has 1 class; a classifier needs at least 2" in result.error_lines[0]
    assert all_runs() == []


def test_a_diverging_loss_stops_the_run_as_failed_with_one_line(store):
    result = cli(*TINY_TRAIN, "--lr", "1e30", "--epochs", "3")
    assert result.exit_code != 0
    assert len(result.error_lines) == 1, result.stderr
    assert "the training loss became" in result.error_lines[0]
    assert "lower --lr" in result.error_lines[0]
    [run] = all_runs()
    assert run.info.status == "FAILED"


def test_a_deleted_run_is_no_input(store):
    client = MlflowClient()
    base = cli(*TINY_TRAIN).run_id
    client.delete_run(base)
    result = cli("prune", "--base-run-id", base, "--prunes", "2", "--no-progress")
    assert result.exit_code != 0
    assert f"no run with ID '{base}'" in result.error_lines[0]
    assert "(it was deleted)" in result.error_lines[0]
    compare = cli("compare", "--run-ids", base)
    assert "(it was deleted)" in compare.error_lines[0]


def as_made_before_digests(run_id):
    from tests.test_trusted_artifacts import as_made_before_digests as strip

    strip(run_id)


def test_a_replaced_checkpoint_of_another_network_is_refused(store, tmp_path):
    from mlprunes import arch
    from mlprunes.engine.checkpoint import make_checkpoint, save_checkpoint
    from mlprunes.nets import build

    base = cli(*TINY_TRAIN).run_id
    other = save_checkpoint(make_checkpoint(build(arch.wrn(16, 1, num_classes=10))),
                            tmp_path / "final.pt")
    MlflowClient().log_artifact(base, str(other), "checkpoints")
    args = ["prune", "--base-run-id", base, "--prunes", "2", "--no-progress"]
    assert "checkpoints/final.pt is not what the run logged" in cli(*args).error_lines[0]
    as_made_before_digests(base)   # the run's own params still tell
    for args in (args, ["evaluate", "--run-id", base]):
        result = cli(*args)
        assert result.exit_code != 0
        assert (f"run {base}'s checkpoints/final.pt holds wrn-16-1" in result.error_lines[0]
                and "the run made wrn-10-1" in result.error_lines[0]), result.error_lines
    assert {r.data.tags["mlprunes.stage"] for r in all_runs()} == {"train"}


@pytest.mark.parametrize("history, problem", [
    ("not json", "prune_history.json or arch.json is not valid"),
    ('{"0": 1}', "prune_history.json: must be a list of channel indices, got dict"),
    ('["a"]', "prune_history.json: holds 'a', not a channel index")])
def test_a_prune_history_that_is_not_a_list_of_channels_is_refused(store, history, problem):
    from tests.test_stages import prune_args

    base = cli(*TINY_TRAIN).run_id
    prune = cli(*prune_args(base)).run_id
    MlflowClient().log_text(prune, history, "prune_history.json")
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "2", "--no-progress")
    assert "prune_history.json is not what the run logged" in result.error_lines[0]
    as_made_before_digests(prune)
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "2", "--no-progress")
    assert result.exit_code != 0
    assert f"prune run {prune}'s {problem}" in result.error_lines[0]
    assert "Traceback" not in result.stderr


def test_a_network_too_big_for_this_machine_is_refused_before_it_is_built(store):
    result = cli(*TINY_TRAIN, "--width", "2000")
    assert result.exit_code != 0
    assert "wrn-10-2000 has 295,943,296,474 parameters" in result.error_lines[0]
    assert "GiB, and this machine has" in result.error_lines[0]
    assert all_runs() == []


def test_a_read_only_folder_is_refused_before_an_experiment_points_at_it(tmp_path):
    """`train` from a folder it cannot write, on a fresh SQLite store: one line, and no
    experiment made whose artifacts would live there; from a writable folder it then works.
    (Root writes anywhere permissions allow nothing: there the folder is a read-only mount, or
    immutable.)"""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    store, readonly, writable = tmp_path / "store", tmp_path / "readonly", tmp_path / "writable"
    for folder in (store, readonly, writable):
        folder.mkdir()
    if os.getuid() != 0:
        os.chmod(readonly, 0o555)
        undo = ["chmod", "755", str(readonly)]
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(readonly)],
                        capture_output=True).returncode == 0:
        undo = ["umount", str(readonly)]
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(readonly)],
                                                   capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(readonly)]
    else:
        pytest.skip("no way here to make a folder read-only for root")
    try:
        uri = f"sqlite:///{store}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TMPDIR": str(writable)}
        mlprunes = str(Path(sys.executable).parent / "mlprunes")

        def train(cwd):
            return subprocess.run([mlprunes, *TINY_TRAIN], cwd=cwd, env=env,
                                  capture_output=True, text=True, timeout=300)

        refused = train(readonly)
        errors = [line for line in refused.stderr.splitlines() if line.startswith("Error")]
        assert refused.returncode == 1 and len(errors) == 1, refused.stderr[-2000:]
        assert errors[0] == (f"Error: cannot make the experiment 'mlprunes' here: its artifacts "
                             f"would go under {readonly}/mlruns, which this process cannot "
                             f"write; run from a folder it can write")
        assert "Traceback" not in refused.stderr
        client = MlflowClient(uri)
        assert [e.name for e in client.search_experiments()] == ["Default"]
        worked = train(writable)
        assert worked.returncode == 0, worked.stderr[-2000:]
        [experiment] = [e for e in client.search_experiments() if e.name == "mlprunes"]
        assert experiment.artifact_location.startswith(f"{writable}/mlruns")
        assert client.search_runs([experiment.experiment_id])[0].info.status == "FINISHED"
    finally:
        subprocess.run(undo, capture_output=True)
