import io

import pytest
import torch

from mlprunes.counting import count
from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import apply_history, compress, masks_from_history, spec_after


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Non-trivial BN affine and running statistics, so that slicing mistakes would show."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)


def random_history(spec, generator, empty_blocks=(0,)):
    """A random prune history that empties the given blocks entirely and prunes about half of
    the remaining channels."""
    offsets = [0]
    for m in spec.mids:
        offsets.append(offsets[-1] + m)
    history = []
    empty_blocks = [b % spec.num_blocks for b in empty_blocks]
    for b in empty_blocks:
        history.extend(range(offsets[b], offsets[b + 1]))
    history = list(dict.fromkeys(history))
    rest = [i for i in range(spec.prunable_channels) if i not in set(history)]
    order = torch.randperm(len(rest), generator=generator).tolist()
    history.extend(rest[j] for j in order[: len(rest) // 2])
    return history


@pytest.mark.parametrize("empty_blocks", [(), (0,), (0, 1, -1)])
def test_masked_equals_compressed(tiny_spec, empty_blocks):
    g = torch.Generator().manual_seed(3)
    model = build(tiny_spec, masked=True)
    randomise(model, g)
    history = random_history(tiny_spec, g, empty_blocks)
    apply_history(model, history)
    model.eval()
    compact = compress(model)

    expected = spec_after(tiny_spec, history)
    assert compact.spec == expected
    for b in empty_blocks:
        assert expected.mids[b % tiny_spec.num_blocks] == 0
    assert sum(p.numel() for p in compact.parameters()) == count(expected).params
    assert count(expected).params < count(tiny_spec).params

    x = torch.randn(4, 3, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)


def test_everything_pruned_still_runs(tiny_spec):
    model = build(tiny_spec, masked=True).eval()
    apply_history(model, range(tiny_spec.prunable_channels))
    compact = compress(model)
    assert all(m == 0 for m in compact.spec.mids)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-5, atol=1e-5)


def test_masks_save_and_load_with_the_model(tiny_spec):
    model = build(tiny_spec, masked=True)
    history = [0, 3, 5]
    apply_history(model, history)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = build(tiny_spec, masked=True)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    masks = [b.mask for b in prunable_blocks(restored)]
    for got, want in zip(masks, masks_from_history(tiny_spec, history)):
        assert torch.equal(got, want)


def test_compress_refuses_an_unmasked_model(tiny_spec):
    with pytest.raises(ValueError, match="masked model"):
        compress(build(tiny_spec))


def test_masked_equals_compressed_in_training_mode(tiny_spec):
    """Folding the mask into bn2 keeps train-mode forward, BN statistics and gradients equal
    to those of the compressed network on the surviving channels."""
    g = torch.Generator().manual_seed(5)
    model = build(tiny_spec, masked=True)
    randomise(model, g)
    apply_history(model, random_history(tiny_spec, g, (0,)))
    compact = compress(model).train()
    model.train()
    x = torch.randn(6, 3, 16, 16, generator=g)
    torch.testing.assert_close(compact(x), model(x), rtol=1e-4, atol=1e-5)
    # The next eval pass uses the updated running statistics: still equal.
    model.eval()
    compact.eval()
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), rtol=1e-4, atol=1e-5)
    # Pruned channels get no gradient through bn2.
    model.train()
    model(x).sum().backward()
    for block in prunable_blocks(model):
        if block.mid:
            dead = block.mask == 0
            assert torch.all(block.bn2.weight.grad[dead] == 0)
            assert torch.all(block.conv1.weight.grad[dead] == 0)


def test_sliced_init_is_a_full_network_init_cut_to_the_pruned_widths():
    from mlprunes import arch
    from mlprunes.nets.prunable import PrunableBlock
    from mlprunes.pruning import build_sliced

    full_spec = arch.wrn(16, 1)
    spec = full_spec.with_mids([3, 16, 0, 20, 64, 1])
    torch.manual_seed(7)
    sliced = build_sliced(spec)
    assert sliced.spec == spec and count(spec).params == sum(
        p.numel() for p in sliced.parameters())
    torch.manual_seed(7)
    full = build(full_spec, masked=True)
    state = full.state_dict()
    blocks = [name for name, m in full.named_modules() if isinstance(m, PrunableBlock)]
    for (key, value) in sliced.state_dict().items():
        expected = state[key]
        block = next((b for b in blocks if key.startswith(b + ".")), None)
        local = key[len(block) + 1:] if block else ""
        if local in PrunableBlock.MIDDLE_AXES:
            width = spec.mids[blocks.index(block)]
            expected = expected.narrow(PrunableBlock.MIDDLE_AXES[local], 0, width)
        assert torch.equal(value, expected), key
    torch.manual_seed(7)
    fresh = build(spec)   # initialised for its own widths: another network
    assert not torch.equal(fresh.state_dict()["blocks.0.conv1.weight"],
                           sliced.state_dict()["blocks.0.conv1.weight"])
    with pytest.raises(ValueError, match="wider than"):
        build_sliced(full_spec.with_mids([17, 16, 32, 32, 64, 64]))


def test_a_training_run_builds_its_network_and_loader_as_its_options_say():
    from mlprunes import arch
    from mlprunes.engine.recipes import preset
    from mlprunes.engine.trainer import seed_everything
    from mlprunes.jobs import DataConfig, RunConfig
    from mlprunes.pruning import build_sliced
    from mlprunes.stages.trained import Training, prepare

    spec = arch.wrn(10, 1).with_mids([5, 0, 40])
    data = DataConfig(dataset="shapes", image_size=8, shapes_train=128, shapes_test=32)
    recipe = preset("wrn").override(epochs=1, batch_size=32)
    prepared = prepare(Training(spec, recipe, data, RunConfig(seed=3, progress=False),
                                "scratch", init="sliced"))
    seed_everything(3)
    expected = build_sliced(spec).state_dict()
    got = prepared.trainer.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    assert prepared.loaders.train.pad_mode == recipe.pad == "reflect"
