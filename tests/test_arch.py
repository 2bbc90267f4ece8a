import json

import pytest
import torch
from torch import nn

from mlprunes import arch
from mlprunes.arch import ArchError, ArchSpec
from mlprunes.counting import count
from mlprunes.nets import build


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measured_macs(model: nn.Module, image_size: tuple[int, int]) -> int:
    """MACs of every conv and linear layer, read off a real forward pass."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += (module.in_channels // module.groups) * kh * kw * output.numel()

    def linear_hook(module, inputs, output):
        nonlocal total
        total += module.in_features * output.numel()

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, *image_size))
    return total


def test_paper_parameter_counts():
    assert count(arch.wrn(40, 2)).params == 2_243_546
    assert count(arch.densenet(100, 12)).params == 769_162
    assert numel(build(arch.wrn(40, 2))) == 2_243_546
    assert numel(build(arch.densenet(100, 12), masked=True)) == 769_162


def test_paper_prunable_channels():
    assert arch.wrn(40, 2).prunable_channels == 6 * 32 + 6 * 64 + 6 * 128 == 1344
    assert arch.densenet(100, 12).prunable_channels == 48 * 48 == 2304


def random_mids(spec: ArchSpec, generator: torch.Generator) -> ArchSpec:
    """Random middle widths, with some blocks at zero and some at full width."""
    mids = []
    for i, full in enumerate(spec.full_mids()):
        choice = i % 3
        mids.append(0 if choice == 0 else full if choice == 1
                    else int(torch.randint(1, full + 1, (1,), generator=generator)))
    return spec.with_mids(mids)


@pytest.mark.parametrize("image_size", [(32, 32), (15, 15), (12, 20)])
def test_counts_match_built_model(tiny_spec, image_size):
    g = torch.Generator().manual_seed(1)
    for spec in (tiny_spec, random_mids(tiny_spec, g), tiny_spec.with_mids([0] * tiny_spec.num_blocks)):
        counts = count(spec, image_size)
        model = build(spec)
        assert counts.params == numel(model)
        assert counts.flops == measured_macs(model, image_size)


def test_wrn_block_layout_and_shortcuts():
    model = build(arch.wrn(16, 2))
    blocks = list(model.blocks)
    # First block of each stage changes shape and so has the 1x1 strided shortcut conv.
    assert [b.shortcut is not None for b in blocks] == [True, False] * 3
    assert [b.conv1.stride for b in blocks[::2]] == [(1, 1), (2, 2), (2, 2)]
    assert blocks[2].shortcut.stride == (2, 2) and blocks[2].shortcut.kernel_size == (1, 1)


def test_init_follows_paper():
    model = build(arch.wrn(40, 4))
    conv = model.blocks[12].conv2  # 256 -> 256, 3x3
    expected_std = (2.0 / (9 * 256)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
    assert torch.all(model.blocks[3].bn2.weight == 1) and torch.all(model.blocks[3].bn2.bias == 0)
    assert torch.all(model.fc.bias == 0)


def test_any_input_size_gives_logits(tiny_spec):
    model = build(tiny_spec).eval()
    for size in (8, 17, 40):
        assert model(torch.randn(2, 3, size, size)).shape == (2, tiny_spec.num_classes)


def test_bottleneck_sets_every_middle_width():
    spec = arch.wrn(16, 2, bottle=0.25)
    assert spec.mids == (8, 8, 16, 16, 32, 32)
    spec = arch.densenet(16, 12, bottle=0.5)
    assert spec.mids == (24,) * 6
    assert count(spec).params == numel(build(spec))


def test_json_round_trip():
    for spec in (arch.wrn(16, 1.5, num_classes=100), arch.densenet(22, 8, bottle=0.5)):
        text = spec.to_json()
        assert ArchSpec.from_json(text) == spec
        assert json.loads(text)["mids"] == list(spec.mids)
    # 2.0 and 2 are one network with one JSON form.
    assert arch.wrn(40, 2.0).to_json() == arch.wrn(40, 2).to_json()


@pytest.mark.parametrize("make, field, fragment", [
    (lambda: arch.wrn(depth=41), "depth", "6n+4"),
    (lambda: arch.wrn(depth=4), "depth", "6n+4"),
    (lambda: arch.densenet(depth=101), "depth", "DenseNet-BC depth must be 6n+4"),
    (lambda: arch.wrn(depth=40, width=0), "width", "positive"),
    (lambda: arch.wrn(depth=40, width=-1), "width", "positive"),
    (lambda: arch.wrn(depth=40, width=0.01), "width", "too small"),
    (lambda: arch.densenet(depth=40, growth=0), "growth", "positive"),
    (lambda: arch.densenet(depth=40, reduction=1.5), "reduction", "(0, 1]"),
    (lambda: arch.wrn(num_classes=0), "num_classes", "positive"),
    (lambda: arch.wrn(bottle=0), "bottle", "positive"),
    (lambda: arch.wrn(depth=16).with_mids([32] * 5), "mids", "one width per prunable block"),
    (lambda: arch.wrn(depth=16).with_mids([32, 32, 64, -1, 128, 128]), "mids", ">= 0"),
    (lambda: ArchSpec(family="resnet", depth=16, num_classes=10), "family", "wrn, densenet"),
    (lambda: ArchSpec.from_dict({"family": "wrn", "depth": 16, "num_classes": 10}), "mids",
     "missing"),
    (lambda: ArchSpec.from_dict({**arch.wrn(16).to_dict(), "colour": "red"}), "colour",
     "unknown"),
    (lambda: ArchSpec.from_json("{not json"), "json", "not valid JSON"),
    (lambda: arch.make_spec("wrn", growth=12), "growth", "densenet only"),
])
def test_invalid_descriptions_name_the_field(make, field, fragment):
    with pytest.raises(ArchError) as info:
        make()
    assert info.value.field == field
    assert str(info.value).startswith(f"invalid architecture: {field}: ")
    assert fragment in str(info.value)
