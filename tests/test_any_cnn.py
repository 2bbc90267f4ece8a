"""Any CNN as a `GraphSpec`: our CIFAR ResNet and VGG, torchvision's classifiers and the small
networks of `cnn_zoo`, masked, trained a little, pruned by Fisher, compressed and counted.

Every network is traced once per module (`spec_of`), at 32x32, and run on batches of 4.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# tests/ is a package (tests/__init__.py), so pytest puts the repository root on sys.path, not
# this folder; the zoo is imported by name, `cnn_zoo:branchy`, as a user's module would be.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

import cnn_zoo  # noqa: E402

from mlprunes.arch import ArchError, ArchSpec, GraphSpec, make_spec  # noqa: E402
from mlprunes import arch as arch_module  # noqa: E402
from mlprunes.counting import count  # noqa: E402
from mlprunes.nets import build, prunable_units  # noqa: E402
from mlprunes.pruning import (FisherSaliency, Pruner, build_sliced, compress, locate,  # noqa: E402
                              spec_after)

ALLOWED = "MLPRUNES_ALLOWED_MODULES"
BATCH, SIZE = 4, 32


@pytest.fixture(autouse=True)
def _zoo_allowed(monkeypatch):
    monkeypatch.setenv(ALLOWED, "cnn_zoo")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are small: one intra-op thread is as fast, and does not slow down tenfold
    when another process shares the cores (OpenMP threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def spec_of(arch: str, depth: int | None = None, groups: str | None = None,
            num_classes: int = 10) -> GraphSpec:
    return make_spec(arch, depth=depth, groups=groups, num_classes=num_classes)


# (arch, depth, groups): each network with its default rule (internal for resnet, all for the
# others) and, where it is another set of groups, the other rule.
CASES = [
    ("resnet", 20, None),
    ("resnet", 56, None),
    ("vgg", 16, None),
    ("torchvision:resnet18", None, None),
    ("torchvision:resnet18", None, "internal"),
    ("torchvision:resnet50", None, None),
    ("torchvision:resnet50", None, "internal"),
    ("torchvision:mobilenet_v2", None, None),
    ("torchvision:mobilenet_v2", None, "internal"),
    ("torchvision:densenet121", None, None),
    ("torchvision:densenet121", None, "internal"),
    ("torchvision:efficientnet_b0", None, None),
    ("torchvision:efficientnet_b0", None, "internal"),
    ("cnn_zoo:branchy", None, None),
    ("cnn_zoo:branchy", None, "internal"),
]


def case_id(case) -> str:
    arch, depth, groups = case
    return f"{arch}{'' if depth is None else '-' + str(depth)}-{groups or 'default'}"


@pytest.fixture(params=CASES, ids=case_id)
def case(request):
    return request.param


# -- helpers ----------------------------------------------------------------------------------------

def batch(generator: torch.Generator, num_classes: int = 10):
    return (torch.randn(BATCH, 3, SIZE, SIZE, generator=generator),
            torch.randint(num_classes, (BATCH,), generator=generator))


def random_masks(model: nn.Module, generator: torch.Generator) -> None:
    """About half of every group's channels off, at least one kept."""
    for group in prunable_units(model):
        mask = (torch.rand(group.mid, generator=generator) < 0.5).float()
        mask[int(torch.randint(group.mid, (1,), generator=generator))] = 1
        group.set_mask(mask)


def train_steps(model: nn.Module, steps: int, generator: torch.Generator,
                lr: float = 0.05) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x, y = batch(generator, model.spec.num_classes)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    assert got.shape == want.shape
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    assert err <= rtol * scale + 1e-6, f"largest difference {err:.3g} at output scale {scale:.3g}"


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout draws one number per value, so the two networks (of different widths) would
    drop different values; stochastic depth draws one per sample and stays on."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.eval()
    return model


def assert_same_function(masked: nn.Module, compact: nn.Module,
                         generator: torch.Generator) -> None:
    """The compressed network computes the masked one in eval mode, in train mode (batch
    statistics, the same forward on copies), and in eval mode again after the running
    statistics were updated by that train-mode forward."""
    x, _ = batch(generator)
    masked.eval(), compact.eval()
    with torch.no_grad():
        assert_close(compact(x), masked(x))
    m, c = copy.deepcopy(masked).train(), copy.deepcopy(compact).train()
    _no_dropout(m), _no_dropout(c)
    with torch.no_grad():
        torch.manual_seed(11)
        want = m(x)
        torch.manual_seed(11)
        got = c(x)
    assert_close(got, want)
    m.eval(), c.eval()
    with torch.no_grad():
        assert_close(c(x), m(x))


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_counter_total(model: nn.Module) -> int:
    """torch.utils.flop_counter's FLOPs for one 1x3x32x32 forward (2 per multiply-add of the
    convolutions and matrix products)."""
    model = copy.deepcopy(model).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, SIZE, SIZE))
    return int(counter.get_total_flops())


def assert_counted(compact: nn.Module) -> None:
    counts = count(compact.spec, SIZE)
    assert numel(compact) == counts.params
    assert 2 * counts.flops == flop_counter_total(compact)


# -- 1. exactness --------------------------------------------------------------------------------------

def test_random_masks_compress_exactly_and_count_right(case):
    g = torch.Generator().manual_seed(1)
    spec = spec_of(*case)
    model = build(spec, masked=True)
    random_masks(model, g)
    train_steps(model, 2, g)
    compact = compress(model)
    assert compact.spec == spec.with_mids(int(u.mask.sum()) for u in prunable_units(model))
    assert compact.spec.prunable_channels < spec.prunable_channels
    assert_same_function(model, compact, g)
    assert_counted(compact)


def test_the_full_network_counts_right(case):
    assert_counted(build(spec_of(*case)))


def weakest(units, scores) -> int:
    """The global index of the channel a pruner keeping one channel per group removes: the
    lowest score among the active channels of groups with more than one left (ties: the first
    group, then the lowest channel)."""
    best, offset = None, 0
    for unit, score in zip(units, scores):
        alive = unit.mask.detach().cpu() > 0
        if int(alive.sum()) > 1:
            live = score.detach().cpu().clone()
            live[~alive] = math.inf
            channel = int(torch.argmin(live))
            if best is None or float(live[channel]) < best[0]:
                best = (float(live[channel]), offset + channel)
        offset += unit.mid
    return best[1]


def test_fisher_prunes_then_compresses_exactly(case):
    g = torch.Generator().manual_seed(2)
    spec = spec_of(*case)
    model = build(spec, masked=True)
    pruner = Pruner(model, FisherSaliency(), round_to=1)
    units = prunable_units(model)
    pruned = []
    for round_ in range(3):
        train_steps(model, 3 if round_ == 0 else 1, g)
        scores = pruner.saliency.scores(units)
        flat = torch.cat([s.flatten() for s in scores])
        assert torch.isfinite(flat).all() and (flat >= 0).all()
        assert all(float(s.max()) > 0 for s in scores), "a group scored all zero after steps"
        expected = weakest(units, scores)
        got = pruner.prune()
        assert got == [expected]
        pruned += got
        # Reset after a prune: nothing is scored until the next step.
        assert all(float(s.abs().max()) == 0 for s in pruner.saliency.scores(units))
    assert pruner.history == pruned and len(set(pruned)) == 3
    for index in pruned:
        group, channel = locate(spec, index)
        assert float(units[group].mask[channel]) == 0
    assert sum(int(u.mask.sum()) for u in units) == spec.prunable_channels - 3
    compact = compress(model)
    assert compact.spec == spec_after(spec, pruned)
    assert_same_function(model, compact, g)
    assert numel(compact) == count(compact.spec, SIZE).params


def test_resnet_refuses_groups_all():
    with pytest.raises(ArchError) as info:
        make_spec("resnet", depth=20, groups="all")
    message = str(info.value)
    assert "\n" not in message
    assert "option-A" in message or "option A" in message or "shortcut" in message


# -- 2. Fisher is Theis et al.'s estimate ------------------------------------------------------------

def _per_sample_mask_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                               producers: dict[str, list[tuple[str, int]]],
                               widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """d(batch-mean loss)/d m[n, c] for a per-sample mask m of each group (ones), multiplying
    the output of every layer that produces the group's channels."""
    modules = dict(model.named_modules())
    masks = {name: torch.ones(x.shape[0], widths[name], requires_grad=True)
             for name in producers}
    handles = []
    for name, layers in producers.items():
        for layer, first in layers:
            def hook(module, inputs, out, name=name, first=first):
                channels = out.shape[1]
                m = masks[name]
                factor = torch.cat([torch.ones(out.shape[0], first), m,
                                    torch.ones(out.shape[0], channels - first - m.shape[1])],
                                   dim=1)
                return out * factor.view(*factor.shape, *([1] * (out.dim() - 2)))
            handles.append(modules[layer].register_forward_hook(hook))
    try:
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(masks.values()))
    finally:
        for handle in handles:
            handle.remove()
    return dict(zip(masks, grads))


@functools.lru_cache(maxsize=None)
def _branchy_fisher():
    """Fisher of every group of `branchy` after two eval-mode steps, as FisherSaliency scores
    it and as the definition gives it."""
    spec = spec_of("cnn_zoo:branchy")
    assert set(spec.names) == set(cnn_zoo.BRANCHY_PRODUCERS)
    widths = dict(zip(spec.names, spec.mids))
    g = torch.Generator().manual_seed(3)
    model = build(spec, masked=True)
    train_steps(model, 2, g, lr=0.1)     # weights and BN statistics away from their init
    model.eval()                         # samples independent; gradients still flow
    batches = [batch(g) for _ in range(2)]

    reference, per_example = {}, {}
    for x, y in batches:
        grads = _per_sample_mask_gradients(model, x, y, cnn_zoo.BRANCHY_PRODUCERS, widths)
        for name, s in grads.items():
            reference[name] = reference.get(name, 0) + 0.5 * s.pow(2).mean(0)
        # The same from one sample at a time, its own loss (not divided by the batch size).
        for n in range(BATCH):
            own = _per_sample_mask_gradients(model, x[n:n + 1], y[n:n + 1],
                                             cnn_zoo.BRANCHY_PRODUCERS, widths)
            for name, s in own.items():
                torch.testing.assert_close(s[0] / BATCH, grads[name][n], rtol=1e-4,
                                           atol=1e-8)
                per_example.setdefault(name, []).append(s[0])

    pruner = Pruner(model, FisherSaliency())
    units = prunable_units(model)
    for x, y in batches:
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    scores = dict(zip(spec.names, pruner.saliency.scores(units)))
    increase = dict(zip(spec.names, pruner.saliency.loss_increase(units)))
    # Delta = 1/(2N) sum_n g_n^2 over the N = 8 examples seen, g_n the example's own gradient.
    delta = {name: 0.5 * torch.stack(gs).pow(2).mean(0) for name, gs in per_example.items()}
    return reference, scores, delta, increase


# cat.left.0 and cat.right.0 share a producer (the depthwise BN dw.1 after the concatenation):
# each group's Fisher must see that layer's a * g.
@pytest.mark.parametrize("group", list(cnn_zoo.BRANCHY_PRODUCERS))
def test_fisher_is_half_the_mean_squared_per_sample_mask_gradient(group):
    """Theis et al.: s_nc = dL/dm_c for sample n with the mask applied at every producer of
    the channel (both branches of a residual add; the concatenation's BN and the depthwise
    BN after it), a step scores 0.5 * mean_n s_nc^2 (L the batch-mean loss), and steps add
    up; `loss_increase` is 0.5 * mean_n of each example's own gradient squared, over the
    examples seen."""
    reference, scores, delta, increase = _branchy_fisher()
    assert float(reference[group].max()) > 0
    torch.testing.assert_close(scores[group], reference[group], rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(increase[group], delta[group], rtol=1e-4, atol=1e-12)


def test_fisher_of_a_layer_called_twice_is_the_definition():
    spec = spec_of("cnn_zoo:shared")
    widths = dict(zip(spec.names, spec.mids))
    # The one group: the stem's channels, which the shared conv reads and writes (twice).
    producers = {spec.names[0]: [("stem.1", 0), ("block", 0)]}
    g = torch.Generator().manual_seed(4)
    model = build(spec, masked=True).eval()
    x, y = batch(g)
    s = _per_sample_mask_gradients(model, x, y, producers, widths)[spec.names[0]]
    pruner = Pruner(model, FisherSaliency())
    F.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(pruner.saliency.scores(prunable_units(model))[0],
                               0.5 * s.pow(2).mean(0), rtol=1e-4, atol=1e-12)


# -- 3. the classifier is never a group ------------------------------------------------------------

@pytest.mark.parametrize("arch, num_classes, classifier", [
    ("cnn_zoo:conv_classifier", 7, "classifier.1"),
    ("torchvision:squeezenet1_0", 10, "classifier.1"),
])
def test_a_conv_classifier_is_never_pruned(arch, num_classes, classifier):
    spec = spec_of(arch, num_classes=num_classes)
    assert classifier not in spec.names
    g = torch.Generator().manual_seed(5)
    model = build(spec, masked=True)
    assert isinstance(dict(model.named_modules())[classifier], nn.Conv2d)
    for group in prunable_units(model):
        mask = torch.zeros(group.mid)
        mask[int(torch.randint(group.mid, (1,), generator=g))] = 1
        group.set_mask(mask)
    train_steps(model, 1, g)
    compact = compress(model)
    assert compact.spec.mids == (1,) * len(spec.names)
    assert dict(compact.named_modules())[classifier].out_channels == num_classes
    x, _ = batch(g)
    with torch.no_grad():
        out = compact.eval()(x)
        assert out.shape == (BATCH, num_classes)
        assert_close(out, model.eval()(x))
    assert numel(compact) == count(compact.spec, SIZE).params


# -- 4. refused in one line ------------------------------------------------------------------------

@pytest.mark.parametrize("arch, fragments", [
    ("torchvision:resnext50_32x4d", ("layer1.0.conv2", "grouped")),
    ("torchvision:shufflenet_v2_x0_5", ("dependency graph cannot be built",)),
    ("cnn_zoo:grouped", ("mix.0", "grouped", "groups=2")),
])
def test_unsupported_networks_are_refused_in_one_line(arch, fragments):
    with pytest.raises(ArchError) as info:
        make_spec(arch)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


# -- 5. a description cannot make us run code ------------------------------------------------------

def test_a_module_not_allowed_is_never_imported(monkeypatch):
    monkeypatch.delenv(ALLOWED)
    monkeypatch.delitem(sys.modules, "cnn_zoo")
    with pytest.raises(ArchError, match="not allowed") as info:
        make_spec("cnn_zoo:branchy", num_classes=3)   # a key no other test has traced
    assert "\n" not in str(info.value)
    assert "cnn_zoo" not in sys.modules
    # A prefix of an allowed name allows nothing.
    monkeypatch.setenv(ALLOWED, "cnn_zo,cnn_zoo.sub")
    with pytest.raises(ArchError, match="not allowed"):
        make_spec("cnn_zoo:branchy", num_classes=3)
    assert "cnn_zoo" not in sys.modules
    monkeypatch.setenv(ALLOWED, "something_else,cnn_zoo")
    spec = make_spec("cnn_zoo:branchy", num_classes=3)
    assert "cnn_zoo" in sys.modules and spec.num_classes == 3


@pytest.mark.parametrize("allowed", [None, "cnn_zoo"])
def test_a_stored_description_naming_os_system_runs_nothing(tmp_path, monkeypatch, allowed):
    if allowed is None:
        monkeypatch.delenv(ALLOWED)
    marker = tmp_path / "x"
    text = json.dumps({"builder": "os:system", "args": {"command": f"touch {marker}"},
                       "num_classes": 10, "input_size": [3, 32, 32], "groups": "all",
                       "widths": [["conv", 4]]})
    spec = ArchSpec.from_json(text)
    assert isinstance(spec, GraphSpec) and spec.builder == "os:system"
    for use in (lambda: build(spec), lambda: build(spec, masked=True),
                lambda: count(spec, SIZE), lambda: spec.full_mids(), lambda: build_sliced(spec),
                lambda: make_spec("os:system", args={"command": f"touch {marker}"})):
        with pytest.raises(ArchError, match="not allowed") as info:
            use()
        assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("arch", ["cnn_zoo:branchy", "torchvision:resnet18"])
def test_arguments_the_factory_does_not_take_are_named(arch):
    with pytest.raises(ArchError, match="colour") as info:
        make_spec(arch, args={"colour": "red"})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch, fragment, cls", [
    ("cnn_zoo:broken", "boom", "RuntimeError"),
    ("cnn_zoo:not_a_module", "not an nn.Module", "int"),
    ("cnn_zoo:no_such_factory", "no function or class", "no_such_factory"),
])
def test_a_factory_that_fails_is_refused_with_its_message(arch, fragment, cls):
    with pytest.raises(ArchError) as info:
        make_spec(arch)
    message = str(info.value)
    assert "\n" not in message and fragment in message and cls in message


def test_an_input_too_small_is_refused():
    spec = spec_of("vgg", 16)
    with pytest.raises(ArchError) as info:
        count(spec, (2, 2))
    assert info.value.field == "input_size" and "\n" not in str(info.value)
    tiny = dataclasses.replace(spec, input_size=(3, 2, 2))
    with pytest.raises(ArchError) as info:
        build(tiny)
    assert info.value.field == "input_size" and "\n" not in str(info.value)


def test_widths_that_do_not_match_the_groups_are_refused():
    spec = spec_of("cnn_zoo:branchy")
    mids = list(spec.mids)
    bad = {
        "count": lambda: spec.with_mids(mids[:-1]),
        "renamed": lambda: dataclasses.replace(spec, names=("nope", *spec.names[1:])),
        "order": lambda: dataclasses.replace(spec, names=(spec.names[1], spec.names[0],
                                                          *spec.names[2:]),
                                             mids=(mids[1], mids[0], *mids[2:])),
        "wider": lambda: spec.with_mids([mids[0] + 1, *mids[1:]]),
        "empty": lambda: spec.with_mids([0, *mids[1:]]),
    }
    for what, make in bad.items():
        with pytest.raises(ArchError) as info:
            build(make(), masked=True)
        assert info.value.field == "widths", what
        assert "\n" not in str(info.value)
    with pytest.raises(ArchError, match="nope"):
        build(bad["renamed"]())


# -- 6. fresh and sliced init ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["cnn_zoo:branchy", "torchvision:resnet18",
                                  "torchvision:mobilenet_v2", "torchvision:efficientnet_b0"])
def test_fresh_and_sliced_init_have_the_compressed_shapes(arch):
    spec = spec_of(arch)
    half = spec.with_mids(max(1, m // 2) for m in spec.mids)
    masked = build(spec, masked=True)
    for group, width in zip(prunable_units(masked), half.mids):
        mask = torch.zeros(group.mid)
        mask[:width] = 1
        group.set_mask(mask)
    compact = compress(masked)
    fresh, sliced = build(half), build_sliced(half)
    assert compact.spec == fresh.spec == sliced.spec == half
    shapes = {k: v.shape for k, v in compact.state_dict().items()}
    assert {k: v.shape for k, v in fresh.state_dict().items()} == shapes
    assert {k: v.shape for k, v in sliced.state_dict().items()} == shapes
    assert numel(fresh) == numel(sliced) == count(half, SIZE).params
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert fresh.eval()(x).shape == sliced.eval()(x).shape == (2, spec.num_classes)


def test_fresh_init_is_the_builders_at_the_new_widths_sliced_the_full_networks():
    """torchvision's ResNet draws conv weights from kaiming_normal(fan_out): std
    sqrt(2 / (out_channels * 9)) for a 3x3 conv. Fresh init sees the narrowed out_channels;
    sliced init is the full network's weights, cut."""
    spec = spec_of("torchvision:resnet18")
    name = "layer3.0.conv1"
    full_out = dict(zip(spec.names, spec.mids))[name]
    half = spec.with_mids(max(1, m // 2) for m in spec.mids)
    torch.manual_seed(7)
    sliced = build_sliced(half)
    torch.manual_seed(7)
    full = build(spec)
    torch.manual_seed(8)
    fresh = build(half)
    w_fresh = dict(fresh.named_modules())[name].weight.detach()
    w_sliced = dict(sliced.named_modules())[name].weight.detach()
    out, cin = w_fresh.shape[:2]
    assert out == full_out // 2 and w_sliced.shape == w_fresh.shape

    def kaiming(out_channels: int) -> float:
        return math.sqrt(2.0 / (out_channels * 9))
    assert float(w_fresh.std()) == pytest.approx(kaiming(out), rel=0.15)
    assert float(w_sliced.std()) == pytest.approx(kaiming(full_out), rel=0.15)
    # Sliced keeps the full network's first channels (its groups' first channels here).
    w_full = dict(full.named_modules())[name].weight.detach()
    assert torch.equal(w_sliced, w_full[:out, :cin])


# -- 7. JSON --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch, depth", [("resnet", 20), ("torchvision:resnet18", None),
                                         ("cnn_zoo:branchy", None)])
def test_json_round_trip(arch, depth):
    spec = spec_of(arch, depth)
    narrower = spec.with_mids(max(1, m - 1) for m in spec.mids)
    for s in (spec, narrower):
        text = s.to_json()
        assert ArchSpec.from_json(text) == s
        assert GraphSpec.from_json(text) == s
        data = json.loads(text)
        assert data["builder"] == arch
        assert data["args"] == ({} if depth is None else {"depth": depth})
        assert data["input_size"] == [3, 32, 32]
        assert data["groups"] == s.groups
        assert data["widths"] == [[n, m] for n, m in zip(s.names, s.mids)]
        assert data["num_classes"] == 10


# -- bugs found ---------------------------------------------------------------------------------------

def test_a_layer_called_twice_is_counted_twice():
    model = build(spec_of("cnn_zoo:shared"))
    assert_counted(model)


def test_a_network_whose_masked_channel_is_not_removed_is_refused_up_front():
    """A sigmoid between a BN and the next conv reads a masked channel as 0.5: masking would
    not be pruning, so the network is refused when it is described, naming the group."""
    with pytest.raises(ArchError, match="group stem.0 cannot be pruned by masking") as err:
        make_spec("cnn_zoo:gated")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("spec", [arch_module.wrn(depth=16, width=1),
                                  arch_module.densenet(depth=16, growth=6),
                                  arch_module.wrn(depth=10, width=1).with_mids([16, 0, 20])],
                         ids=["wrn-16-1", "densenet-bc-16-6", "wrn-10-1-a-block-vanished"])
def test_the_seed_families_closed_form_counts_agree_with_torch_flop_counter(spec):
    """The seed's networks keep their closed-form counts; torch's own counter on the built
    network says the same, as it does for every traced network above."""
    model = build(spec)
    assert count(spec, SIZE).params == sum(p.numel() for p in model.parameters())
    assert 2 * count(spec, SIZE).flops == flop_counter_total(model)
