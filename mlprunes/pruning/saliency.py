"""Channel saliency criteria: how much the loss would suffer if a channel went.

Every criterion scores the channels of each prunable unit (one tensor per unit, higher means
more important); the pruner removes the active channel with the lowest score. A unit is a WRN or
DenseNet-BC block's middle channels, or a traced network's channel group
(`mlprunes.groups.ChannelGroup`): both offer `mid`, `mask`, `filters()` and `observe()`. A
criterion that learns from training steps (Fisher) attaches to the model and is reset after
each prune.
"""

from __future__ import annotations

from functools import partial

import torch

from mlprunes.nets.prunable import PrunableBlock


class Saliency:
    """The interface. `attach`/`detach` bracket the pruning run; `reset` follows each prune."""

    name = "base"

    def attach(self, blocks: list[PrunableBlock]) -> None:
        pass

    def detach(self) -> None:
        pass

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        pass

    def state_dict(self) -> dict:
        """What a checkpoint must carry for a resumed run to prune exactly as an
        uninterrupted one would."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FisherSaliency(Saliency):
    """Fisher pruning (Theis et al. 2018, arXiv 1801.05787).

    For a masked activation a and its gradient g = dL/da, per sample n and channel c:
    s_nc = sum_hw a * g (for a channel group, summed over every layer that produces the
    channel too), and a step contributes 0.5 * mean_n s_nc^2. Contributions add up over the
    steps since the last prune. The per-sample values need the activation and its gradient
    together, so they come from tensor hooks on the masked activations (`unit.observe`; a
    batch-summed gradient of the mask would square the sum instead of summing the squares).

    These scores rank channels exactly as the paper's code does. Their scale does not matter to
    a ranking, but it does when they are weighed against a FLOP cost (`Pruner`'s
    `flops_penalty`): there Theis et al.'s own estimate is needed, `loss_increase`.
    """

    name = "fisher"

    def __init__(self) -> None:
        self._blocks: list[PrunableBlock] = []
        self._totals: list[torch.Tensor | None] = []
        self._examples: list[torch.Tensor | None] = []   # per-example scale, summed over steps
        self._steps: list[int] = []                        # steps summed, per block

    def attach(self, blocks: list[PrunableBlock]) -> None:
        self.detach()
        self._blocks = list(blocks)
        self._totals = [None] * len(blocks)
        self._examples = [None] * len(blocks)
        self._steps = [0] * len(blocks)
        for i, block in enumerate(self._blocks):
            block.observe(partial(self._accumulate, i))

    def detach(self) -> None:
        for block in self._blocks:
            block.observe(None)
        self._blocks = []

    def _accumulate(self, index: int, per_sample: torch.Tensor) -> None:
        step = per_sample.pow(2).mean(dim=0).mul_(0.5)
        total = self._totals[index]
        self._totals[index] = step if total is None else total.add_(step)
        # The loss is the batch mean, so each sample's own gradient is batch-size times the one
        # seen here: Theis et al.'s g_nk is that per-example gradient.
        per_example = step * per_sample.shape[0] ** 2
        examples = self._examples[index]
        self._examples[index] = per_example if examples is None else examples + per_example
        self._steps[index] += 1

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        return [
            total.clone() if total is not None
            else torch.zeros(block.mid, device=block.mask.device)
            for block, total in zip(blocks, self._totals_for(blocks))
        ]

    def _totals_for(self, blocks: list[PrunableBlock]) -> list[torch.Tensor | None]:
        if len(blocks) != len(self._totals):
            raise RuntimeError("Fisher saliency is not attached to these blocks")
        return self._totals

    def loss_increase(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        """Theis et al.'s Delta_k = 1/(2N) sum_n g_nk^2 over the N examples seen since the last
        prune, g_nk the per-example gradient of the loss with respect to channel k's mask: the
        estimated rise of the mean loss, in nats, were the channel removed."""
        self._totals_for(blocks)
        return [examples / steps if examples is not None
                else torch.zeros(block.mid, device=block.mask.device)
                for block, examples, steps in zip(blocks, self._examples, self._steps)]

    def reset(self) -> None:
        self._totals = [None] * len(self._totals)
        self._examples = [None] * len(self._examples)
        self._steps = [0] * len(self._steps)

    def state_dict(self) -> dict:
        def cpu(tensors):
            return [None if t is None else t.detach().cpu().clone() for t in tensors]
        return {"totals": cpu(self._totals), "examples": cpu(self._examples),
                "steps": list(self._steps)}

    def load_state_dict(self, state: dict) -> None:
        totals = state["totals"]
        if len(totals) != len(self._blocks):
            raise ValueError(f"Fisher state has {len(totals)} blocks, the model "
                             f"{len(self._blocks)}")
        self._totals = [None if t is None else t.to(b.mask.device)
                        for t, b in zip(totals, self._blocks)]
        # A checkpoint from before the per-example sums were kept restarts them (the ranking
        # state, `totals`, is whole either way).
        examples = state.get("examples", [None] * len(totals))
        self._examples = [None if t is None else t.to(b.mask.device)
                          for t, b in zip(examples, self._blocks)]
        self._steps = list(state.get("steps", [0] * len(totals)))


def _filters(block: PrunableBlock) -> torch.Tensor:
    """Each channel's filter, one row per channel: a block's first conv, or the layer a
    channel group is named after (its output rows)."""
    return block.filters()


class L1Saliency(Saliency):
    """The L1 norm of each channel's filter in the block's first conv (for a channel group, in
    the layer it is named after): sum |W|, ranked across all blocks as they are.

    (Magnitude, not the signed sum: a filter of large weights of both signs is not unimportant.)
    A filter with more inputs has more weights to sum, so blocks with few inputs lose their
    channels first, whatever those channels do.
    """

    name = "l1"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        return [_filters(b).abs().sum(dim=1) for b in blocks]


class L1MeanSaliency(Saliency):
    """The mean |W| of each channel's filter: the L1 norm over the number of weights in the
    filter (its inputs x kernel area), so that filters of blocks with more inputs are not
    ranked higher for their count of weights alone."""

    name = "l1-mean"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        return [_filters(b).abs().mean(dim=1) for b in blocks]


class L1LayerSaliency(Saliency):
    """Li et al. (ICLR 2017) rank filters by sum |W| within each layer. Across blocks, the
    channel pruned is the one weakest relative to its own block: each filter's L1 norm divided
    by the mean L1 norm of its block's active filters. A block's scale (its fan-in, its init,
    its weight decay) cancels, so no block is emptied for its scale; a block whose filters are
    all alike keeps them until others have shed their weak ones. A block's last channel scores
    exactly 1, above the weakest of any block with two unequal filters, so blocks empty only
    once every block is down to about one channel."""

    name = "l1-layer"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        out = []
        for b in blocks:
            norms = _filters(b).abs().sum(dim=1)
            active = b.mask.bool() if b.masked else torch.ones_like(norms, dtype=torch.bool)
            scale = norms[active].mean() if active.any() else norms.new_ones(())
            out.append(norms / scale.clamp_min(torch.finfo(norms.dtype).tiny))
        return out


class L1SignedSaliency(Saliency):
    """The signed sum of each channel's filter weights, ranked across all blocks: the paper
    code's L1 criterion, exactly, for reproducing its curves. A filter whose weights cancel
    scores near zero however large they are, and the most negative sum goes first."""

    name = "l1-signed"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        return [_filters(b).sum(dim=1) for b in blocks]


class RandomSaliency(Saliency):
    """Uniform random scores: a random active channel is pruned.

    The scores for the k-th prune come from a generator seeded by (seed, k), so a run resumed
    after `prunes_done` prunes continues the same sequence as an uninterrupted one.
    """

    name = "random"

    def __init__(self, seed: int = 0, prunes_done: int = 0) -> None:
        self.seed = seed
        self.prunes_done = prunes_done

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.prunes_done)
        return [torch.rand(block.mid, generator=generator) for block in blocks]

    def reset(self) -> None:
        self.prunes_done += 1

    def state_dict(self) -> dict:
        return {"seed": self.seed, "prunes_done": self.prunes_done}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self.prunes_done = state["prunes_done"]


CRITERIA = {"fisher": FisherSaliency, "l1": L1Saliency, "l1-mean": L1MeanSaliency,
            "l1-layer": L1LayerSaliency, "l1-signed": L1SignedSaliency,
            "random": RandomSaliency}


def make_saliency(name: str, seed: int = 0, prunes_done: int = 0) -> Saliency:
    """A criterion by name; `random` is seeded and can continue after `prunes_done` prunes."""
    if name not in CRITERIA:
        raise ValueError(f"unknown saliency criterion {name!r}; choose one of "
                         f"{', '.join(CRITERIA)}")
    if name == "random":
        return RandomSaliency(seed, prunes_done)
    return CRITERIA[name]()
