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


def test_a_replaced_checkpoint_of_another_network_is_refused(store, tmp_path):
    from mlprunes import arch
    from mlprunes.engine.checkpoint import make_checkpoint, save_checkpoint
    from mlprunes.nets import build

    base = cli(*TINY_TRAIN).run_id
    other = save_checkpoint(make_checkpoint(build(arch.wrn(16, 1, num_classes=10))),
                            tmp_path / "final.pt")
    MlflowClient().log_artifact(base, str(other), "checkpoints")
    for args in (["prune", "--base-run-id", base, "--prunes", "2", "--no-progress"],
                 ["evaluate", "--run-id", base]):
        result = cli(*args)
        assert result.exit_code != 0
        assert (f"run {base}'s checkpoints/final.pt holds wrn-16-1" in result.error_lines[0]
                and "the run made wrn-10-1" in result.error_lines[0]), result.error_lines
    assert {r.data.tags["mlprunes.stage"] for r in all_runs()} == {"train"}


@pytest.mark.parametrize("history", ["not json", '{"0": 1}', '["a"]'])
def test_a_prune_history_that_is_not_a_list_of_channels_is_refused(store, history):
    from tests.test_stages import prune_args

    base = cli(*TINY_TRAIN).run_id
    prune = cli(*prune_args(base)).run_id
    MlflowClient().log_text(prune, history, "prune_history.json")
    result = cli("scratch", "--prune-run-id", prune, "--prunes", "2", "--no-progress")
    assert result.exit_code != 0
    assert f"prune run {prune}'s prune_history.json or arch.json is not valid" in \
        result.error_lines[0]
    assert "Traceback" not in result.stderr


def test_a_network_too_big_for_this_machine_is_refused_before_it_is_built(store):
    result = cli(*TINY_TRAIN, "--width", "2000")
    assert result.exit_code != 0
    assert "wrn-10-2000 has 295,943,296,474 parameters" in result.error_lines[0]
    assert "GiB, and this machine has" in result.error_lines[0]
    assert all_runs() == []
