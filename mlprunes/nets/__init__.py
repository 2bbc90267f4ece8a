"""Networks built from an architecture description."""

from __future__ import annotations

from torch import nn

from mlprunes.arch import GraphSpec, Spec
from mlprunes.nets.densenet import DenseNetBC
from mlprunes.nets.prunable import PrunableBlock, prunable_blocks
from mlprunes.nets.wrn import WideResNet

__all__ = ["build", "is_mask_key", "prunable_blocks", "prunable_units", "PrunableBlock", "WideResNet",
           "DenseNetBC"]


def build(spec: Spec, masked: bool = False, init: str = "fresh") -> nn.Module:
    """The network a description describes, freshly initialised. `masked=True` gives every
    prunable block (every channel group) a channel mask of ones so that it can be pruned in
    place. `init` matters only for a traced network narrower than its builder's: `fresh` is
    the builder's own init at those widths, `sliced` the builder's full network cut down (the
    cheaper one, for a network whose weights are about to be loaded)."""
    if isinstance(spec, GraphSpec):
        from mlprunes.groups import build_graph
        return build_graph(spec, masked, init)
    if spec.family == "wrn":
        return WideResNet(spec, masked)
    return DenseNetBC(spec, masked)


def prunable_units(model: nn.Module) -> list:
    """What a pruner prunes, in the order of `model.spec.mids`: a WRN or DenseNet-BC's blocks,
    or a traced network's channel groups (`mlprunes.groups.ChannelGroup`). Both have `mid`,
    `mask`, `set_mask`, `drop`, `filters` and `observe`."""
    groups = getattr(model, "channel_groups", None)
    return list(groups) if groups is not None else prunable_blocks(model)


def is_mask_key(key: str) -> bool:
    """A state-dict entry that is a mask (a block's `mask`, a traced layer's `channel_mask`):
    what a masked network has and the unmasked one it is loaded from lacks."""
    return key.endswith(".mask") or key.endswith(".channel_mask")
