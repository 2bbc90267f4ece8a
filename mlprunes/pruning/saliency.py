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
from mlprunes.pruning import persample


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

    def cut_state(self, state: dict, keeps: list[torch.Tensor]) -> dict | None:
        """`state` (this criterion's `state_dict`) for the units cut to `keeps` (each unit's
        surviving channels, as it numbered them), or None to start afresh; called when the
        network is cut to its surviving channels, right after a prune."""
        return state


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

    def cut_state(self, state: dict, keeps: list[torch.Tensor]) -> dict:
        """The sums of the surviving channels (zero right after a prune, which resets them)."""
        def cut(tensors):
            return [None if t is None else t[k.to(t.device)] for t, k in zip(tensors, keeps)]
        return {"totals": cut(state["totals"]), "examples": cut(state["examples"]),
                "steps": list(state["steps"])}


def dead_inputs(blocks: list[PrunableBlock]) -> dict:
    """Per layer of a traced network, the input channels whose groups have pruned them: their
    weights remain (masks act on outputs) but carry nothing, so they must not count in the
    filters of the layers that read them; and (`.rows`) each layer's pruned output rows, which
    must not count in another group's reading of that layer's input columns. So a criterion
    scores the masked network as it scores the network cut to its surviving channels. Empty
    for the seed's blocks."""
    from mlprunes.groups import DeadInputs

    dead = DeadInputs()
    for b in blocks:
        if not hasattr(b, "inputs"):
            continue
        gone = ~b.mask.bool().cpu()
        if not gone.any():
            continue
        for module, index, root in b.inputs():
            columns = index[gone[root]]
            if len(columns):
                dead[module] = torch.cat([dead[module], columns]) if module in dead else columns
        for module, index, root in b.outputs():
            rows = index[gone[root]]
            if len(rows):
                dead.rows[module] = (torch.cat([dead.rows[module], rows])
                                     if module in dead.rows else rows)
    return dead


def _filters(block: PrunableBlock, dead: dict | None = None) -> torch.Tensor:
    """Each channel's filter, one row per channel: a block's first conv, or the layer a
    channel group is named after (its output rows), pruned inputs read as zeros."""
    return block.filters(dead)


class L1Saliency(Saliency):
    """The L1 norm of each channel's filter in the block's first conv (for a channel group, in
    the layer it is named after): sum |W|, ranked across all blocks as they are.

    (Magnitude, not the signed sum: a filter of large weights of both signs is not unimportant.)
    A filter with more inputs has more weights to sum, so blocks with few inputs lose their
    channels first, whatever those channels do.
    """

    name = "l1"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        dead = dead_inputs(blocks)
        return [_filters(b, dead).abs().sum(dim=1) for b in blocks]


class L1MeanSaliency(Saliency):
    """The mean |W| of each channel's filter: the L1 norm over the number of weights in the
    filter (its live inputs x kernel area), so that filters of blocks with more inputs are not
    ranked higher for their count of weights alone. Inputs from channels already pruned do
    not count: the filter has those weights no more (and the network cut to its surviving
    channels has not got them at all)."""

    name = "l1-mean"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        dead = dead_inputs(blocks)
        out = []
        for b in blocks:
            rows = _filters(b, dead)
            live = max(1, rows.shape[1] - _dead_weights(b, dead))
            out.append(rows.abs().sum(dim=1) / live)
        return out


def _dead_weights(unit, dead: dict) -> int:
    """How many weights of each of a unit's filters read pruned inputs (none in a seed block;
    in a traced network, the dead input columns of the layer its group is named after)."""
    root = getattr(unit, "_root", None)
    gone = dead.get(root) if root is not None else None
    if gone is None or not len(gone) or (root.groups > 1 if hasattr(root, "groups") else False):
        return 0
    per_column = root.weight[0, 0].numel() if root.weight.dim() > 2 else 1
    return len(torch.unique(gone)) * per_column


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
        out, dead = [], dead_inputs(blocks)
        for b in blocks:
            norms = _filters(b, dead).abs().sum(dim=1)
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
        dead = dead_inputs(blocks)
        return [_filters(b, dead).sum(dim=1) for b in blocks]


def _group_sum(unit, value, kinds=("out", "bn", "in"), dead=None, weight=None) -> torch.Tensor:
    """Each channel's sum of `value(rows)` over the unit's member layers of these kinds (rows of
    `weight(layer)` in place of the layer's weight, when given)."""
    total = torch.zeros(unit.mid, device=unit.mask.device)
    for kind, rows, root in (unit.parts(dead) if weight is None else unit.parts(dead, weight)):
        if kind in kinds:
            total.index_add_(0, root.to(total.device), value(rows).float().to(total.device))
    return total


def _active(unit, scores: torch.Tensor) -> torch.Tensor:
    """The unit's channels still in (a masked channel keeps its weights, which must not weigh
    in a criterion that compares a channel with the rest of its layer)."""
    return unit.mask.to(scores.device).bool() if unit.masked else torch.ones_like(
        scores, dtype=torch.bool)


class L2Saliency(Saliency):
    """Group L2 magnitude: for each channel, sqrt(sum w^2) over every weight its group carries
    (the producing layers' filters, the BatchNorm scales, the consuming layers' input columns),
    ranked across groups as they are.

    Torch-Pruning's `GroupMagnitudeImportance(p=2)` sums the same squares per layer and reduces
    the layers by their mean ("sum" and "mean" rank a group's channels alike); it then divides by
    the group's mean (`normalizer="mean"`), a per-group scale we leave out, as `l1` does. It also
    skips depthwise convs (their handler is not the one it tests for); we count their filters,
    which are the channel's as much as any."""

    name = "l2"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        dead = dead_inputs(blocks)
        return [_group_sum(b, lambda rows: rows.pow(2).sum(dim=1), dead=dead).sqrt()
                for b in blocks]


class BNScaleSaliency(Saliency):
    """Network slimming (Liu et al., ICCV 2017): |gamma|, the BatchNorm scale of each channel
    (summed over the group's BatchNorms where a residual couples several), ranked across the
    network. Meant for a base trained with an L1 penalty on the scales (`train --bn-l1`).

    Torch-Pruning's `BNScaleImportance` takes the mean over the group's BatchNorms (the same
    ranking within a group) and divides by the group's mean; a group without a BatchNorm is
    refused here rather than scored zero."""

    name = "bn-scale"

    def attach(self, blocks: list[PrunableBlock]) -> None:
        self._check(blocks)   # refused before any fine-tuning, not at the first prune

    @staticmethod
    def _check(blocks: list[PrunableBlock]) -> None:
        for b in blocks:
            if b.mid > 0 and not any(kind == "bn" for kind, _, _ in b.parts()):
                raise ValueError(f"bn-scale ranks channels by their BatchNorm scale; group "
                                 f"{getattr(b, 'name', '?')} has no BatchNorm (use another "
                                 f"criterion, or --groups internal where that leaves it out)")

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        self._check(blocks)
        return [_group_sum(b, lambda rows: rows.abs().sum(dim=1), kinds=("bn",))
                for b in blocks]


class LAMPSaliency(Saliency):
    """LAMP (Lee et al., ICLR 2021), for channels: with s_i the group L2 magnitude squared
    (sum w^2 over the group, as `l2`), a channel scores s_i / sum_{j active, s_j >= s_i} s_j:
    its share of the magnitude of itself and every active channel of its group at least as
    strong. A group's strongest channel scores 1, so groups compare on one scale.

    Torch-Pruning's `LAMPImportance` applies the same rescaling to its group magnitude (a mean
    over layers, which the ratio cancels): equal values on a network none of whose channels are
    pruned yet. Ours takes only active channels into the sums, so a pruned channel's weights do
    not inflate its group's tail."""

    name = "lamp"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        out, dead = [], dead_inputs(blocks)
        for b in blocks:
            s = _group_sum(b, lambda rows: rows.pow(2).sum(dim=1), dead=dead)
            active = _active(b, s)
            score = torch.zeros_like(s)
            values = s[active]
            order = values.argsort()
            tail = values[order].flip(0).cumsum(0).flip(0)   # sum of the ones at least as big
            ranked = torch.empty_like(values)
            ranked[order] = values[order] / tail.clamp_min(torch.finfo(s.dtype).tiny)
            score[active] = ranked
            out.append(score)
        return out


class FPGMSaliency(Saliency):
    """FPGM (He et al., CVPR 2019): a filter near the geometric median of its layer's filters
    is the most replaceable. As their code approximates it, a filter's distance to the median is
    sum_j ||F_i - F_j||_2 over the layer's filters; within a layer the smallest goes first.

    He et al. prune each layer by a fixed ratio. Ranked across layers, raw sums would favour
    layers with few or small filters, and fall as a layer loses filters, emptying it. So a
    filter scores its mean distance to the layer's other active filters, over the layer's mean
    of those (a layer's last channel scores 1): He et al.'s order within each layer, on one
    scale across layers, as `l1-layer` does for Li et al.'s L1.

    Torch-Pruning's `FPGMImportance` measures distances between |W|^2 (not W) and adds the
    consuming layers' columns too; we follow the paper, on the filters `l1` reads."""

    name = "fpgm"

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        out, dead = [], dead_inputs(blocks)
        for b in blocks:
            filters = _filters(b, dead).float()
            active = _active(b, filters.new_zeros(b.mid))
            others = int(active.sum()) - 1
            if others < 1:   # a layer's last channel (or none)
                out.append(torch.ones(b.mid, device=filters.device))
                continue
            distances = torch.cdist(filters[None], filters[active][None])[0]
            score = distances.sum(dim=1) / others
            scale = score[active].mean().clamp_min(torch.finfo(score.dtype).tiny)
            out.append(score / scale)
        return out


class TaylorSaliency(FisherSaliency):
    """First-order Taylor (Molchanov et al., CVPR 2019), over a channel group: the squared
    change of the loss to first order were the channel's gate m removed, (dL/dm)^2, with
    dL/dm = sum_{n,hw} a * dL/da for the masked activation a (the gate folded into the
    BatchNorm, it equals sum over gamma and beta of w * dL/dw, their grouped Taylor on the
    group's affine weights). Accumulated over the fine-tuning steps since the last prune, as
    Fisher is; Fisher sums the per-sample squares, Taylor squares the batch's sum.

    Torch-Pruning's `GroupTaylorImportance` scores |w * dw| on every weight of the group from
    the last gradient only; ours is Molchanov et al.'s gate form, averaged over steps."""

    name = "taylor"

    def _accumulate(self, index: int, per_sample: torch.Tensor) -> None:
        step = per_sample.sum(dim=0).pow(2)
        total = self._totals[index]
        self._totals[index] = step if total is None else total.add_(step)
        self._steps[index] += 1

    loss_increase = None   # no estimate of the loss increase: no FLOPs penalty


class HessianSaliency(Saliency):
    """Optimal Brain Damage (LeCun et al., NeurIPS 1989) over a channel group, with the diagonal
    Hessian taken as the empirical Fisher of per-sample gradients: a channel scores
    1/2 * sum over its group's weights of w^2 * h, h = the mean over examples of (dl_n/dw)^2,
    l_n the example's own loss. The squares are summed per sample (`persample`), never squared
    after the batch's sum, and accumulate over the fine-tuning steps since the last prune, as
    Fisher's do; the weights are read at the prune. The group's weights are those `l2` sums:
    producers' filters, BatchNorm scales, consumers' input columns.

    Torch-Pruning's `GroupHessianImportance` scores the same w^2 * h, its h from one backward per
    sample (`accumulate_grad` after each). As 1.6.1 is written it keeps only the last sample's
    g^2: `accumulate_grad` tests `name not in self._accu_grad` but stores under the parameter,
    so every call overwrites the sum (and resets the count to 1). We sum every sample's, which
    is the estimator OBD means; on one sample the two agree. Our per-sample gradients hold a
    BatchNorm's batch statistics constant; in evaluation mode, where samples do not interact,
    they are exactly each example's own gradient.

    1/2 w^2 h is OBD's estimate of the loss's rise were the weights zeroed, so it is also the
    criterion's `loss_increase` (per step, in nats) and a FLOPs penalty can weigh it."""

    name = "hessian"

    def __init__(self) -> None:
        self._blocks: list[PrunableBlock] = []
        self._layers: list[torch.nn.Module] = []
        self._handles: list = []
        self._squares: dict[int, torch.Tensor] = {}   # id(layer) -> sum of per-example g^2
        self._steps = 0
        self._last_layer: int | None = None

    def attach(self, blocks: list[PrunableBlock]) -> None:
        self.detach()
        self._blocks = list(blocks)
        unique: dict[int, torch.nn.Module] = {}
        for b in blocks:
            for layer in b.layers():
                if not persample.supported(layer):
                    raise ValueError(f"hessian needs per-sample gradients of "
                                     f"{type(layer).__name__}, which it cannot take; use "
                                     f"another criterion")
                unique.setdefault(id(layer), layer)
        self._layers = list(unique.values())
        self._squares = {}
        self._steps = 0
        for layer in self._layers:
            self._handles.append(layer.register_forward_hook(self._forward))
        for b in blocks:
            if hasattr(b, "bn_observer") and b.layers():   # a block of width 0 has no bn2
                b.bn_observer = partial(self._seen, b.bn2)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for b in self._blocks:
            if hasattr(b, "bn_observer"):
                b.bn_observer = None
        self._blocks = []

    def _forward(self, layer, inputs, output) -> None:
        self._seen(layer, inputs[0], output)

    def _seen(self, layer, x: torch.Tensor, y: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and y.requires_grad):
            return   # an evaluation pass
        x = x.detach()
        y.register_hook(lambda grad: self._accumulate(layer, x, grad))

    def _accumulate(self, layer, x: torch.Tensor, grad: torch.Tensor) -> None:
        squares = persample.squared_sum(layer, x, grad)
        # The loss is the batch mean: an example's own gradient is batch-size times the part
        # seen here, so mean_n (N g_n)^2 = N * sum_n g_n^2.
        squares.mul_(x.shape[0])
        key = id(layer)
        self._squares[key] = squares if key not in self._squares else self._squares[key] + squares
        # One step per backward pass: counted when the first layer watched reports again.
        if self._last_layer is None or key == self._last_layer:
            self._last_layer = key
            self._steps += 1

    def _weighed(self, layer) -> torch.Tensor:
        w2 = layer.weight.detach().float().pow(2)
        squares = self._squares.get(id(layer))
        return torch.zeros_like(w2) if squares is None else 0.5 * w2 * squares.to(w2.device)

    def scores(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        dead = dead_inputs(blocks)
        return [_group_sum(b, lambda rows: rows.sum(dim=1), dead=dead, weight=self._weighed)
                for b in blocks]

    def loss_increase(self, blocks: list[PrunableBlock]) -> list[torch.Tensor]:
        """OBD's 1/2 sum w^2 h over the channel's weights, h averaged over the steps seen: the
        estimated rise of the mean loss, in nats, were the channel removed."""
        return [s / max(self._steps, 1) for s in self.scores(blocks)]

    def reset(self) -> None:
        self._squares = {}
        self._steps = 0
        self._last_layer = None

    def state_dict(self) -> dict:
        return {"squares": [None if id(m) not in self._squares
                            else self._squares[id(m)].detach().cpu().clone()
                            for m in self._layers],
                "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        squares = state["squares"]
        if len(squares) != len(self._layers):
            raise ValueError(f"Hessian state has {len(squares)} layers, the model "
                             f"{len(self._layers)}")
        self._squares = {id(m): t.to(m.weight.device) for m, t in zip(self._layers, squares)
                         if t is not None}
        self._steps = int(state["steps"])

    def cut_state(self, state: dict, keeps: list[torch.Tensor]) -> None:
        """Nothing to carry: the network is cut right after a prune, which resets the sums
        (a cut network may have fewer layers: a block cut to nothing has none)."""
        if any(t is not None for t in state["squares"]):
            raise RuntimeError("hessian's sums can only be cut right after a prune")
        return None


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
        # Drawn for the original network's channels, so that a network cut to its surviving
        # ones (a unit's `origin`) draws the same scores for them.
        draws = [torch.rand(getattr(block, "full_mid", block.mid), generator=generator)
                 for block in blocks]
        return [d if getattr(block, "origin", None) is None else d[block.origin]
                for d, block in zip(draws, blocks)]

    def reset(self) -> None:
        self.prunes_done += 1

    def state_dict(self) -> dict:
        return {"seed": self.seed, "prunes_done": self.prunes_done}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self.prunes_done = state["prunes_done"]


CRITERIA = {"fisher": FisherSaliency, "l1": L1Saliency, "l1-mean": L1MeanSaliency,
            "l1-layer": L1LayerSaliency, "l1-signed": L1SignedSaliency, "l2": L2Saliency,
            "taylor": TaylorSaliency, "hessian": HessianSaliency, "bn-scale": BNScaleSaliency,
            "fpgm": FPGMSaliency, "lamp": LAMPSaliency, "random": RandomSaliency}


def make_saliency(name: str, seed: int = 0, prunes_done: int = 0) -> Saliency:
    """A criterion by name; `random` is seeded and can continue after `prunes_done` prunes."""
    if name not in CRITERIA:
        raise ValueError(f"unknown saliency criterion {name!r}; choose one of "
                         f"{', '.join(CRITERIA)}")
    if name == "random":
        return RandomSaliency(seed, prunes_done)
    return CRITERIA[name]()
