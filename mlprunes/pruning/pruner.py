"""One prune at a time: score the channels, switch off the weakest active one, remember it."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mlprunes.arch import ArchSpec
from mlprunes.nets.prunable import PrunableBlock, prunable_blocks
from mlprunes.pruning.history import PruningError, locate, masks_from_history
from mlprunes.pruning.saliency import Saliency


class Pruner:
    """Prunes a masked model in place with one saliency criterion.

    `history` continues an earlier run: the model's masks must already match it. With
    `keep_one`, no block is pruned below one channel; by default blocks may vanish entirely
    (as in the paper's code), after which a WRN block is its shortcut and a DenseNet layer adds
    zeros.
    """

    def __init__(self, model: nn.Module, saliency: Saliency, keep_one: bool = False,
                 history: Sequence[int] = ()):
        self.spec: ArchSpec = model.spec
        self.blocks: list[PrunableBlock] = prunable_blocks(model)
        if not self.blocks or not all(b.masked for b in self.blocks):
            raise ValueError("pruning needs a masked model: build(spec, masked=True)")
        self.saliency = saliency
        self.keep_one = keep_one
        self.history: list[int] = [int(i) for i in history]
        expected = masks_from_history(self.spec, self.history)
        if any(not torch.equal(b.mask.cpu(), m) for b, m in zip(self.blocks, expected)):
            raise PruningError("the model's masks do not match the given prune history")
        saliency.attach(self.blocks)

    @property
    def channels_left(self) -> int:
        return self.spec.prunable_channels - len(self.history)

    def prune(self) -> int:
        """Prune the active channel of lowest saliency; return its global index."""
        scores = torch.cat([s.detach().float().cpu()
                            for s in self.saliency.scores(self.blocks)])
        candidates = torch.cat([self._candidates(b) for b in self.blocks])
        if not candidates.any():
            raise PruningError(self._nothing_left_message())
        scores[~candidates] = float("inf")
        index = int(torch.argmin(scores))
        self.prune_channel(index)
        self.saliency.reset()
        return index

    def prune_channel(self, index: int) -> None:
        """Switch off one channel by global index and record it."""
        block, channel = locate(self.spec, index)
        mask = self.blocks[block].mask
        if mask[channel] == 0:
            raise PruningError(f"channel {index} (block {block}, channel {channel}) is already "
                               f"pruned")
        if self.keep_one and int(mask.sum()) == 1:
            raise PruningError(f"channel {index} is the last one of block {block} (keep_one)")
        mask[channel] = 0
        self.history.append(index)

    def detach(self) -> None:
        self.saliency.detach()

    def _candidates(self, block: PrunableBlock) -> torch.Tensor:
        alive = block.mask.detach().cpu() > 0
        if self.keep_one and int(alive.sum()) <= 1:
            return torch.zeros_like(alive)
        return alive

    def _nothing_left_message(self) -> str:
        total = self.spec.prunable_channels
        if self.channels_left == 0:
            return f"cannot prune again: all {total} prunable channels are already pruned"
        return (f"cannot prune again: every block is down to one channel ({self.channels_left} "
                f"left of {total}) and keep_one is set")
