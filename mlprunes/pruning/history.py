"""A prune history is the list of global channel indices pruned, in order. Channels are numbered
block by block in the order of `spec.mids`. Any intermediate network is the history's prefix
applied to the starting description."""

from __future__ import annotations

from itertools import accumulate
from typing import Sequence

import torch
from torch import nn

from mlprunes.arch import ArchSpec
from mlprunes.nets import prunable_units


class PruningError(ValueError):
    """A prune that cannot be done: a pruned channel, an index out of range, nothing left."""


def block_offsets(spec: ArchSpec) -> list[int]:
    """The global index of each block's first channel."""
    return [0, *accumulate(spec.mids)][:-1]


def locate(spec: ArchSpec, index: int) -> tuple[int, int]:
    """(block, channel within the block) of a global channel index."""
    total = spec.prunable_channels
    if not 0 <= index < total:
        raise PruningError(f"channel {index} is out of range: the network has {total} "
                           f"prunable channels (0..{total - 1})")
    for block, (start, width) in enumerate(zip(block_offsets(spec), spec.mids)):
        if index < start + width:
            return block, index - start
    raise AssertionError("unreachable")


def masks_from_history(spec: ArchSpec, history: Sequence[int]) -> list[torch.Tensor]:
    """The 0/1 channel masks of `spec` after the prunes in `history`."""
    masks = [torch.ones(m) for m in spec.mids]
    for step, index in enumerate(history):
        block, channel = locate(spec, int(index))
        if masks[block][channel] == 0:
            raise PruningError(f"prune history step {step}: channel {index} (block {block}, "
                               f"channel {channel}) was already pruned")
        masks[block][channel] = 0
    return masks


def spec_after(spec: ArchSpec, history: Sequence[int]) -> ArchSpec:
    """The compressed description after the prunes in `history`: each block's surviving width."""
    return spec.with_mids(int(m.sum()) for m in masks_from_history(spec, history))


def apply_history(model: nn.Module, history: Sequence[int]) -> None:
    """Set a masked model's masks to those of its description after `history`."""
    for unit, mask in zip(prunable_units(model), masks_from_history(model.spec, history)):
        unit.set_mask(mask)


def apply_held_history(model: nn.Module, spec: ArchSpec, history: Sequence[int],
                       shrunk: int) -> None:
    """Set the masks of `model`, `spec`'s network cut to the channels that survived the first
    `shrunk` prunes of `history` (or not cut, for 0), to those of the whole `history`."""
    full = masks_from_history(spec, history)
    held = masks_from_history(spec, history[:shrunk])
    for unit, mask, kept in zip(prunable_units(model), full, held):
        unit.set_mask(mask[kept.bool()])
