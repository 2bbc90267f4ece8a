import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from mlprunes import arch
from mlprunes.data.loader import DeviceLoader
from mlprunes.engine.checkpoint import (CheckpointError, load_checkpoint, make_checkpoint,
                                        model_from_checkpoint, save_checkpoint)
from mlprunes.engine.evaluate import evaluate
from mlprunes.engine.latency import measure_latency
from mlprunes.engine.recipes import PRESETS, preset
from mlprunes.engine.trainer import Trainer, fit, seed_everything
from mlprunes.nets import build
from mlprunes.pruning import apply_history


def test_wrn_recipe_anneals_at_fractions_of_the_run():
    recipe = preset("wrn").override(epochs=15)
    assert recipe.milestone_epochs() == (4, 9, 12)
    lrs = [recipe.lr_at(e) for e in range(15)]
    assert lrs[0] == pytest.approx(0.1) and lrs[3] == pytest.approx(0.1)
    assert lrs[4] == pytest.approx(0.02) and lrs[9] == pytest.approx(0.004)
    assert lrs[14] == pytest.approx(0.0008)
    assert PRESETS["wrn"].milestone_epochs() == (60, 120, 160)
    assert PRESETS["densenet"].milestone_epochs() == (150, 225)


def test_cosine_schedule_and_overrides():
    recipe = preset("wrn").override(epochs=10, schedule="cosine", lr=0.2, batch_size=None)
    assert recipe.batch_size == 128  # None keeps the preset
    assert recipe.lr_at(0, 0, 10) == pytest.approx(0.2)
    assert recipe.lr_at(5, 0, 10) == pytest.approx(0.1)
    assert recipe.lr_at(9, 9, 10) < 0.001
    with pytest.raises(ValueError, match="unknown recipe field"):
        recipe.override(colour="red")
    with pytest.raises(ValueError, match="schedule"):
        recipe.override(schedule="exp")
    with pytest.raises(ValueError, match="unknown recipe preset"):
        preset("resnet")


def toy_data(n=96, size=12, classes=5, seed=0):
    """Class-coloured noise: learnable, and cheap."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 120, (n, 3, size, size), generator=g)
    images[:, 0] += (labels * 25)[:, None, None]
    return images.clamp(0, 255).to(torch.uint8), labels


def make_trainer(spec, epochs=3, seed=0, masked=False):
    seed_everything(seed)
    model = build(spec, masked=masked)
    images, labels = toy_data()
    loader = DeviceLoader(images, labels, 16, (0.3,) * 3, (0.2,) * 3, train=True, seed=seed)
    recipe = preset("wrn").override(epochs=epochs, batch_size=16, lr=0.05)
    return Trainer(model, recipe, loader, progress=False)


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    spec = arch.wrn(10, 1, num_classes=5)
    straight = make_trainer(spec)
    fit(straight)

    first = make_trainer(spec)
    first.train_epoch()
    first.train_steps(2)  # interrupted mid-epoch
    path = save_checkpoint(make_checkpoint(first.model, trainer_state=first.state_dict()),
                           tmp_path / "ckpt.pt")
    del first

    checkpoint = load_checkpoint(path)
    resumed = make_trainer(spec, seed=123)  # different init: everything must come from the file
    resumed.load_state_dict({"model": checkpoint["model"], **checkpoint["trainer"]})
    assert resumed.position.epoch == 1 and resumed.position.batch == 2
    fit(resumed)
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_round_trip_keeps_architecture_masks_and_history(tmp_path):
    spec = arch.densenet(16, 4, num_classes=5).with_mids([16, 8, 16, 0, 16, 16])
    model = build(spec, masked=True)
    apply_history(model, [0, 1, 2])
    path = save_checkpoint(make_checkpoint(model, prune_history=[0, 1, 2], meta={"k": 1}),
                           tmp_path / "sub" / "m.pt")
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]  # no temp file left behind
    checkpoint = load_checkpoint(path)
    assert checkpoint["spec"] == spec and checkpoint["prune_history"] == [0, 1, 2]
    restored = model_from_checkpoint(checkpoint)
    for (k, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), k


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_refuses_pickled_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "mlprunes-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable mlprunes checkpoint") as info:
        load_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out
    assert "weights_only" not in str(info.value)  # torch's advice to unpickle is not passed on
    assert "never loaded" in str(info.value)


@pytest.mark.parametrize("content, fragment", [
    (b"\x00garbage" * 10, "not a readable mlprunes checkpoint"),
    (None, "not an mlprunes checkpoint"),
])
def test_corrupt_or_foreign_files_are_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=fragment) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[: len(x)] + 0 * self.dummy


def test_evaluate_top1_top5_and_loss():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 0],     # label 0: top-1 right
                           [0.0, 1, 2, 3, 4, 5, 9],     # label 2: top-5 right (rank 5)
                           [0.0, 9, 8, 7, 6, 5, 4]])    # label 6: top-5 wrong (rank 7)
    labels = torch.tensor([0, 2, 6])
    loader = DeviceLoader(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), labels, 8, (0,) * 3,
                          (1,) * 3, train=False)
    result = evaluate(FixedLogits(logits), loader)
    assert result["error"] == pytest.approx(200 / 3)
    assert result["top5_error"] == pytest.approx(100 / 3)
    expected = nn.functional.cross_entropy(logits, labels).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6)


def test_latency_is_a_positive_median():
    model = build(arch.wrn(10, 1))
    assert 0 < measure_latency(model, batch_size=2, image_size=8, repeats=3, warmup=1) < 5
    assert model.training  # restored


def test_compiled_training_matches_eager_and_checkpoints_plain_keys():
    """--compile: the same losses as eager mode, and state dicts without compiler prefixes."""
    spec = arch.wrn(10, 1, num_classes=5)
    losses = {}
    for compiled in (False, True):
        seed_everything(0)
        images, labels = toy_data(n=48)
        loader = DeviceLoader(images, labels, 16, (0.3,) * 3, (0.2,) * 3, train=True)
        trainer = Trainer(build(spec), preset("wrn").override(epochs=1, batch_size=16), loader,
                          compile=compiled, progress=False)
        losses[compiled] = trainer.train_epoch()["train_loss"]
        assert all(not k.startswith("_orig_mod") for k in trainer.state_dict()["model"])
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_latencies_are_timed_in_turn_and_their_spread_says_when_repeats_disagree():
    from mlprunes.engine.latency import Latency, time_calls

    calls = []
    steady_s, parity = 0.01, [0]

    def steady():
        calls.append("steady")
        time.sleep(steady_s)

    def unsteady():  # every other call twenty times slower: a machine busy half the time
        calls.append("unsteady")
        parity[0] ^= 1
        time.sleep(steady_s * (20 if parity[0] else 1))

    timed = time_calls({"steady": steady, "unsteady": unsteady}, torch.device("cpu"),
                       repeats=8, warmup=1)
    assert calls == ["steady", "unsteady"] * 9  # one warm-up round, then A B A B ...
    assert len(timed["steady"].times) == 8
    assert steady_s <= timed["steady"].median < 5 * steady_s
    assert timed["steady"].steady and timed["steady"].spread < 0.5
    assert not timed["unsteady"].steady and timed["unsteady"].spread > 1
    # Two repeats are too few to judge: never refused on their spread.
    assert Latency((0.001, 0.050)).steady


def test_evaluate_logs_no_latency_whose_repeats_disagree(store, monkeypatch):
    from mlprunes.engine.latency import Latency
    from mlprunes.stages import evaluate as evaluate_stage
    from tests.stage_helpers import TINY_TRAIN, cli

    base = cli(*TINY_TRAIN).run_id

    def busy_machine(models, batch_size, *args, **kwargs):
        times = (0.001, 0.001, 0.050, 0.050) * 2 if batch_size == 8 else (0.001,) * 8
        return {name: Latency(times) for name in models}

    monkeypatch.setattr(evaluate_stage, "measure_latencies", busy_machine)
    result = cli("evaluate", "--run-id", base, "--repeats", "8", "--batch-size", "8")
    run = MlflowClient().get_run(result.run_id)
    metrics = run.data.metrics
    assert metrics["latency_compressed_b1_ms"] == pytest.approx(1.0)
    assert metrics["latency_compressed_b1_spread"] == 0
    assert not any(k.endswith("_b8_ms") or k == "speedup_b8" for k in metrics)
    refused = run.data.tags["mlprunes.latency_refused"]
    assert refused.startswith("latency not logged at batch 8 (spread 192%)")
    assert "latency not logged at batch 8" in result.stderr
    assert "mlprunes.config_key" not in run.data.tags  # measured anew by the next pipeline


def test_a_checkpoint_is_refused_before_writing_when_the_disk_has_no_room(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from mlprunes.engine import checkpoint as checkpoint_module

    model = build(arch.wrn(10, 1))
    checkpoint = make_checkpoint(model)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage",
                        lambda path: usage(10 * 2 ** 20, 9 * 2 ** 20, 2 ** 20))
    with pytest.raises(CheckpointError, match=f"not enough free disk in {tmp_path} for a "
                       r"checkpoint: it needs about 16 MB and 1 MB are free"):
        save_checkpoint(checkpoint, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", real)
    assert load_checkpoint(save_checkpoint(checkpoint, tmp_path / "last.pt"))["spec"] == model.spec


def test_a_disk_that_fills_during_the_write_is_the_same_error(tmp_path, monkeypatch):
    import os

    from mlprunes.engine import checkpoint as checkpoint_module

    real_fdopen = os.fdopen

    def full_disk(fd, mode):  # every write fails as on a full disk: /dev/full
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode)

    monkeypatch.setattr(checkpoint_module.os, "fdopen", full_disk)
    with pytest.raises(CheckpointError, match="not enough free disk in"):
        save_checkpoint(make_checkpoint(build(arch.wrn(10, 1))), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_stops_training_with_one_line_and_the_run_failed(store, monkeypatch):
    from collections import namedtuple

    from mlprunes.engine import checkpoint as checkpoint_module
    from tests.stage_helpers import TINY_TRAIN, all_runs, cli

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: usage(1, 1, 0))
    result = cli(*TINY_TRAIN, "--epochs", "2")
    assert result.exit_code == 1
    assert len(result.error_lines) == 1 and "not enough free disk" in result.error_lines[0]
    assert [r.info.status for r in all_runs()] == ["FAILED"]
