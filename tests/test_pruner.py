import pytest
import torch
import torch.nn.functional as F

from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import (FisherSaliency, L1Saliency, Pruner, PruningError, RandomSaliency,
                              apply_history, compress, masks_from_history, spec_after)


def test_refuses_to_prune_a_pruned_channel(tiny_spec):
    pruner = Pruner(build(tiny_spec, masked=True), L1Saliency())
    pruner.prune_channel(2)
    with pytest.raises(PruningError, match="channel 2 .* already pruned"):
        pruner.prune_channel(2)
    assert pruner.history == [2]


def test_refuses_an_index_out_of_range(tiny_spec):
    pruner = Pruner(build(tiny_spec, masked=True), L1Saliency())
    with pytest.raises(PruningError, match="out of range"):
        pruner.prune_channel(tiny_spec.prunable_channels)


def test_more_prunes_than_channels_is_a_clear_error(tiny_spec):
    pruner = Pruner(build(tiny_spec, masked=True), RandomSaliency(0))
    for _ in range(tiny_spec.prunable_channels):
        pruner.prune()
    assert pruner.channels_left == 0
    with pytest.raises(PruningError, match=f"all {tiny_spec.prunable_channels} prunable "
                                           "channels are already pruned"):
        pruner.prune()


def test_keep_one_never_empties_a_block(tiny_spec):
    model = build(tiny_spec, masked=True)
    pruner = Pruner(model, RandomSaliency(1), keep_one=True)
    for _ in range(tiny_spec.prunable_channels - tiny_spec.num_blocks):
        pruner.prune()
    assert [int(b.mask.sum()) for b in prunable_blocks(model)] == [1] * tiny_spec.num_blocks
    with pytest.raises(PruningError, match="down to one channel"):
        pruner.prune()


def test_by_default_blocks_may_vanish(tiny_spec):
    model = build(tiny_spec, masked=True)
    pruner = Pruner(model, L1Saliency())
    for i in range(tiny_spec.mids[0]):
        pruner.prune_channel(i)
    assert spec_after(tiny_spec, pruner.history).mids[0] == 0


def test_history_rebuilds_every_intermediate_architecture(tiny_spec):
    """Fine-tune-and-prune with Fisher; every prefix of the history gives the widths the model
    had at that point."""
    model = build(tiny_spec, masked=True)
    pruner = Pruner(model, FisherSaliency())
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(0)
    widths_seen = []
    for _ in range(12):
        for _ in range(2):
            x = torch.randn(8, 3, 12, 12, generator=g)
            y = torch.randint(0, tiny_spec.num_classes, (8,), generator=g)
            optimiser.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimiser.step()
        pruner.prune()
        widths_seen.append(tuple(int(b.mask.sum()) for b in prunable_blocks(model)))
    assert len(set(pruner.history)) == 12
    for n, widths in enumerate(widths_seen, start=1):
        assert spec_after(tiny_spec, pruner.history[:n]).mids == widths
    for got, want in zip(prunable_blocks(model), masks_from_history(tiny_spec, pruner.history)):
        assert torch.equal(got.mask, want)
    assert compress(model).spec == spec_after(tiny_spec, pruner.history)


def test_history_with_a_repeat_is_refused(tiny_spec):
    with pytest.raises(PruningError, match="step 2: channel 4 .* already pruned"):
        masks_from_history(tiny_spec, [4, 5, 4])


def test_resuming_checks_the_masks_against_the_history(tiny_spec):
    model = build(tiny_spec, masked=True)
    apply_history(model, [1, 2])
    pruner = Pruner(model, L1Saliency(), history=[1, 2])
    pruner.prune()
    assert len(pruner.history) == 3
    with pytest.raises(PruningError, match="do not match"):
        Pruner(build(tiny_spec, masked=True), L1Saliency(), history=[1, 2])


def test_pruner_needs_a_masked_model(tiny_spec):
    with pytest.raises(ValueError, match="masked model"):
        Pruner(build(tiny_spec), L1Saliency())
