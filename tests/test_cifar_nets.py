"""The plain CIFAR ResNet and VGG builders: sizes, shapes, init, and that Torch-Pruning can
find and prune their channel groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlprunes.nets.resnet import cifar_resnet, init_resnet
from mlprunes.nets.vgg import cifar_vgg, init_vgg


def n_params(model: nn.Module) -> int:
    # Parameters only: BN weight and bias count, running statistics (buffers) do not.
    return sum(p.numel() for p in model.parameters())


# Option-A (parameter-free) shortcuts. By hand for ResNet-(6n+2), 10 classes:
#   stem 3*16*9 + 2*16 = 464, fc 64*10 + 10 = 650,
#   each block c_in -> c: 9*c_in*c + 9*c*c + 4*c (two convs, two BNs),
#   so ResNet-20 = 464 + 14,016 + 51,072 + 203,520 + 650 = 269,722.
# The often-quoted 272,474 (ResNet-20) and 1,730,714 (ResNet-110) are 2,752 more: they are
# option-B counts, with a 1x1 conv + BN projection at the two transitions,
# (16*32 + 2*32) + (32*64 + 2*64) = 576 + 2,176 = 2,752.
OPTION_B_EXTRA = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


@pytest.mark.parametrize("depth, expected", [(20, 269_722), (56, 853_018), (110, 1_727_962)])
def test_resnet_parameter_count(depth, expected):
    assert n_params(cifar_resnet(depth)) == expected


def test_quoted_resnet_counts_are_option_b():
    assert n_params(cifar_resnet(20)) + OPTION_B_EXTRA == 272_474
    assert n_params(cifar_resnet(110)) + OPTION_B_EXTRA == 1_730_714


def test_vgg16_parameter_count():
    # Convs (3x3, no bias): 9 * (3*64 + 64*64 + 64*128 + 128*128 + 128*256 + 2*256*256
    #   + 256*512 + 5*512*512) = 9 * 1,634,496 = 14,710,464.
    # BNs, 2 per channel: 2 * (2*64 + 2*128 + 3*256 + 6*512) = 2 * 4,224 = 8,448.
    # Linear 512*10 + 10 = 5,130.  Total 14,724,042.
    convs = 9 * (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 2 * 256 * 256
                 + 256 * 512 + 5 * 512 * 512)
    bns = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)
    assert convs + bns + 512 * 10 + 10 == 14_724_042
    assert n_params(cifar_vgg(16)) == 14_724_042


@pytest.mark.parametrize("build", [
    lambda: cifar_resnet(20, num_classes=7),
    lambda: cifar_resnet(8, num_classes=7, width=0.5),
    lambda: cifar_vgg(11, num_classes=7),
])
@pytest.mark.parametrize("size", [32, 16])
def test_output_shape(build, size):
    model = build().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


# Not 50: 50 = 6 * 8 + 2 is a valid depth.
@pytest.mark.parametrize("depth", [18, 34, 51, 2, 0, -4, 56.0, "56", True])
def test_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match=r"6n\+2 with n >= 1 .*got") as e:
        cifar_resnet(depth)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("depth", [10, 15, 16.0, "16"])
def test_vgg_bad_depth(depth):
    with pytest.raises(ValueError, match="one of 11, 13, 16, 19, got") as e:
        cifar_vgg(depth)
    assert "\n" not in str(e.value)


def test_names():
    resnet = cifar_resnet(20)
    for name in ("conv1", "bn1", "layer1.0.conv1", "layer2.0.bn1", "layer3.2.conv2",
                 "layer3.2.bn2", "fc"):
        resnet.get_submodule(name)
    vgg = cifar_vgg(16)
    assert isinstance(vgg.features, nn.Sequential) and isinstance(vgg.classifier, nn.Linear)


def test_resnet_init():
    model = cifar_resnet(20)
    conv = model.layer3[1].conv1  # 64 * 64 * 9 weights
    expected = math.sqrt(2.0 / (9 * 64))  # kaiming, fan_out = 64 * 3 * 3
    assert abs(conv.weight.std().item() / expected - 1) < 0.1
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # init_resnet is reusable on its own, and leaves the linear layer alone.
    before = model.fc.weight.clone()
    nn.init.zeros_(model.bn1.weight)
    init_resnet(model)
    assert torch.all(model.bn1.weight == 1) and torch.equal(model.fc.weight, before)


def test_vgg_init():
    model = cifar_vgg(11)
    conv = model.features[-3]  # 512 * 512 * 9 weights
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 512
    expected = math.sqrt(2.0 / (9 * 512))
    assert abs(conv.weight.std().item() / expected - 1) < 0.1
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 0.5) and torch.all(m.bias == 0)
    assert abs(model.classifier.weight.std().item() / 0.01 - 1) < 0.1
    assert torch.all(model.classifier.bias == 0)
    nn.init.ones_(model.classifier.bias)
    init_vgg(model)
    assert torch.all(model.classifier.bias == 0)


# --- Torch-Pruning ---------------------------------------------------------------------------

def dependency_graph(model: nn.Module, size: int = 32):
    tp = pytest.importorskip("torch_pruning")
    return tp, tp.DependencyGraph().build_dependency(
        model, example_inputs=torch.randn(1, 3, size, size))


def module_members(group) -> set[tuple[str, str]]:
    """(module name, handler) for the group's real layers, leaving out Torch-Pruning's
    stand-ins for functional ops (relu, add, ...)."""
    return {(dep.target.name.split(" ")[0], dep.handler.__name__) for dep, _ in group
            if not type(dep.target.module).__name__.startswith("_")}


def forward_ok(model: nn.Module, num_classes: int = 10) -> None:
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, num_classes)


def test_resnet_block_groups_are_internal():
    model = cifar_resnet(20).eval()
    tp, graph = dependency_graph(model)
    blocks = [(f"layer{s}.{b}", block) for s in (1, 2, 3)
              for b, block in enumerate(model.get_submodule(f"layer{s}"))]
    for name, block in blocks:
        group = graph.get_pruning_group(block.conv1, tp.prune_conv_out_channels, idxs=[0, 1])
        assert module_members(group) == {
            (f"{name}.conv1", "prune_out_channels"),
            (f"{name}.bn1", "prune_out_channels"),
            (f"{name}.conv2", "prune_in_channels"),
        }, name
        group.prune()
    forward_ok(model)
    assert all(block.conv1.weight.shape[0] == block.conv2.weight.shape[1] for _, block in blocks)


def test_resnet_prunes_half_of_a_block():
    model = cifar_resnet(20).eval()
    tp, graph = dependency_graph(model)
    conv = model.layer2[0].conv1
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(16))).prune()
    assert conv.weight.shape[0] == 16 and model.layer2[0].bn1.weight.shape[0] == 16
    assert model.layer2[0].conv2.weight.shape[1] == 16
    forward_ok(model)


def test_resnet_residual_stream_prunes_through_option_a():
    # Stage-1 channel i reaches stage 2 and 3 as channel i (zeros padded after), so Torch-Pruning
    # prunes the whole stream, and fc, by the same indices.
    model = cifar_resnet(20).eval()
    tp, graph = dependency_graph(model)
    graph.get_pruning_group(model.conv1, tp.prune_conv_out_channels, idxs=[0, 5, 15]).prune()
    assert model.conv1.weight.shape[0] == 13
    assert model.layer2[2].conv2.weight.shape[0] == 29
    assert model.layer3[2].conv2.weight.shape[0] == 61
    assert model.fc.weight.shape[1] == model.fc.in_features == 61
    forward_ok(model)


def test_vgg_prunes_half_of_a_layer():
    model = cifar_vgg(16).eval()
    tp, graph = dependency_graph(model)
    first = model.features[0]
    group = graph.get_pruning_group(first, tp.prune_conv_out_channels, idxs=list(range(32)))
    assert module_members(group) == {
        ("features.0", "prune_out_channels"),
        ("features.1", "prune_out_channels"),
        ("features.3", "prune_in_channels"),
    }
    group.prune()
    assert first.weight.shape[0] == 32 and model.features[3].weight.shape[1] == 32
    forward_ok(model)


def test_vgg_last_layer_prunes_the_classifier():
    model = cifar_vgg(11).eval()
    tp, graph = dependency_graph(model, size=16)
    last = model.features[-3]
    graph.get_pruning_group(last, tp.prune_conv_out_channels, idxs=list(range(256))).prune()
    assert model.classifier.weight.shape[1] == model.classifier.in_features == 256
    forward_ok(model)
