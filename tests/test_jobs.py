"""Jobs and their keys: what changes a result changes the key; nothing else does."""

import json
from dataclasses import replace

import pytest

from mlprunes import arch
from mlprunes.engine.recipes import Recipe, preset
from mlprunes.errors import StageError
from mlprunes.jobs import (CompareJob, DataChoice, DataConfig, EvaluateJob, FamilyJob, PruneJob,
                           RecipeChoice, Ref, RunConfig, ScratchJob, TrainJob)

TRAIN = TrainJob(spec=arch.wrn(16, 1, num_classes=10), recipe=preset("wrn").override(epochs=3),
                 data=DataConfig(dataset="shapes", image_size=16), preset="wrn")
PRUNE = PruneJob(base_run_id="abc", criterion="fisher", prunes=20, prune_every=4)


def test_equal_jobs_have_equal_keys_and_a_key_is_a_short_digest():
    again = TrainJob(spec=arch.wrn(16, 1, num_classes=10),
                     recipe=preset("wrn").override(epochs=3),
                     data=DataConfig(dataset="shapes", image_size=16), preset="wrn")
    assert again.key == TRAIN.key
    assert len(TRAIN.key) == 20 and int(TRAIN.key, 16) >= 0


@pytest.mark.parametrize("job, change", [
    (TRAIN, dict(run_name="other")),
    (TRAIN, dict(checkpoint_every=5, log_model=False)),
    (TRAIN, dict(data=DataConfig(dataset="shapes", image_size=16, data_dir="/else",
                                 download=True))),
    (TRAIN, dict(run=RunConfig(device="cpu", channels_last=True, compile=True, progress=False,
                               experiment="elsewhere"))),
    (PRUNE, dict(data=DataChoice(data_dir="/else"), log_model=False, run_name="x")),
])
def test_where_and_how_a_job_runs_leave_its_key_alone(job, change):
    assert replace(job, **change).key == job.key


@pytest.mark.parametrize("job, change", [
    (TRAIN, dict(spec=arch.wrn(16, 1.5, num_classes=10))),
    (TRAIN, dict(recipe=preset("wrn").override(epochs=3, lr=0.05))),
    (TRAIN, dict(data=DataConfig(dataset="shapes", image_size=16, val_split=0.1))),
    (TRAIN, dict(run=RunConfig(seed=1))),
    (TRAIN, dict(run=RunConfig(precision="bf16"))),
    (PRUNE, dict(criterion="l1")),
    (PRUNE, dict(prune_every=5)),
    (PRUNE, dict(base_run_id="abd")),
    (PRUNE, dict(recipe=RecipeChoice(lr=1e-3))),
    (PRUNE, dict(data=DataChoice(val_split=0.2))),
])
def test_what_changes_a_result_changes_the_key(job, change):
    assert replace(job, **change).key != job.key


def test_stages_with_the_same_settings_have_different_keys():
    assert (ScratchJob(prune_run_id="p", prunes=3).key
            != FamilyJob(prune_run_id="p", prunes=3, budgets=(100,)).member(100).key)


def test_refs_are_inputs_resolved_to_run_ids():
    job = ScratchJob(prune_run_id=Ref("prune-fisher"), prunes=10)
    assert job.refs() == [Ref("prune-fisher")]
    with pytest.raises(ValueError, match="unresolved input"):
        job.key
    resolved = job.resolved({"prune-fisher": "run123"})
    assert resolved.prune_run_id == "run123" and resolved.refs() == []
    assert resolved.key == ScratchJob(prune_run_id="run123", prunes=10).key
    compare = CompareJob(run_ids=(Ref("a"), "b", Ref("c")))
    assert compare.refs() == [Ref("a"), Ref("c")]
    assert compare.resolved({"a": "1", "c": "3"}).run_ids == ("1", "b", "3")


def test_evaluate_keys_name_the_device_that_measured():
    job = EvaluateJob(run_id="r")
    assert replace(job, repeats=50).key == job.key
    assert replace(job, batch_size=32).key != job.key


@pytest.mark.parametrize("make, message", [
    (lambda: replace(TRAIN, checkpoint_every=0), "--checkpoint-every must be at least 1"),
    (lambda: replace(PRUNE, prunes=-1), "--prunes must be >= 0"),
    (lambda: replace(PRUNE, save_every=0), "--save-every must be at least 1"),
    (lambda: replace(PRUNE, criterion="obd-c"), "--criterion must be one of"),
    (lambda: ScratchJob(prune_run_id="p"), "exactly one of --prunes, --params-budget and"),
    (lambda: ScratchJob(prune_run_id="p", macs_reduction=1.0), "more than 1, got 1.0"),
    (lambda: ScratchJob(prune_run_id="p", prunes=1, budget="scratch-c"), "--budget must be"),
    (lambda: FamilyJob(prune_run_id="p", prunes=1), "at least one parameter budget"),
    (lambda: EvaluateJob(run_id="r", repeats=0), "--repeats must be at least 1"),
])
def test_bad_values_are_one_clear_error(make, message):
    with pytest.raises(StageError, match=message):
        make()


def test_a_recipe_choice_resolves_against_its_preset():
    assert RecipeChoice().resolve("wrn", pruning=True) == preset("wrn", pruning=True)
    assert RecipeChoice(preset="densenet", lr=0.5).resolve("wrn").lr == 0.5
    assert RecipeChoice(preset="densenet").resolve("wrn").batch_size == 64
    with pytest.raises(StageError, match="lr and weight decay must be >= 0"):
        RecipeChoice(lr=-1.0).resolve("wrn")
    # The paper's scripts pad crops with reflection when training, with zeros when pruning.
    for family in ("wrn", "densenet"):
        assert preset(family).pad == "reflect" and preset(family, pruning=True).pad == "zero"
    assert RecipeChoice(pad="reflect").resolve("wrn", pruning=True).pad == "reflect"
    assert Recipe.from_params({k: str(v).lower() if isinstance(v, bool) else
                               (json.dumps(v) if isinstance(v, list) else str(v))
                               for k, v in preset("wrn").to_dict().items()}) == preset("wrn")
    with pytest.raises(StageError, match="pad must be zero or reflect"):
        RecipeChoice(pad="edge").resolve("wrn")


def test_data_settings_round_trip_through_logged_params():
    data = DataConfig(dataset="shapes", data_dir="/d", download=True, val_split=0.1,
                      image_size=16, shapes_train=300, shapes_test=50, data_seed=3)
    params = {k: ("true" if v is True else str(v)) for k, v in vars(data).items()}
    assert DataConfig.from_params(params) == data
    assert DataChoice(val_split=0.2, data_dir="/e").over(data) == replace(data, val_split=0.2,
                                                                         data_dir="/e")
    with pytest.raises(StageError, match="image_size='big'"):
        DataConfig.from_params({**params, "image_size": "big"})


def test_replicates_share_a_key_without_the_seed_through_their_inputs():
    seeded = replace(TRAIN, run=RunConfig(seed=1))
    assert seeded.key != TRAIN.key
    assert seeded.replicate_key({}) == TRAIN.replicate_key({})
    assert replace(TRAIN, recipe=preset("wrn").override(epochs=4)).replicate_key({}) != \
        TRAIN.replicate_key({})
    # Prune runs of different seeds' bases: replicates when their bases are.
    other = replace(PRUNE, base_run_id="def", run=RunConfig(seed=1))
    assert other.replicate_key({"base_run_id": "R"}) == PRUNE.replicate_key({"base_run_id": "R"})
    assert other.replicate_key({"base_run_id": "S"}) != PRUNE.replicate_key({"base_run_id": "R"})
    assert replace(PRUNE, criterion="l1").replicate_key({"base_run_id": "R"}) != \
        PRUNE.replicate_key({"base_run_id": "R"})


def test_scratch_b_takes_the_integer_part_of_the_epochs_and_an_optional_cap():
    from mlprunes.counting import count
    from mlprunes.stages.trained import epoch_factor, scratch_epochs

    base, small = arch.wrn(16, 2), arch.wrn(16, 1)
    ratio = count(base, (32, 32)).flops / count(small, (32, 32)).flops   # about 3.9
    assert epoch_factor(base, small, "scratch-e", (32, 32)) == 1.0
    assert epoch_factor(base, small, "scratch-b", (32, 32)) == ratio
    assert epoch_factor(base, small, "scratch-b", (32, 32), max_epoch_factor=2) == 2
    assert epoch_factor(base, small, "scratch-b", (32, 32), max_epoch_factor=10) == ratio
    assert scratch_epochs(10, 2.75) == 27          # the integer part, not rounded (28)
    assert scratch_epochs(200, ratio) == int(200 * ratio)
    assert scratch_epochs(3, 0.1) == 1             # at least one epoch
    capped = ScratchJob(prune_run_id="p", prunes=5, budget="scratch-b", max_epoch_factor=2)
    assert capped.key != replace(capped, max_epoch_factor=None).key
    with pytest.raises(StageError, match="applies to --budget scratch-b"):
        ScratchJob(prune_run_id="p", prunes=5, max_epoch_factor=2)
    with pytest.raises(StageError, match="at least 1"):
        FamilyJob(prune_run_id="p", prunes=5, budgets=(10,), budget="scratch-b",
                  max_epoch_factor=0.5)
    member = FamilyJob(prune_run_id="p", prunes=5, budgets=(10,), budget="scratch-b",
                       max_epoch_factor=3).member(10)
    assert member.max_epoch_factor == 3


def test_init_is_part_of_the_key_and_checked():
    sliced = ScratchJob(prune_run_id="p", prunes=5, init="sliced")
    assert sliced.key != replace(sliced, init="fresh").key
    assert FamilyJob(prune_run_id="p", prunes=5, budgets=(10,), init="sliced").member(10).init \
        == "sliced"
    with pytest.raises(StageError, match="--init must be one of fresh, sliced"):
        ScratchJob(prune_run_id="p", prunes=5, init="warm")
