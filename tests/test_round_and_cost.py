"""Channel rounding (--round-to R) and cost-aware Fisher (--flops-penalty BETA)."""

import pytest
import torch
import torch.nn.functional as F

from mlprunes import arch
from mlprunes.counting import count, count_params, scale_to_budget
from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import (FisherSaliency, L1Saliency, Pruner, PruningError, RandomSaliency,
                              compress, spec_after)
from mlprunes.pruning.history import block_offsets
from mlprunes.pruning.saliency import Saliency

ROUNDED = {"wrn": arch.wrn(10, 1, num_classes=5),                     # widths 16, 32, 64
           "densenet": arch.densenet(16, 4, num_classes=5)}           # widths 16 (4k)


@pytest.mark.parametrize("family", sorted(ROUNDED))
@pytest.mark.parametrize("criterion", [L1Saliency, lambda: RandomSaliency(3)])
def test_every_width_stays_a_multiple_of_r_through_pruning_and_compression(family, criterion):
    spec, r = ROUNDED[family], 8
    model = build(spec, masked=True).eval()
    pruner = Pruner(model, criterion(), round_to=r)
    x = torch.randn(2, 3, 16, 16)
    for _ in range(spec.prunable_channels // r):
        removed = pruner.prune()
        assert len(removed) == r and len(set(removed)) == r
        widths = [int(b.mask.sum()) for b in prunable_blocks(model)]
        assert all(w % r == 0 for w in widths), widths
        # One block per prune: all R channels from the same block.
        offsets = block_offsets(spec)
        assert len({max(i for i, o in enumerate(offsets) if o <= c) for c in removed}) == 1
        pruned = spec_after(spec, pruner.history)
        assert list(pruned.mids) == widths
        small = compress(model)
        assert sum(p.numel() for p in small.parameters()) == count_params(pruned)
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
    assert pruner.channels_left == 0


def test_r_equal_to_one_is_the_single_channel_rule():
    spec = ROUNDED["wrn"]
    torch.manual_seed(1)
    model = build(spec, masked=True)
    scores = torch.cat(L1Saliency().scores(prunable_blocks(model)))
    assert Pruner(model, L1Saliency(), round_to=1).prune() == [int(scores.argmin())]


def test_the_block_whose_r_weakest_sum_lowest_loses_them():
    """Block 0 has the single weakest channel, block 2 the weakest four together."""
    spec = ROUNDED["wrn"]

    class Fixed(Saliency):
        def scores(self, blocks):
            out = [torch.ones(b.mid) for b in blocks]
            out[0][5] = 0.0                      # one very weak channel, others strong
            out[2][[1, 3, 6, 9]] = 0.3           # four fairly weak ones: 1.2 < 0 + 3 * 1
            return out

    model = build(spec, masked=True)
    assert Pruner(model, Fixed(), round_to=4).prune() == [
        block_offsets(spec)[2] + c for c in (1, 3, 6, 9)]
    assert Pruner(build(spec, masked=True), Fixed(), round_to=1).prune() == [5]


def test_widths_that_are_not_multiples_are_refused_with_the_fix():
    spec = ROUNDED["wrn"].with_mids([12, 32, 64])
    with pytest.raises(PruningError, match=r"multiple of 8.*block\(s\) \[0\].*\[12\].*--round-to"):
        Pruner(build(spec, masked=True), L1Saliency(), round_to=8)


def test_keep_one_keeps_r_channels_per_block():
    spec = ROUNDED["wrn"]
    model = build(spec, masked=True)
    pruner = Pruner(model, RandomSaliency(0), keep_one=True, round_to=8)
    for _ in range((spec.prunable_channels - 8 * spec.num_blocks) // 8):
        pruner.prune()
    assert [int(b.mask.sum()) for b in prunable_blocks(model)] == [8] * spec.num_blocks
    with pytest.raises(PruningError, match="down to 8 channels"):
        pruner.prune()


def test_rounded_specs_and_scaled_families_are_multiples_of_r():
    spec = arch.wrn(40, 2, bottle=0.3)                      # widths 9, 19, 38: irregular
    assert set(spec.mids) == {9, 19, 38}
    assert set(spec.rounded(8).mids) == {8, 16, 40}          # nearest multiple
    assert arch.wrn(10, 1).with_mids([0, 3, 5]).rounded(8).mids == (0, 8, 8)  # 0 stays, >0 >= R
    with pytest.raises(arch.ArchError, match="round_to"):
        spec.rounded(0)
    profile = arch.wrn(40, 2).with_mids([16, 8, 24, 32, 0, 8] * 3)
    for budget in (100_000, 300_000, 900_000):
        member = scale_to_budget(profile, budget, round_to=8)
        assert all(m % 8 == 0 for m in member.mids)
        assert count_params(member) <= budget
        bigger = member.with_mids(m + 8 if m else 0 for m in member.mids)
        assert count_params(bigger) > budget or bigger.mids == member.mids


# -- cost-aware Fisher ---------------------------------------------------------------------

class Tied(Saliency):
    """Every channel equally salient: only the FLOP term can decide."""
    name = "tied"

    def scores(self, blocks):
        return [torch.full((b.mid,), 0.01) for b in blocks]

    def loss_increase(self, blocks):
        return self.scores(blocks)


@pytest.mark.parametrize("family", sorted(ROUNDED))
def test_cost_aware_fisher_prunes_the_channel_that_saves_most_when_saliencies_tie(family):
    spec, size = ROUNDED[family], (32, 32)
    now = count(spec, size).cost_flops

    def saved(block):
        widths = list(spec.mids)
        widths[block] -= 1
        return now - count(spec.with_mids(widths), size).cost_flops

    savings = [saved(b) for b in range(spec.num_blocks)]
    cheapest = max(range(spec.num_blocks), key=savings.__getitem__)
    assert savings[cheapest] > min(savings)      # the blocks do differ in cost
    [index] = Pruner(build(spec, masked=True), Tied(), flops_penalty=0.1,
                     image_size=size).prune()
    assert block_offsets(spec)[cheapest] <= index < block_offsets(spec)[cheapest] + \
        spec.mids[cheapest]
    # Without the penalty the tie goes to the first channel, as the paper's argmin does.
    assert Pruner(build(spec, masked=True), Tied()).prune() == [0]


def test_the_penalty_trades_saliency_against_flops_by_beta():
    """Block 2's channels (8x8 maps) are slightly less salient; block 0's (32x32) save five
    times the FLOPs. A small beta keeps saliency's choice, a large one takes the channel that
    saves more."""
    spec, size = ROUNDED["wrn"], (32, 32)

    class Slight(Tied):
        def scores(self, blocks):
            out = [torch.full((b.mid,), 0.01) for b in blocks]
            out[2] -= 1e-6
            return out

    def first(beta):
        return Pruner(build(spec, masked=True), Slight(), flops_penalty=beta,
                      image_size=size).prune()[0]

    assert first(1e-6) >= block_offsets(spec)[2]
    assert first(10.0) < block_offsets(spec)[1]


def test_the_penalty_needs_a_loss_estimate_and_an_image_size():
    model = build(ROUNDED["wrn"], masked=True)
    with pytest.raises(ValueError, match="l1 criterion estimates none"):
        Pruner(model, L1Saliency(), flops_penalty=0.1, image_size=(32, 32))
    with pytest.raises(ValueError, match="image size"):
        Pruner(model, FisherSaliency(), flops_penalty=0.1)


def test_fisher_loss_increase_is_theis_per_example_estimate():
    """Delta_k = 1/(2N) sum_n g_nk^2 with g_nk the gradient of sample n's own loss (not its
    share of the batch mean), over all N samples of two steps."""
    spec = ROUNDED["wrn"]
    model = build(spec, masked=True).eval()
    blocks = prunable_blocks(model)
    fisher = FisherSaliency()
    fisher.attach(blocks)
    steps = [(torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4,))) for _ in range(2)]
    for x, y in steps:
        F.cross_entropy(model(x), y).backward()
    got = fisher.loss_increase(blocks)
    fisher.detach()
    for b in blocks:
        b.mask.requires_grad_(True)
    squares = [[] for _ in blocks]
    for x, y in steps:
        for i in range(len(x)):
            loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])   # the sample's own loss
            for store, g in zip(squares, torch.autograd.grad(loss, [b.mask for b in blocks])):
                store.append(g.pow(2))
    for ours, theirs in zip(got, squares):
        torch.testing.assert_close(ours, 0.5 * torch.stack(theirs).mean(0), rtol=1e-4,
                                   atol=1e-10)
    fisher.reset()
    assert all(torch.all(t == 0) for t in fisher.loss_increase(blocks))


def test_cost_flops_follow_theis_formula():
    """H * W * C_out * (2 * C_in * K^2 + 1) per conv; the linear layer likewise."""
    spec = arch.wrn(10, 1, num_classes=10)
    by_hand = 0
    for m in build(spec).modules():
        if isinstance(m, torch.nn.Conv2d):
            by_hand += m.out_channels * (2 * m.in_channels * m.kernel_size[0] ** 2 + 1)
    # The same network on a 1x1 image has H = W = 1 everywhere.
    linear = 10 * (2 * 64 + 1)
    assert count(spec, 1).cost_flops == by_hand + linear


def test_a_nan_score_goes_first_and_a_group_never_holds_a_pruned_channel():
    """Diverged scores: NaN is taken as the lowest (as argmin does), and with R > 1 the group
    comes from the block's live channels only, whatever the scores of pruned ones."""
    spec = ROUNDED["wrn"]

    class Broken(Saliency):
        def scores(self, blocks):
            out = [torch.ones(b.mid) for b in blocks]
            out[1][:] = float("nan")
            return out

    model = build(spec, masked=True)
    pruner = Pruner(model, Broken(), round_to=8)
    first = pruner.prune()
    assert all(block_offsets(spec)[1] <= i < block_offsets(spec)[2] for i in first)
    for _ in range(3):                       # block 1 (32 wide) again and again, then empty
        pruner.prune()
    assert int(prunable_blocks(model)[1].mask.sum()) == 0
    assert len(set(pruner.history)) == len(pruner.history) == 32


def test_rounded_reduced_baselines_are_named_as_reductions_not_bottlenecks():
    from mlprunes.report.records import RunRecord, assign_groups

    base = arch.wrn(16, 1)
    reduced = arch.wrn(16, 0.75).rounded(8)                  # 12, 24, 48 -> 16, 24, 48
    assert reduced.mids != reduced.full_mids()
    records = [RunRecord("b", "base", "train", spec=base),
               RunRecord("p", "prune", "prune", criterion="fisher", base_run_id="b", spec=base),
               RunRecord("r", "reduced", "train", spec=reduced),
               RunRecord("z", "bottle", "train", spec=arch.wrn(16, 1, bottle=0.3))]
    groups = {r.run_id: r.group for r in assign_groups(records)}
    assert groups["r"] == "Reduced width" and groups["z"] == "Bottleneck"
