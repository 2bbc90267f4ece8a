"""The field's criteria on our unit interface: l2, bn-scale, lamp, fpgm, taylor and hessian, each on
hand-built weights where its ranking is known, each checked against Torch-Pruning's class where
that class computes the same thing (and, where we differ on purpose, the difference shown);
network slimming's L1 term on BatchNorm scales."""

import pytest
import torch
from torch import nn

from mlprunes import arch
from mlprunes.arch import make_spec
from mlprunes.engine.recipes import preset
from mlprunes.engine.trainer import train_step
from mlprunes.nets import build, prunable_units
from mlprunes.pruning import Pruner, make_saliency
from mlprunes.pruning.saliency import CRITERIA

NEW = ("l2", "bn-scale", "lamp", "fpgm", "taylor", "hessian")


def wrn_block0(spec=None):
    """A masked WRN-10-1 and its first block with every middle weight zeroed."""
    model = build(spec or arch.wrn(10, 1), masked=True)
    block = prunable_units(model)[0]
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.bn2.weight.zero_()
        block.conv2.weight.zero_()
    return model, block


def test_l2_is_the_group_norm_over_filters_bn_scales_and_consumer_columns():
    model, block = wrn_block0()
    with torch.no_grad():
        block.conv1.weight[1].view(-1)[0] = 3.0           # channel 1: its filter
        block.bn2.weight[2] = 4.0                         # channel 2: its BN scale
        block.conv2.weight[0, 3, 0, :2] = 2.0               # channel 3: two input weights
        block.bn2.weight[3] = 1.0
    scores = make_saliency("l2").scores(prunable_units(model))[0]
    assert scores[:4].tolist() == pytest.approx([0.0, 3.0, 4.0, 3.0])


def test_bn_scale_is_the_absolute_batchnorm_scale():
    model, block = wrn_block0()
    with torch.no_grad():
        block.bn2.weight[:3] = torch.tensor([-5.0, 0.5, 2.0])
        block.conv1.weight.fill_(100.0)                  # weights do not count
    scores = make_saliency("bn-scale").scores(prunable_units(model))[0]
    assert scores[:3].tolist() == [5.0, 0.5, 2.0]


def test_lamp_divides_by_the_active_channels_at_least_as_strong():
    model, block = wrn_block0()
    with torch.no_grad():
        for channel, value in enumerate([1.0, 2.0, 3.0]):   # squares 1, 4, 9
            block.bn2.weight[channel] = value
    keep = torch.zeros(block.mid)
    keep[:3] = 1
    block.set_mask(keep)                                 # the rest pruned: out of the sums
    scores = make_saliency("lamp").scores(prunable_units(model))[0]
    assert scores[:3].tolist() == pytest.approx([1 / 14, 4 / 13, 1.0])
    assert scores[3:].abs().sum() == 0


def test_fpgm_scores_the_geometric_median_lowest_among_active_filters():
    model, block = wrn_block0()
    with torch.no_grad():
        block.conv1.weight.view(block.mid, -1)[:4, 0] = torch.tensor([0.0, 1.0, 10.0, 50.0])
    mask = torch.ones(block.mid)
    mask[3] = 0                                          # pruned: not in the median's layer
    mask[4:] = 0
    block.set_mask(mask)
    scores = make_saliency("fpgm").scores(prunable_units(model))[0]
    # distances to 0, 1 and 10: 0+1+10, 1+0+9, 10+9+0; each over its 2 others, over their
    # mean (20/3): one scale for every layer
    assert scores[:3].tolist() == pytest.approx([5.5 * 3 / 20, 5.0 * 3 / 20, 9.5 * 3 / 20])
    assert int(scores[:3].argmin()) == 1
    keep = torch.zeros(block.mid)
    keep[1] = 1
    block.set_mask(keep)                               # a layer's last channel scores 1
    assert make_saliency("fpgm").scores(prunable_units(model))[0][1] == 1.0


def test_taylor_is_the_squared_gate_gradient_which_is_bn_affine_w_dw():
    torch.manual_seed(0)
    model = build(arch.wrn(10, 1), masked=True)
    units = prunable_units(model)
    taylor = make_saliency("taylor")
    taylor.attach(units)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    model.train()
    nn.functional.cross_entropy(model(x), y).backward()
    bn = units[0].bn2
    gate = bn.weight.detach() * bn.weight.grad + bn.bias.detach() * bn.bias.grad
    assert torch.allclose(taylor.scores(units)[0], gate.pow(2), rtol=1e-4, atol=1e-12)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()   # accumulated, as Fisher is
    assert torch.allclose(taylor.scores(units)[0], 2 * gate.pow(2), rtol=1e-4, atol=1e-12)
    taylor.reset()
    assert taylor.scores(units)[0].abs().sum() == 0
    taylor.detach()


TRACED = {"resnet": dict(family="resnet", depth=8), "mobilenet": dict(
    family="torchvision:mobilenet_v2", args={"width_mult": 0.25}),
          "vgg": dict(family="vgg", depth=11)}


@pytest.mark.parametrize("network", sorted(TRACED))
@pytest.mark.parametrize("criterion", NEW)
def test_every_new_criterion_prunes_every_kind_of_network_with_round_to_and_keep_one(
        network, criterion):
    spec = make_spec(**TRACED[network], num_classes=10, input_size=16)
    model = build(spec, masked=True)
    pruner = Pruner(model, make_saliency(criterion), keep_one=True, round_to=1,
                    image_size=(16, 16))
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(3):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.prune()
    pruner.detach()
    assert len(pruner.history) == 3
    assert sum(int(u.mask.sum()) for u in prunable_units(model)) == spec.prunable_channels - 3


@pytest.mark.parametrize("criterion", NEW)
def test_every_new_criterion_prunes_a_wrn_by_blocks_of_r(criterion):
    spec = arch.wrn(10, 1).rounded(4)
    model = build(spec, masked=True)
    pruner = Pruner(model, make_saliency(criterion), round_to=4, image_size=(8, 8))
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    pruner.prune()
    pruner.detach()
    widths = [int(u.mask.sum()) for u in prunable_units(model)]
    assert sum(widths) == spec.prunable_channels - 4 and all(w % 4 == 0 for w in widths)


def test_bn_scale_refuses_a_group_without_batchnorm(monkeypatch):
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    monkeypatch.syspath_prepend(here)
    monkeypatch.setenv("MLPRUNES_ALLOWED_MODULES", "cnn_zoo")
    spec = make_spec("cnn_zoo:branchy", num_classes=10, input_size=16, groups="all")
    units = [u for u in prunable_units(build(spec, masked=True))
             if not any(kind == "bn" for kind, _, _ in u.parts())]
    assert [u.name for u in units] == ["hidden"]      # a linear layer with no BatchNorm
    with pytest.raises(ValueError, match="hidden has no BatchNorm"):
        make_saliency("bn-scale").scores(units)
    with pytest.raises(ValueError, match="hidden has no BatchNorm"):   # before any training
        Pruner(build(spec, masked=True), make_saliency("bn-scale"), image_size=(16, 16))


# -- against Torch-Pruning -----------------------------------------------------------------------

def peer_groups(spec):
    """Our masked network's units, and Torch-Pruning's group for each, on an unmasked copy
    with the same weights."""
    return peer_network(spec)[1:]


def peer_network(spec):
    """The unmasked copy Torch-Pruning's groups are on, our units, and the groups."""
    import torch_pruning as tp

    torch.manual_seed(1)
    plain = build(spec)
    masked = build(spec, masked=True)
    masked.load_state_dict(plain.state_dict(), strict=False)
    units = prunable_units(masked)
    modules = dict(plain.named_modules())
    graph = tp.DependencyGraph().build_dependency(plain, example_inputs=torch.randn(1, 3, 16, 16))
    groups = []
    for unit in units:
        root = modules[unit.name]
        fn = (tp.prune_conv_out_channels if isinstance(root, nn.Conv2d)
              else tp.prune_linear_out_channels)
        groups.append(graph.get_pruning_group(root, fn, idxs=list(range(unit.mid))))
    return plain, units, groups


@pytest.mark.parametrize("network", ["resnet", "mobilenet"])
def test_magnitude_bn_scale_and_lamp_equal_torch_prunings_classes(network):
    import torch_pruning as tp

    spec = make_spec(**TRACED[network], num_classes=10, input_size=16)
    units, groups = peer_groups(spec)
    if network == "mobilenet":   # the same, once the depthwise convs Torch-Pruning skips go
        for unit in units:
            modules = dict(unit._model.named_modules())
            unit._member_names = [m for m in unit._member_names if not (
                isinstance(modules[m[0]], nn.Conv2d) and modules[m[0]].groups > 1)]
    ours = {c: make_saliency(c).scores(units) for c in ("l2", "bn-scale", "lamp")}
    theirs = {
        # sum of squares over the group's layers; ours is its square root
        "l2": tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum",
                                                     normalizer=None),
        "bn-scale": tp.importance.BNScaleImportance(group_reduction="sum", normalizer=None),
        "lamp": tp.importance.LAMPImportance(p=2, group_reduction="sum"),
    }
    for unit, group, k in zip(units, groups, range(len(units))):
        l2 = theirs["l2"](group)
        assert torch.allclose(ours["l2"][k].pow(2), l2, rtol=1e-5), unit.name
        assert torch.allclose(ours["bn-scale"][k], theirs["bn-scale"](group), rtol=1e-5)
        assert torch.allclose(ours["lamp"][k], theirs["lamp"](group), rtol=1e-4), unit.name


def test_fpgm_differs_from_torch_prunings_on_purpose():
    """Torch-Pruning measures distances between |W|^2 of every member layer; He et al. (and we)
    between the producing layer's filters W: the rankings part on a real network."""
    import torch_pruning as tp

    spec = make_spec(**TRACED["resnet"], num_classes=10, input_size=16)
    units, groups = peer_groups(spec)
    ours = make_saliency("fpgm").scores(units)
    theirs = tp.importance.FPGMImportance(group_reduction="sum", normalizer=None)
    differ = 0
    for unit, group, score in zip(units, groups, ours):
        filters = unit.filters()
        by_hand = torch.cdist(filters[None], filters[None])[0].sum(1) / (unit.mid - 1)
        assert torch.allclose(score, by_hand / by_hand.mean(), rtol=1e-5)
        differ += not torch.equal(score.argsort(), theirs(group).argsort())
    assert differ > 0


def test_the_criteria_are_named_and_only_those_with_a_loss_estimate_take_a_flops_penalty():
    assert set(NEW) <= set(CRITERIA)
    for criterion in NEW:
        model = build(arch.wrn(10, 1), masked=True)
        if criterion == "hessian":   # OBD's 1/2 w^2 h is an estimate of the loss's rise
            Pruner(model, make_saliency(criterion), flops_penalty=0.1, image_size=(8, 8))
            continue
        with pytest.raises(ValueError, match="use fisher"):
            Pruner(model, make_saliency(criterion), flops_penalty=0.1, image_size=(8, 8))


# -- network slimming's sparsity term ----------------------------------------------------------

def test_bn_l1_adds_lambda_sign_gamma_to_the_scales_gradients_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    x, y = torch.randn(4, 3, 5, 5), torch.randint(0, 2, (4,))
    net(x)
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, -0.1]))
    plain = {k: v.clone() for k, v in net.state_dict().items()}

    def step(bn_l1):
        net.load_state_dict(plain)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        train_step(net, opt, x, y, 1.0, torch.device("cpu"), None, [net[1].weight], bn_l1)
        return {k: v.clone() for k, v in net.state_dict().items()}

    without, with_l1 = step(0.0), step(0.1)
    # gamma moves 0.1 * sign(gamma) further towards 0; nothing else changes
    assert torch.allclose(without["1.weight"] - with_l1["1.weight"],
                          0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    for k in plain:
        if k != "1.weight":
            assert torch.equal(without[k], with_l1[k]), k


def test_bn_l1_is_a_recipe_value_that_keys_only_when_set():
    from mlprunes.jobs import RecipeChoice, TrainJob

    spec = arch.wrn(10, 1)
    recipe = preset("wrn")
    assert TrainJob(spec=spec, recipe=recipe).key == TrainJob(
        spec=spec, recipe=recipe.override(bn_l1=0.0)).key
    assert TrainJob(spec=spec, recipe=recipe).key != TrainJob(
        spec=spec, recipe=recipe.override(bn_l1=1e-4)).key
    assert RecipeChoice().key_settings() == {f: None for f in (
        "preset", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
        "milestones", "gamma", "pad")}
    with pytest.raises(ValueError, match="bn_l1"):
        recipe.override(bn_l1=-1.0)


# -- through the stages -------------------------------------------------------------------------

def test_each_new_criterion_is_a_prune_run_and_bn_l1_a_train_option(store, tmp_path):
    store_dir = tmp_path
    import json

    from mlflow.tracking import MlflowClient

    from tests.stage_helpers import TINY_TRAIN, cli, read_artifact_text
    from tests.test_stages import prune_args

    client = MlflowClient()
    slim = cli(*TINY_TRAIN, "--bn-l1", "1e-4").run_id
    plain = cli(*TINY_TRAIN).run_id
    assert client.get_run(slim).data.params["bn_l1"] == "0.0001"
    assert client.get_run(plain).data.params["bn_l1"] == "0"
    assert client.get_run(slim).data.tags["mlprunes.config_key"] != client.get_run(
        plain).data.tags["mlprunes.config_key"]
    for criterion in NEW:
        run_id = cli(*prune_args(slim if criterion == "bn-scale" else plain, "--criterion",
                                 criterion)).run_id
        run = client.get_run(run_id)
        assert run.data.tags["mlprunes.criterion"] == criterion
        history = json.loads(read_artifact_text(run_id, "prune_history.json",
                                                store_dir / run_id))
        assert len(history) == 8 and len(set(history)) == 8
    refused = cli(*prune_args(plain, "--criterion", "taylor", "--flops-penalty", "0.1"))
    assert refused.exit_code != 0 and "use --criterion fisher" in refused.stderr


def test_a_study_prunes_bn_scale_from_a_slimming_base_beside_the_plain_one(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.stage_helpers import all_runs, cli

    sets = ("prune.criteria=['fisher', 'bn-scale'];prune.slimming=1e-4;evaluate.enabled=false;"
            "family.budgets=[];baselines.reduced=[]")
    pipeline = cli("pipeline", "--preset", "tiny", "--no-progress", "--set", sets).run_id
    runs = {r.data.tags["mlflow.runName"]: r for r in all_runs()
            if r.data.tags.get("mlflow.parentRunId") == pipeline}
    assert runs["train-base-slimming"].data.params["bn_l1"] == "0.0001"
    assert runs["train-base"].data.params["bn_l1"] == "0"
    assert runs["prune-bn-scale"].data.tags["mlprunes.base_run_id"] == runs[
        "train-base-slimming"].info.run_id
    assert runs["prune-fisher"].data.tags["mlprunes.base_run_id"] == runs[
        "train-base"].info.run_id
    assert MlflowClient().get_run(pipeline).data.params["study.prune.slimming"] == "0.0001"


def test_the_criteria_study_on_two_seeds_has_a_leaderboard_everywhere(store, tmp_path):
    """The shipped criteria study, shrunk to seconds: its leaderboard (question 5) is in
    answers.json, the report and the compare run's description."""
    import json

    from mlflow.tracking import MlflowClient

    from tests.stage_helpers import all_runs, cli, read_artifact_text

    sets = ("data.image_size=8;data.shapes_train=256;data.shapes_test=64;network.depth=10;"
            "train.epochs=1;prune.prunes=100;prune.prune_every=1;prune.val_every=10;"
            "prune.criteria=['fisher', 'bn-scale', 'random'];scratch.macs_reductions=[2, 4];"
            "baselines.macs_reductions=[2];run.seeds=[0, 1];run.log_model=false")
    pipeline = cli("pipeline", "--preset", "criteria", "--no-progress", "--set", sets).run_id
    client = MlflowClient()
    stages = sorted(r.data.tags.get("mlprunes.stage") for r in all_runs()
                    if r.data.tags.get("mlflow.parentRunId") == pipeline)
    # per seed: a base, a slimming base, a uniform baseline, 3 prunes, 3 x 2 scratch runs
    assert stages.count("train") == 6 and stages.count("prune") == 6
    assert stages.count("scratch") == 12
    scratch = [r for r in all_runs() if r.data.tags.get("mlprunes.stage") == "scratch"]
    assert {r.data.params["macs_reduction"] for r in scratch} == {"2", "4"}
    compare = client.get_run(client.get_run(pipeline).data.tags["mlprunes.compare_run_id"])
    answers = json.loads(read_artifact_text(compare.info.run_id, "answers.json", tmp_path / "a"))
    q5 = next(a for a in answers if a["question"] == 5)
    titles = {c["first"].split(" (")[0] for c in q5["comparisons"]}
    assert titles == {f"{c} at {r}x fewer MACs" for c in ("Fisher", "BN scale") for r in (2, 4)}
    for c in q5["comparisons"]:      # paired where both runs of a seed reached the reduction
        assert c["seeds"] and set(c["seeds"]) <= {0, 1} and c["difference"]["paired"]
        assert "from scratch" in c["note"]
    assert any(c["seeds"] == [0, 1] for c in q5["comparisons"])
    report = read_artifact_text(compare.info.run_id, "report.html", tmp_path / "r")
    assert 'id="leaderboard"' in report and "Uniform width" in report
    assert "5. **Which criterion prunes best" in compare.data.tags["mlflow.note.content"]
    plots = {f.path for f in client.list_artifacts(compare.info.run_id, "plots")}
    assert "plots/leaderboard.png" in plots


def test_pruned_channels_read_as_zeros_in_the_filters_that_consume_them():
    """Masks act on a channel's producers; the layers reading it keep its input weights, which
    no longer carry anything: magnitude criteria must not count them."""
    from mlprunes.pruning.saliency import dead_inputs

    torch.manual_seed(0)
    spec = make_spec("vgg", depth=11, num_classes=10, input_size=16)
    model = build(spec, masked=True)
    units = prunable_units(model)
    first, second = units[0], units[1]
    before = make_saliency("l1").scores(units)[1].clone()
    mask = torch.ones(first.mid)
    mask[: first.mid // 2] = 0
    first.set_mask(mask)
    dead = dead_inputs(units)
    (module, index, root), = first.inputs()
    assert sorted(dead[module].tolist()) == sorted(index[root < first.mid // 2].tolist())
    after = make_saliency("l1").scores(units)[1]
    weight = second.filters().clone().view(second.mid, first.mid, -1)
    expected = weight[:, first.mid // 2:].abs().sum(dim=(1, 2))
    assert torch.allclose(after, expected) and (after < before).all()
    assert dead_inputs(prunable_units(build(arch.wrn(10, 1), masked=True))) == {}  # blocks


# -- hessian: per-sample squared gradients -------------------------------------------------------

def one_backward_per_sample(module, x, grad):
    """sum_n (dL/dW)_n^2 the slow way: the layer run on each sample alone, its weight's
    gradient taken against that sample's output gradient."""
    total = torch.zeros_like(module.weight)
    for xn, gn in zip(x, grad):
        module.zero_grad()
        (module(xn[None]) * gn[None]).sum().backward()
        total += module.weight.grad.pow(2)
    return total


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="reflect", bias=False), (5, 4, 9, 9)),
    (nn.Conv2d(4, 6, 3, dilation=2, groups=2), (5, 4, 9, 9)),
    (nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (5, 4, 6, 6)),     # depthwise
    (nn.Linear(7, 3), (5, 7)),
    (nn.Linear(7, 3), (5, 2, 4, 7)),                                   # positions between
    (nn.BatchNorm2d(4).eval(), (5, 4, 3, 3)),
])
def test_per_sample_squared_gradients_equal_one_backward_per_sample(layer, shape):
    from mlprunes.pruning import persample

    torch.manual_seed(0)
    if isinstance(layer, nn.BatchNorm2d):          # statistics of its own, not 0 and 1
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
        layer.weight.data.uniform_(0.5, 2)
    x = torch.randn(shape)
    grad = torch.randn_like(layer(x))
    fast = persample.squared_sum(layer, x, grad)
    assert fast.shape == layer.weight.shape
    assert torch.allclose(fast, one_backward_per_sample(layer, x, grad), rtol=1e-4, atol=1e-7)


def per_example_squares(model, x, y):
    """Each parameter's mean over examples of (dl_n/dw)^2, one backward per example."""
    squares = {}
    for xn, yn in zip(x, y):
        model.zero_grad()
        nn.functional.cross_entropy(model(xn[None]), yn[None]).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                squares[name] = squares.get(name, 0) + p.grad.pow(2) / len(x)
    return squares


def test_hessian_is_obd_with_per_example_squared_gradients_on_a_wrn_block():
    """In evaluation mode samples do not interact, so a batch's hooks must give exactly
    1/2 sum_w w^2 mean_n (dl_n/dw)^2 over the block's conv1 filter, bn2 scale and conv2
    columns; a channel whose weights are all zero scores 0 and goes first."""
    torch.manual_seed(0)
    model = build(arch.wrn(10, 1), masked=True).eval()
    units = prunable_units(model)
    block = units[0]
    with torch.no_grad():
        block.conv1.weight[2].zero_()
        block.bn2.weight[2] = 0
        block.conv2.weight[:, 2].zero_()
    hessian = make_saliency("hessian")
    hessian.attach(units)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    nn.functional.cross_entropy(model(x), y).backward()
    ours = hessian.scores(units)[0]
    hessian.detach()
    squares = per_example_squares(model, x, y)
    names = {id(p): n for n, p in model.named_parameters()}
    hand = torch.zeros(block.mid)
    for layer, axis in ((block.conv1, 0), (block.bn2, 0), (block.conv2, 1)):
        obd = 0.5 * layer.weight.detach().pow(2) * squares[names[id(layer.weight)]]
        hand += obd.transpose(0, axis).flatten(1).sum(1) if obd.dim() > 1 else obd
    assert torch.allclose(ours, hand, rtol=1e-4, atol=1e-12)
    others = ours[torch.arange(block.mid) != 2]
    assert ours[2] == 0 and int(ours.argmin()) == 2 and (others > 0).all()


def test_hessian_accumulates_over_steps_resets_after_a_prune_and_resumes_from_its_state():
    torch.manual_seed(0)
    model = build(arch.wrn(10, 1), masked=True)
    units = prunable_units(model)
    hessian = make_saliency("hessian")
    hessian.attach(units)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    model.eval()
    nn.functional.cross_entropy(model(x), y).backward()
    once = [s.clone() for s in hessian.scores(units)]
    with torch.no_grad():
        model(x)                                      # an evaluation pass adds nothing
    nn.functional.cross_entropy(model(x), y).backward()
    twice = hessian.scores(units)
    assert all(torch.allclose(t, 2 * o, rtol=1e-5) for t, o in zip(twice, once))
    increase = hessian.loss_increase(units)            # per step: the one step's estimate
    assert all(torch.allclose(i, o, rtol=1e-5) for i, o in zip(increase, once))
    state = hessian.state_dict()
    hessian.detach()
    resumed = make_saliency("hessian")
    resumed.attach(units)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(resumed.scores(units), twice))
    resumed.reset()
    assert all(s.abs().sum() == 0 for s in resumed.scores(units))
    resumed.detach()
    nn.functional.cross_entropy(model(x), y).backward()   # detached: nothing is watched
    assert all(s.abs().sum() == 0 for s in resumed.scores(units))


def test_hessian_equals_torch_prunings_on_one_sample_and_sums_what_it_overwrites():
    """Torch-Pruning 1.6.1's `GroupHessianImportance`, fed one backward per sample as its
    docstring says, keeps only the last sample's g^2 (its accumulate_grad tests the name but
    stores under the parameter). On one sample it and ours agree (ours carries OBD's 1/2); on
    two, it equals ours on the second sample alone, and ours is the mean of the two."""
    import torch_pruning as tp

    spec = make_spec(**TRACED["resnet"], num_classes=10, input_size=16)
    plain_model, units, groups = peer_network(spec)
    ours_model = units[0]._model.eval()
    plain_model.eval()
    torch.manual_seed(3)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))

    def theirs(samples):
        scorer = tp.importance.GroupHessianImportance(group_reduction="sum", normalizer=None)
        for n in samples:
            plain_model.zero_grad()
            nn.functional.cross_entropy(plain_model(x[n:n + 1]), y[n:n + 1]).backward()
            scorer.accumulate_grad(plain_model)
        return [scorer(group) for group in groups]

    def ours(samples):
        hessian = make_saliency("hessian")
        hessian.attach(units)
        nn.functional.cross_entropy(ours_model(x[samples]), y[samples]).backward()
        scores = hessian.scores(units)
        hessian.detach()
        return scores

    first, second, both = ours([0]), ours([1]), ours([0, 1])
    for k, unit in enumerate(units):
        assert torch.allclose(2 * first[k], theirs([0])[k], rtol=1e-4, atol=1e-10), unit.name
        assert torch.allclose(2 * second[k], theirs([0, 1])[k], rtol=1e-4, atol=1e-10)
        assert torch.allclose(both[k], (first[k] + second[k]) / 2, rtol=1e-4, atol=1e-10)
    assert any(not torch.allclose(both[k], second[k], rtol=1e-2) for k in range(len(units)))

