"""One prune at a time: score the channels, switch off the weakest active one (or group of
round_to channels of one block), remember it."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mlprunes.arch import Spec
from mlprunes.nets import prunable_units
from mlprunes.nets.prunable import PrunableBlock
from mlprunes.counting import Size, count
from mlprunes.pruning.history import (PruningError, block_offsets, locate, masks_from_history,
                                      spec_after)
from mlprunes.pruning.saliency import Saliency


class Pruner:
    """Prunes a masked model in place with one saliency criterion.

    `history` continues an earlier run: the model's masks must already match it. With
    `keep_one`, no block is pruned below one channel (`round_to` channels); by default blocks
    may vanish entirely (as in the paper's code), after which a WRN block is its shortcut and a
    DenseNet layer adds zeros.

    A prune removes `round_to` channels (R) from one block, so that every width stays a
    multiple of R: the block whose R weakest active channels have the lowest summed score, and
    those R channels. The starting widths must be multiples of R. With R = 1 this is the
    paper's rule: the weakest channel of the network.

    `flops_penalty` (beta > 0) is Theis et al.'s cost-aware Fisher pruning: a group's score is
    its estimated loss increase in nats (`FisherSaliency.loss_increase`) plus beta times the
    change in GFLOPs per image its removal makes (negative: a removal saves computation), at the
    network's current widths, so a channel whose removal saves more goes first when saliencies
    tie. FLOPs are counted as the paper counts them (`Counts.cost_flops`) at `image_size`.
    """

    def __init__(self, model: nn.Module, saliency: Saliency, keep_one: bool = False,
                 history: Sequence[int] = (), round_to: int = 1, flops_penalty: float = 0.0,
                 image_size: Size | None = None):
        self.spec: Spec = model.spec
        if not prunable_units(model) or not all(b.masked for b in prunable_units(model)):
            raise ValueError("pruning needs a masked model: build(spec, masked=True)")
        if round_to < 1:
            raise ValueError(f"round_to must be at least 1, got {round_to}")
        if not flops_penalty >= 0:
            raise ValueError(f"flops_penalty must be >= 0, got {flops_penalty}")
        if flops_penalty > 0 and not callable(getattr(saliency, "loss_increase", None)):
            raise ValueError(f"a FLOPs penalty weighs an estimated loss increase against the "
                             f"FLOPs saved; the {saliency.name} criterion estimates none (use "
                             f"fisher)")
        if flops_penalty > 0 and image_size is None:
            raise ValueError("a FLOPs penalty needs the image size to count FLOPs at")
        self.saliency = saliency
        # A traced network's group cannot vanish (nothing says what a layer with no channels
        # becomes), so its groups always keep one.
        self.keep_one = keep_one or not self.spec.can_empty_groups
        self.round_to = round_to
        self.flops_penalty = flops_penalty
        self.image_size = image_size
        self.history: list[int] = [int(i) for i in history]
        expected = masks_from_history(self.spec, self.history)
        uneven = [i for i, m in enumerate(expected) if int(m.sum()) % round_to]
        if uneven:
            raise PruningError(
                f"pruning {round_to} channels at a time needs every block's width to be a "
                f"multiple of {round_to}; block(s) {uneven} have widths "
                f"{[int(expected[i].sum()) for i in uneven]} (train the network with "
                f"--round-to {round_to}, or choose a round-to that divides every width)")
        self.blocks: list[PrunableBlock] = []
        self.bind(model, 0)

    def bind(self, model: nn.Module, shrunk: int) -> None:
        """Prune `model` from now on: the network `spec` describes, or (`shrunk` > 0) that
        network cut to the channels that survived the history's first `shrunk` prunes
        (`mlprunes.pruning.shrink`). History, offsets and sizes keep speaking of the original
        network's channels; each unit's `origin` maps its channels back to them. The criterion
        is attached to the new units (its state is the caller's to carry over)."""
        from mlprunes.pruning.shrink import surviving

        if not 0 <= shrunk <= len(self.history):
            raise PruningError(f"cannot bind a network cut after {shrunk} prunes to a history "
                               f"of {len(self.history)}")
        blocks = prunable_units(model)
        origins = surviving(self.spec, self.history[:shrunk])
        if len(blocks) != len(origins) or any(b.mid != len(o) for b, o in zip(blocks, origins)):
            raise PruningError(f"the model's widths {[b.mid for b in blocks]} are not those of "
                               f"{self.spec.name} after {shrunk} prunes "
                               f"{[len(o) for o in origins]}")
        expected = masks_from_history(self.spec, self.history)
        if any(not torch.equal(b.mask.cpu(), m[o]) for b, m, o in zip(blocks, expected, origins)):
            raise PruningError("the model's masks do not match the given prune history")
        for block, origin, full in zip(blocks, origins, self.spec.mids):
            # What a criterion that draws per original channel (random) reads.
            block.origin, block.full_mid = (origin if shrunk else None), full
        self.blocks = blocks
        self.origins = origins
        self.shrunk = shrunk
        self.saliency.attach(self.blocks)   # (a criterion's attach detaches it from the old)

    @property
    def held_spec(self) -> Spec:
        """The network the pruned model physically is: cut after `shrunk` prunes."""
        return spec_after(self.spec, self.history[:self.shrunk]) if self.shrunk else self.spec

    @property
    def channels_left(self) -> int:
        return self.spec.prunable_channels - len(self.history)

    def prune(self) -> list[int]:
        """Prune `round_to` active channels of one block as the class says; return their
        global indices, weakest first."""
        if self.flops_penalty > 0:
            scores = self.saliency.loss_increase(self.blocks)
        else:
            scores = self.saliency.scores(self.blocks)
        widths = [int(b.mask.sum()) for b in self.blocks]
        now = self._cost(widths) if self.flops_penalty > 0 else 0.0
        floor = self.round_to if self.keep_one else 0
        best: tuple[float, int, torch.Tensor] | None = None
        for index, (block, block_scores) in enumerate(zip(self.blocks, scores)):
            if widths[index] - self.round_to < floor:
                continue
            alive = (block.mask.detach().cpu() > 0).nonzero().flatten()   # as it is held
            # A NaN score goes first, as argmin takes it; stable, so that among equal scores the
            # lowest channel goes first, as argmin does.
            live = block_scores.detach().float().cpu()[alive].nan_to_num(nan=-math.inf)
            order = torch.sort(live, stable=True)
            group = alive[order.indices[:self.round_to]]
            score = float(order.values[:self.round_to].sum())
            if self.flops_penalty > 0:
                smaller = list(widths)
                smaller[index] -= self.round_to
                score += self.flops_penalty * (self._cost(smaller) - now)
            if best is None or score < best[0]:
                best = (score, index, group)
        if best is None:
            raise PruningError(self._nothing_left_message())
        offset = block_offsets(self.spec)[best[1]]
        indices = [offset + int(self.origins[best[1]][c]) for c in best[2]]
        for index in indices:
            self.prune_channel(index)
        self.saliency.reset()
        return indices

    def _cost(self, widths: list[int]) -> float:
        """GFLOPs per image of the network with these middle widths, as Theis et al. count."""
        return count(self.spec.with_mids(widths), self.image_size).cost_flops / 1e9

    def prune_channel(self, index: int) -> None:
        """Switch off one channel by global index (of the original network) and record it."""
        block, channel = locate(self.spec, index)
        unit = self.blocks[block]
        mask = unit.mask
        held = (self.origins[block] == channel).nonzero().flatten()
        if len(held) == 0 or mask[int(held[0])] == 0:
            raise PruningError(f"channel {index} (block {block}, channel {channel}) is already "
                               f"pruned")
        if self.keep_one and int(mask.sum()) == 1:
            raise PruningError(f"channel {index} is the last one of block {block} (keep_one)")
        unit.drop(int(held[0]))
        self.history.append(index)

    def detach(self) -> None:
        self.saliency.detach()

    def _nothing_left_message(self) -> str:
        total = self.spec.prunable_channels
        if self.channels_left == 0:
            return f"cannot prune again: all {total} prunable channels are already pruned"
        if self.keep_one:
            floor = "one channel" if self.round_to == 1 else f"{self.round_to} channels"
            return (f"cannot prune again: every block is down to {floor} ({self.channels_left} "
                    f"left of {total}) and keep_one is set")
        return (f"cannot prune {self.round_to} channels of one block: no block has that many "
                f"left ({self.channels_left} of {total}); the widths are not multiples of "
                f"{self.round_to}")
