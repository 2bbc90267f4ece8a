import shutil

import pytest
import torch
import torch.nn.functional as F

from mlprunes.nets import build, prunable_blocks
from mlprunes.pruning import FisherSaliency, L1Saliency, Pruner, RandomSaliency, apply_history


def batch(spec, n=6, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g),
            torch.randint(0, spec.num_classes, (n,), generator=g))


def direct_fisher(model, x, y):
    """0.5 * mean_n (dL/dmask_c for sample n)^2, one sample at a time.

    With the mask at 1, dL/dmask_c = sum_hw a * dL/da, so the gradient of each sample's share of
    the batch-mean loss with respect to the mask is exactly s_nc. Computed independently of the
    hook, by autograd on the mask itself. Eval mode, so that samples do not interact through BN.
    """
    blocks = prunable_blocks(model)
    for b in blocks:
        b.mask.requires_grad_(True)
    per_sample = [[] for _ in blocks]
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]) / len(x)
        grads = torch.autograd.grad(loss, [b.mask for b in blocks])
        for store, grad in zip(per_sample, grads):
            store.append(grad)
    for b in blocks:
        b.mask.requires_grad_(False)
    return [0.5 * torch.stack(s).pow(2).mean(0) for s in per_sample]


def fisher_of_one_step(model, x, y, autocast=False):
    fisher = FisherSaliency()
    blocks = prunable_blocks(model)
    fisher.attach(blocks)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    scores = fisher.scores(blocks)
    fisher.detach()
    return scores


def test_fisher_equals_direct_per_sample_computation(tiny_spec):
    model = build(tiny_spec, masked=True).eval()
    x, y = batch(tiny_spec)
    got = fisher_of_one_step(model, x, y)
    want = direct_fisher(model, x, y)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-12)
    # Not a vacuous comparison: the scores differ across channels.
    assert torch.cat(want).std() > 0


def test_fisher_is_not_the_squared_batch_gradient(tiny_spec):
    """The seed's shortcut (square of the batch-summed mask gradient) gives other numbers."""
    model = build(tiny_spec, masked=True).eval()
    x, y = batch(tiny_spec)
    blocks = prunable_blocks(model)
    for b in blocks:
        b.mask.requires_grad_(True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), [b.mask for b in blocks])
    for b in blocks:
        b.mask.requires_grad_(False)
    squared_sum = torch.cat([0.5 * g.pow(2) for g in grads])
    fisher = torch.cat(fisher_of_one_step(model, x, y))
    assert not torch.allclose(fisher, squared_sum, rtol=1e-2)


def test_fisher_accumulates_across_steps_and_resets():
    from tests.conftest import TINY_SPECS
    spec = TINY_SPECS["wrn"]
    model = build(spec, masked=True).eval()
    blocks = prunable_blocks(model)
    fisher = FisherSaliency()
    fisher.attach(blocks)
    steps = [batch(spec, seed=s) for s in (1, 2)]
    for x, y in steps:
        F.cross_entropy(model(x), y).backward()
    both = torch.cat(fisher.scores(blocks))
    separately = sum(torch.cat(direct_fisher(model, x, y)) for x, y in steps)
    torch.testing.assert_close(both, separately, rtol=1e-4, atol=1e-12)
    fisher.reset()
    assert torch.all(torch.cat(fisher.scores(blocks)) == 0)
    # Evaluation under no_grad adds nothing.
    with torch.no_grad():
        model(steps[0][0])
    assert torch.all(torch.cat(fisher.scores(blocks)) == 0)
    fisher.detach()
    assert all(b.activation_observer is None for b in blocks)


def test_fisher_under_autocast_is_accumulated_in_fp32(tiny_spec):
    model = build(tiny_spec, masked=True).eval()
    x, y = batch(tiny_spec)
    exact = torch.cat(fisher_of_one_step(model, x, y))
    mixed = torch.cat(fisher_of_one_step(model, x, y, autocast=True))
    assert mixed.dtype == torch.float32
    # bf16 has 8 bits of mantissa: the values agree to a few percent and rank alike.
    torch.testing.assert_close(mixed, exact, rtol=0.15, atol=exact.max().item() * 0.02)
    top = exact.argsort()[-5:]
    assert torch.corrcoef(torch.stack([mixed, exact]))[0, 1] > 0.95
    assert set(mixed.argsort()[-10:].tolist()) & set(top.tolist())


def test_fisher_ignores_pruned_channels():
    from tests.conftest import TINY_SPECS
    spec = TINY_SPECS["wrn"]
    model = build(spec, masked=True).eval()
    apply_history(model, [0, 1, 2])
    x, y = batch(spec)
    scores = fisher_of_one_step(model, x, y)
    assert torch.all(scores[0][:3] == 0) and torch.all(scores[0][3:] > 0)


def test_l1_picks_the_smallest_absolute_filter():
    from tests.conftest import TINY_SPECS
    spec = TINY_SPECS["wrn"]
    model = build(spec, masked=True)
    blocks = prunable_blocks(model)
    with torch.no_grad():
        for b in blocks:
            b.conv1.weight.fill_(0.1)
        # Block 1, channel 3: large weights of both signs (signed sum 0, L1 large).
        w = blocks[1].conv1.weight[3]
        w.fill_(0.5)
        w.view(-1)[::2] = -0.5
        # Block 2, channel 5: the smallest magnitudes anywhere.
        blocks[2].conv1.weight[5].fill_(-0.01)
    scores = L1Saliency().scores(blocks)
    expected = blocks[2].conv1.weight[5].abs().sum()
    torch.testing.assert_close(scores[2][5], expected)
    pruner = Pruner(model, L1Saliency())
    [index] = pruner.prune()
    offset = sum(spec.mids[:2])
    assert index == offset + 5
    assert blocks[2].mask[5] == 0
    # The next pick is never the signed-sum-zero filter while smaller ones remain.
    assert pruner.prune() != [spec.mids[0] + 3]


def test_random_prunes_active_channels_reproducibly():
    from tests.conftest import TINY_SPECS
    spec = TINY_SPECS["densenet"]

    def run(seed):
        model = build(spec, masked=True)
        pruner = Pruner(model, RandomSaliency(seed))
        return [i for _ in range(spec.prunable_channels) for i in pruner.prune()]

    first = run(7)
    assert sorted(first) == list(range(spec.prunable_channels))  # each channel exactly once
    assert first == run(7)
    assert first != run(8)


def test_each_l1_variant_chooses_by_its_own_rule_on_hand_built_weights():
    """WRN-10-1: block 0 and block 1 filters have 16 inputs (144 weights), block 2's 32 (288).
    Every weight is 0.1 but one filter of block 2 (0.09) and one of block 0 (-0.1: the
    most negative signed sum)."""
    from mlprunes import arch
    from mlprunes.pruning import L1LayerSaliency, L1MeanSaliency, L1SignedSaliency
    from mlprunes.pruning.history import block_offsets

    spec = arch.wrn(10, 1)
    offsets = block_offsets(spec)

    def first_pick(saliency, prepare=None):
        model = build(spec, masked=True)
        blocks = prunable_blocks(model)
        with torch.no_grad():
            for b in blocks:
                b.conv1.weight.fill_(0.1)
            blocks[2].conv1.weight[7].fill_(0.09)
            blocks[0].conv1.weight[4].fill_(-0.1)
            if prepare:
                prepare(blocks)
        [index] = Pruner(model, saliency).prune()
        return index

    # The |W| sum prefers the filters with fewer inputs: a block-0 or block-1 channel (sum
    # 14.4) goes before any of block 2 (25.9 and 28.8), which empties small blocks first.
    assert first_pick(L1Saliency()) < offsets[2]
    # Per weight, the 0.09 filter is the weakest anywhere: block 2, channel 7.
    assert first_pick(L1MeanSaliency()) == offsets[2] + 7
    # Relative to its own block's mean, too.
    assert first_pick(L1LayerSaliency()) == offsets[2] + 7
    # The paper code's signed sum takes the most negative: block 0, channel 4.
    assert first_pick(L1SignedSaliency()) == offsets[0] + 4

    # Layer-wise, a block's scale cancels: block 1 ten times smaller loses nothing for it; its
    # one filter at half its block's mean goes first.
    def smaller_block_1(blocks):
        blocks[1].conv1.weight.mul_(0.1)
        blocks[1].conv1.weight[2].mul_(0.5)
        blocks[2].conv1.weight[7].fill_(0.1)
    assert first_pick(L1LayerSaliency(), smaller_block_1) == offsets[1] + 2
    assert first_pick(L1MeanSaliency(), smaller_block_1) == offsets[1] + 2   # also the smallest


def test_layer_wise_l1_scales_by_the_active_filters_only():
    from mlprunes import arch
    from mlprunes.pruning import L1LayerSaliency

    model = build(arch.wrn(10, 1), masked=True)
    blocks = prunable_blocks(model)
    with torch.no_grad():
        for b in blocks:
            b.conv1.weight.fill_(1.0)
        blocks[0].conv1.weight[:8].fill_(100.0)     # half the block, then pruned away
        blocks[0].mask[:8] = 0
    scores = L1LayerSaliency().scores(blocks)
    torch.testing.assert_close(scores[0][8:], torch.ones(8))   # the active ones' mean is 1


def _compiles() -> bool:
    """Can torch.compile build code here (a C compiler and Python headers, on a CPU)?"""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return False
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(3))
        return True
    except Exception:  # the backend reports a missing toolchain in its own ways
        return False


def test_compiled_and_eager_fisher_scores_agree():
    """`--compile` with Fisher: the hook that reads each masked activation is registered during
    the forward pass; under torch.compile it must still see every step's activations and
    gradients. (About half a minute on a 2-core CPU, most of it compiling.)"""
    import copy

    from mlprunes import arch

    if not _compiles():
        pytest.skip("torch.compile cannot build code on this machine (no C toolchain)")
    torch.manual_seed(0)
    eager = build(arch.wrn(10, 1), masked=True)
    compiled = copy.deepcopy(eager)
    x, y = batch(eager.spec, n=8, size=12)

    def scores(model, forward):
        fisher = FisherSaliency()
        fisher.attach(prunable_blocks(model))
        for _ in range(2):  # accumulated over steps, as between two prunes
            F.cross_entropy(forward(x), y).backward()
        return fisher.scores(prunable_blocks(model))

    reference = scores(eager, eager)
    for ours, theirs in zip(scores(compiled, torch.compile(compiled)), reference):
        assert theirs.abs().max() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-9)


def test_every_criterion_prunes_a_network_with_a_block_of_width_zero():
    from mlprunes import arch
    from mlprunes.pruning import CRITERIA, make_saliency

    spec = arch.wrn(10, 1).with_mids([0, 4, 8])     # e.g. a small --bottle, or pruned again
    for name in CRITERIA:
        model = build(spec, masked=True)
        pruner = Pruner(model, make_saliency(name))
        assert pruner.prune()[0] >= 0, name          # a channel of the blocks that have some
