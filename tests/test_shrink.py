"""Pruning on a network that shrinks: every K prunes the network being fine-tuned is cut to its
surviving channels. It must choose the channels the masked run chooses, draw the same curve to
float tolerance, cost less, and save checkpoints every reader takes as a masked run's."""

import copy
import functools

import pytest
import torch

from mlprunes import arch
from mlprunes.counting import count, training_macs
from mlprunes.engine.checkpoint import model_from_checkpoint
from mlprunes.nets import build, prunable_units
from mlprunes.pruning import compress, make_saliency, masks_from_history, spec_after
from mlprunes.pruning.loop import PruneSchedule, prune_while_finetuning, restore
from mlprunes.pruning.saliency import CRITERIA, FisherSaliency
from mlprunes.pruning.shrink import cut, cut_tensor, expand, surviving
from tests.test_loop import setup as setup_at_12

SIZE = (12, 12)   # the toy data's images

# Float sums in another order (a cut conv adds fewer zeros, in other blocks) are all that
# differs; over these short runs the validation losses agree to this (measured: up to 8e-6).
LOSS_TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def network(name: str):
    if name == "wrn":
        return arch.wrn(10, 1, num_classes=5)
    if name == "resnet":   # a CIFAR ResNet, traced: its groups are each block's inner channels
        return arch.make_spec("resnet", depth=8, num_classes=5)
    if name == "vgg":      # a chain: every conv's inputs are the last group's channels
        return arch.make_spec("vgg", depth=11, num_classes=5, input_size=16)
    return arch.make_spec(f"torchvision:{name}", num_classes=5, input_size=16)


def setup(criterion, spec, size=12):
    """`tests.test_loop.setup` on toy images of `size` pixels."""
    if size == 12:
        return setup_at_12(criterion, spec=spec)
    from mlprunes.data.loader import DeviceLoader
    from mlprunes.engine.recipes import preset
    from mlprunes.engine.trainer import Trainer, seed_everything
    from mlprunes.pruning import Pruner
    from tests.test_engine import toy_data

    seed_everything(0)
    images, labels = toy_data(size=size)
    train = DeviceLoader(images, labels, 16, (0.3,) * 3, (0.2,) * 3, train=True, seed=0)
    evaluation = DeviceLoader(images, labels, 32, (0.3,) * 3, (0.2,) * 3, train=False)
    trainer = Trainer(build(spec, masked=True), preset("wrn", pruning=True).override(
        batch_size=16), train, progress=False)
    return trainer, Pruner(trainer.model, make_saliency(criterion, seed=0)), evaluation


def run(spec, criterion: str, shrink_every: int, prunes: int = 12):
    size = 16 if getattr(spec, "builder", "") == "vgg" else 12
    trainer, pruner, evaluation = setup(criterion, spec, size)
    schedule = PruneSchedule(prunes=prunes, prune_every=3, val_every=2, save_every=4,
                             shrink_every=shrink_every)
    saves = {}
    curve = prune_while_finetuning(trainer, pruner, schedule, evaluation, (size, size),
                                   on_save=[lambda p, c: saves.update({p: copy.deepcopy(c)})])
    return trainer, pruner, curve, saves


# An untrained ResNet-18 on 12-pixel images has 1x1 feature maps in its last stage, where a
# ReLU that a float-order difference flips (seen 8 steps after a cut) changes a gradient by a
# third: 6 prunes, cut every 2, stay short of that.
@pytest.mark.parametrize("name, prunes, every", [("wrn", 12, 4), ("resnet", 12, 4),
                                                 ("resnet18", 6, 2)])
def test_a_shrinking_run_prunes_as_the_masked_run_does_at_less_cost(name, prunes, every):
    spec = network(name)
    masked_trainer, masked, masked_curve, masked_saves = run(spec, "fisher", 0, prunes)
    trainer, pruner, curve, saves = run(spec, "fisher", every, prunes)

    assert pruner.history == masked.history            # the same channels, in the same order
    # The network it holds is the one cut after 12 prunes, not the full width.
    assert trainer.model.spec == spec_after(spec, pruner.history)
    assert [p["prunes"] for p in curve] == [p["prunes"] for p in masked_curve]
    for a, b in zip(curve, masked_curve):
        for key in ("params", "flops", "channels_left", "val_error", "finetune_epochs"):
            assert a[key] == b[key], (a["prunes"], key)
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=LOSS_TOLERANCE)
    # What it spent: the full network's MACs for the segments before the first cut, then each
    # cut network's for its own.
    batch, steps = masked_trainer.loader.batch_size, 3
    expected = sum(training_macs(count(spec_after(spec, pruner.history[:every * (q // every)]),
                                       SIZE).flops, steps * batch) for q in range(prunes + 1))
    assert curve[-1]["train_macs"] == pytest.approx(expected)
    assert curve[-1]["train_macs"] < masked_curve[-1]["train_macs"]

    # Its checkpoints are full-width masked ones, as the masked run's are: the same keys,
    # shapes, masks and history, and a network that computes what the masked run's does.
    assert list(saves) == list(masked_saves) == [p for p in range(1, prunes + 1)
                                                 if p % 4 == 0 or p == prunes]
    for p in saves:
        ours, theirs = saves[p], masked_saves[p]
        assert ours["arch"] == theirs["arch"] and ours["prune_history"] == theirs["prune_history"]
        assert {k: v.shape for k, v in ours["model"].items()} == {
            k: v.shape for k, v in theirs["model"].items()}
        for a, b in zip(prunable_units(model_from_checkpoint(_loaded(ours))),
                        prunable_units(model_from_checkpoint(_loaded(theirs)))):
            assert torch.equal(a.mask, b.mask)
        x = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(p))
        ours_out = compress(model_from_checkpoint(_loaded(ours))).eval()(x)
        theirs_out = compress(model_from_checkpoint(_loaded(theirs))).eval()(x)
        assert torch.allclose(ours_out, theirs_out, atol=1e-3, rtol=1e-3)
        assert ours["meta"]["shrunk"] == p and theirs["meta"]["shrunk"] == 0


def _loaded(checkpoint):
    """A checkpoint as `load_checkpoint` gives it (with its parsed description)."""
    return {**checkpoint, "spec": arch.ArchSpec.from_json(checkpoint["arch"])}


@pytest.mark.parametrize("criterion", [c for c in CRITERIA if c != "fisher"])
def test_every_kind_of_criterion_chooses_alike_on_a_shrinking_network(criterion):
    """Random draws per original channel; magnitude criteria read weights the cut carries (on
    a VGG, where a layer's inputs are the channels another group loses: the masked network's
    dead inputs read as the cut network's missing ones); Hessian and Taylor start afresh after
    each prune, where the network is cut."""
    spec = network("vgg")
    assert run(spec, criterion, 3)[1].history == run(spec, criterion, 0)[1].history


def test_a_seed_network_whose_blocks_vanish_keeps_shrinking():
    """The seed's WRN may lose whole blocks (one becomes its shortcut): cut, such a block has
    no layers at all, and pruning goes on in the others."""
    spec = arch.wrn(10, 1, num_classes=5)
    histories = []
    for every in (10, 0):
        trainer, pruner, evaluation = setup("l1", spec)
        prune_while_finetuning(trainer, pruner, PruneSchedule(prunes=100, prune_every=1,
                                                              val_every=50, save_every=50,
                                                              shrink_every=every),
                               evaluation, SIZE)
        histories.append(pruner.history)
    assert 0 in spec_after(spec, histories[0]).mids
    assert histories[0] == histories[1]


@pytest.mark.parametrize("options", [dict(round_to=4), dict(keep_one=True),
                                     dict(flops_penalty=0.5, image_size=SIZE)],
                         ids=["round-to-4", "keep-one", "flops-penalty"])
def test_the_pruners_rules_hold_on_a_shrinking_network(options):
    """Channels four at a time from one block, a last channel kept, and cost-aware Fisher
    (which counts FLOPs at the original network's widths less the history) choose alike."""
    from mlprunes.pruning import Pruner

    spec = network("wrn")
    histories = []
    for every in (3, 0):
        trainer, _, evaluation = setup("fisher", spec)
        pruner = Pruner(trainer.model, make_saliency("fisher"), **options)
        prune_while_finetuning(trainer, pruner, PruneSchedule(prunes=10, prune_every=2,
                                                              val_every=5, save_every=5,
                                                              shrink_every=every),
                               evaluation, SIZE)
        histories.append(pruner.history)
    assert histories[0] == histories[1]
    assert len(histories[0]) == 10 * options.get("round_to", 1)


def test_a_run_resumes_under_another_shrink_every_and_from_a_masked_checkpoint():
    """A checkpoint says where its network was cut, so a resume cuts it there whatever the
    resumed run's own K: a shrinking run resumed masked-only, and a masked run's checkpoint
    (or one from before checkpoints said so) resumed shrinking, prune as the straight run."""
    spec = network("resnet")
    straight = run(spec, "l1", 0)[1].history
    for saved_with, resumed_with in ((3, 0), (0, 3)):
        saves = run(spec, "l1", saved_with)[3]
        checkpoint = copy.deepcopy(saves[8])
        if saved_with == 0:   # as written before meta held these
            del checkpoint["meta"]["shrunk"], checkpoint["meta"]["finetune_macs"]
        trainer, pruner, evaluation = setup("l1", spec)
        schedule = PruneSchedule(prunes=12, prune_every=3, val_every=2, save_every=4,
                                 shrink_every=resumed_with)
        start, curve, spent = restore(checkpoint, trainer, pruner, SIZE)
        assert start == 8 and pruner.shrunk == (6 if saved_with else 0)
        prune_while_finetuning(trainer, pruner, schedule, evaluation, SIZE, start=start,
                               curve=curve, spent=spent)
        assert pruner.history == straight, (saved_with, resumed_with)


def test_plan_counts_the_prune_stage_on_the_shrinking_network():
    from mlprunes.jobs import PruneJob
    from mlprunes.study.cost import pruning_macs

    spec = arch.wrn(16, 2)
    masked = pruning_macs(spec, (32, 32), PruneJob(base_run_id="b", prunes=300,
                                                    shrink_every=0))
    assert masked == 301 * count(spec, 32).flops   # a segment before each prune and after
    shrinking = pruning_macs(spec, (32, 32), PruneJob(base_run_id="b", prunes=300,
                                                       shrink_every=10))
    # Every block loses channels in proportion: the segments after q prunes cost the network
    # of widths (1 - 10 * floor(q / 10) / 448) times the full ones.
    expected = sum(count(spec.with_mids(round(m * (1 - 10 * (q // 10) / 448))
                                        for m in spec.mids), 32).flops for q in range(301))
    assert shrinking == expected and shrinking < 0.75 * masked


def test_cut_carries_momentum_so_training_goes_on_as_in_the_masked_network():
    """A masked network and its cut form, trained the same steps from the same optimiser
    state, stay the same network: the momentum of exactly the surviving entries is carried."""
    spec = network("resnet")
    trainer, pruner, _ = setup("fisher", spec)
    trainer.train_steps(4)
    for _ in range(6):
        pruner.prune()
    other = copy.deepcopy(trainer)
    pruner.detach()
    smaller, maps = cut(other.model, (3, *SIZE))
    other.replace_model(smaller, lambda name, old, new: cut_tensor(old, maps[name], new))
    before = {n: p.numel() for n, p in trainer.model.named_parameters()}
    after = {n: p.numel() for n, p in other.model.named_parameters()}
    assert sum(after.values()) < sum(before.values())
    trainer.train_steps(5)
    other.train_steps(5)
    x = torch.randn(4, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    trainer.model.eval(), other.model.eval()
    with torch.no_grad():
        assert torch.allclose(trainer.model(x), other.model(x), atol=1e-5, rtol=1e-4)
    # Without the momentum the same steps would go elsewhere: the check can fail.
    bare = copy.deepcopy(trainer)
    bare.replace_model(cut(bare.model, (3, *SIZE))[0], lambda name, old, new: torch.zeros_like(new))
    bare.train_steps(5)
    trainer.train_steps(5)
    bare.model.eval(), trainer.model.eval()
    with torch.no_grad():
        assert not torch.allclose(trainer.model(x), bare.model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["vgg", "mobilenet_v2"])   # chains; depthwise and residuals
def test_expand_gives_the_full_width_masked_network_the_cut_one_computes(name):
    spec = (arch.make_spec("vgg", depth=11, num_classes=5, input_size=16) if name == "vgg"
            else network(name))
    model = build(spec, masked=True)
    generator = torch.Generator().manual_seed(0)
    history = []
    for block, width in enumerate(spec.mids):   # half of each group, the first channel kept
        offset = sum(spec.mids[:block])
        history += [offset + int(c) + 1 for c in torch.randperm(width - 1, generator=generator)
                    [:width // 2]]
    shrunk, rest = history[:len(history) // 2], history[len(history) // 2:]
    from mlprunes.pruning import apply_history
    apply_history(model, shrunk)
    smaller, _ = cut(model, (3, 16, 16))
    assert smaller.spec == spec_after(spec, shrunk)
    for unit, mask, kept in zip(prunable_units(smaller), masks_from_history(spec, history),
                                surviving(spec, shrunk)):
        unit.set_mask(mask[kept])
    full = build(spec, masked=True)
    full.load_state_dict(expand(smaller, spec, shrunk, history))   # strict: every key
    x = torch.randn(2, 3, 16, 16, generator=generator)
    full.eval(), smaller.eval()
    with torch.no_grad():
        assert torch.allclose(full(x), smaller(x), atol=1e-5)
    assert all(torch.equal(u.mask, m) for u, m in zip(prunable_units(full),
                                                      masks_from_history(spec, history)))


def test_fisher_state_is_cut_to_the_surviving_channels():
    saliency = FisherSaliency()
    state = {"totals": [torch.tensor([1., 2., 3.]), None], "examples": [None, torch.ones(2)],
             "steps": [3, 1]}
    cut_state = saliency.cut_state(state, [torch.tensor([0, 2]), torch.tensor([1])])
    assert torch.equal(cut_state["totals"][0], torch.tensor([1., 3.]))
    assert cut_state["totals"][1] is None and cut_state["steps"] == [3, 1]
    assert torch.equal(cut_state["examples"][1], torch.ones(1))


def test_random_scores_follow_the_original_channels():
    spec = arch.wrn(10, 1, num_classes=5)
    model = build(spec, masked=True)
    units = prunable_units(model)
    full = make_saliency("random", seed=3).scores(units)
    for unit, width in zip(units, spec.mids):
        unit.full_mid, unit.origin = width, torch.arange(0, width, 2)
    assert all(torch.equal(a[u.origin], b) for a, u, b in
               zip(full, units, make_saliency("random", seed=3).scores(units)))


def test_a_negative_shrink_every_is_refused():
    with pytest.raises(ValueError, match="shrink-every must be >= 0"):
        PruneSchedule(prunes=3, prune_every=1, shrink_every=-1)


def test_a_shrinking_prune_run_feeds_every_later_stage_as_a_masked_one_does(store, tmp_path):
    """scratch, family, evaluate and export read a shrinking run's artifacts and checkpoints
    as they read a masked run's, and find the same networks in them."""
    import json

    from mlflow.tracking import MlflowClient

    from tests.stage_helpers import TINY_TRAIN, cli, read_artifact_text
    from tests.test_stages import prune_args

    client = MlflowClient()
    base = cli(*TINY_TRAIN).run_id
    runs = {k: cli(*prune_args(base, "--shrink-every", str(k))).run_id for k in (0, 3)}
    assert client.get_run(runs[3]).data.params["shrink_every"] == "3"
    for artifact in ("prune_history.json", "checkpoint_widths.json", "final_arch.json"):
        texts = {k: json.loads(read_artifact_text(r, artifact, tmp_path / f"{k}-{artifact}"))
                 for k, r in runs.items()}
        assert texts[0] == texts[3], artifact
    metrics = {k: client.get_run(r).data.metrics for k, r in runs.items()}
    assert metrics[0]["params"] == metrics[3]["params"]
    assert metrics[3]["test_error"] == pytest.approx(metrics[0]["test_error"], abs=1e-6)
    assert metrics[3]["train_macs"] < metrics[0]["train_macs"]

    def made(*args):
        run_id = cli(*args, "--no-progress").run_id
        return client.get_run(run_id)

    found = {}
    for k, r in runs.items():
        scratch = made("scratch", "--prune-run-id", r, "--prunes", "4", "--no-log-model")
        family = made("family", "--prune-run-id", r, "--prunes", "8", "--budgets", "40000",
                      "--no-log-model")
        members = client.search_runs([family.info.experiment_id],
                                     f"tags.`mlflow.parentRunId` = '{family.info.run_id}'")
        evaluate = made("evaluate", "--run-id", r, "--repeats", "1", "--batch-size", "8")
        out = tmp_path / f"p4-{k}.onnx"
        export = cli("export", "--run-id", r, "--prunes", "4", "--format", "onnx", "--out",
                     str(out))
        assert export.exit_code == 0 and "matches the masked network to" in export.stderr
        found[k] = (scratch.data.params["arch_spec"],
                    sorted(m.data.params["arch_spec"] for m in members),
                    evaluate.data.metrics["params"], evaluate.data.metrics["test_error"])
    assert found[0][:3] == found[3][:3]
    assert found[3][3] == pytest.approx(found[0][3], abs=1e-6)
