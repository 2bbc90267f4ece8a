"""The prune-while-fine-tuning loop, run on its own: no tracking store anywhere."""

import copy

import pytest
import torch

from mlprunes import arch
from mlprunes.counting import count
from mlprunes.data.loader import DeviceLoader
from mlprunes.engine.recipes import preset
from mlprunes.engine.trainer import Trainer, seed_everything
from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import Pruner, make_saliency, masks_from_history, spec_after
from mlprunes.pruning.loop import PruneSchedule, prune_while_finetuning, restore
from tests.test_engine import toy_data

SPEC = arch.wrn(10, 1, num_classes=5)


def setup(criterion="fisher", init_seed=0, spec=SPEC):
    seed_everything(init_seed)
    model = build(spec, masked=True)
    images, labels = toy_data()
    train = DeviceLoader(images, labels, 16, (0.3,) * 3, (0.2,) * 3, train=True, seed=0)
    evaluation = DeviceLoader(images, labels, 32, (0.3,) * 3, (0.2,) * 3, train=False)
    recipe = preset("wrn", pruning=True).override(batch_size=16)
    trainer = Trainer(model, recipe, train, progress=False)
    pruner = Pruner(trainer.model, make_saliency(criterion, seed=0))
    return trainer, pruner, evaluation


@pytest.mark.parametrize("criterion", ["fisher", "l1", "random"])
def test_the_loop_prunes_validates_and_saves_on_its_schedule(criterion):
    trainer, pruner, evaluation = setup(criterion)
    schedule = PruneSchedule(prunes=7, prune_every=3, val_every=3, save_every=4)
    points, saves = [], []
    curve = prune_while_finetuning(trainer, pruner, schedule, evaluation, (12, 12),
                                   on_point=[points.append],
                                   on_save=[lambda p, c: saves.append((p, c))],
                                   test_loader=evaluation)

    assert curve == points
    assert [p["prunes"] for p in points] == [0, 3, 4, 6, 7]   # every save is validated too
    assert [p for p, _ in saves] == [4, 7]
    # Test error at each save but the last (the caller measures the final network's).
    assert [p["prunes"] for p in points if "test_error" in p] == [4]
    assert points[2]["test_error"] == points[2]["val_error"]  # here both read one loader
    assert len(pruner.history) == 7 and len(set(pruner.history)) == 7
    assert trainer.position.step == 8 * 3          # fine-tuned before each of p = 0..7
    for point in points:
        spec = spec_after(SPEC, pruner.history[:point["prunes"]])
        assert point["params"] == count(spec, 12).params
        assert point["channels_left"] == SPEC.prunable_channels - point["prunes"]
        assert 0 <= point["val_error"] <= 100
    masks = masks_from_history(SPEC, pruner.history)
    assert all(torch.equal(b.mask, m) for b, m in zip(prunable_blocks(trainer.model), masks))
    # The checkpoint at 4 prunes holds the history up to there, not what came after.
    assert saves[0][1]["prune_history"] == pruner.history[:4]


@pytest.mark.parametrize("shrink_every", [0, 3], ids=["masked", "shrinking"])
@pytest.mark.parametrize("criterion", ["fisher", "hessian"])   # both carry per-step sums
@pytest.mark.parametrize("spec", [SPEC, "resnet"], ids=["wrn", "traced-resnet-8"])
def test_a_restored_loop_ends_as_the_uninterrupted_one(spec, criterion, shrink_every):
    """Shrinking every 3 prunes, the checkpoint at 4 prunes is of a network cut after 3 and
    masked since: the resumed loop cuts it again there and ends bit for bit as the straight
    one."""
    if spec == "resnet":   # a traced network: its groups' masks live in its BN layers
        spec = arch.make_spec("resnet", depth=8, num_classes=5)
    schedule = PruneSchedule(prunes=9, prune_every=3, val_every=2, save_every=4,
                             shrink_every=shrink_every)
    trainer, pruner, evaluation = setup(criterion, spec=spec)
    straight = prune_while_finetuning(trainer, pruner, schedule, evaluation, (12, 12))

    saved = {}
    first, first_pruner, _ = setup(criterion, spec=spec)
    with pytest.raises(KeyboardInterrupt):
        def die(point):
            if point["prunes"] == 6:
                raise KeyboardInterrupt
        prune_while_finetuning(first, first_pruner, schedule, evaluation, (12, 12),
                               on_point=[die],
                               on_save=[lambda p, c: saved.update({p: copy.deepcopy(c)})])
    assert list(saved) == [4]

    again, again_pruner, _ = setup(criterion, init_seed=123, spec=spec)  # all from the checkpoint
    assert saved[4]["meta"]["shrunk"] == (3 if shrink_every else 0)
    start, curve, spent = restore(saved[4], again, again_pruner, (12, 12))
    assert start == 4 and [p["prunes"] for p in curve] == [0, 2, 4]
    resumed = prune_while_finetuning(again, again_pruner, schedule, evaluation, (12, 12),
                                     start=start, curve=curve, spent=spent)
    assert again_pruner.history == pruner.history
    assert resumed == straight
    for (name, a), b in zip(trainer.model.state_dict().items(),
                            again.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("fields, message", [
    (dict(prunes=-1, prune_every=1), "prunes must be >= 0"),
    (dict(prunes=3, prune_every=0), "prune-every must be at least 1"),
    (dict(prunes=3, prune_every=1, val_every=0), "val-every must be at least 1"),
    (dict(prunes=3, prune_every=1, save_every=0), "save-every must be at least 1"),
])
def test_a_bad_schedule_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        PruneSchedule(**fields)
