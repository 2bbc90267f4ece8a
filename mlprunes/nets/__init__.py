"""Networks built from an architecture description."""

from __future__ import annotations

from torch import nn

from mlprunes.arch import ArchSpec
from mlprunes.nets.densenet import DenseNetBC
from mlprunes.nets.prunable import PrunableBlock, prunable_blocks
from mlprunes.nets.wrn import WideResNet

__all__ = ["build", "prunable_blocks", "PrunableBlock", "WideResNet", "DenseNetBC"]


def build(spec: ArchSpec, masked: bool = False) -> nn.Module:
    """The network a description describes, freshly initialised. `masked=True` gives every
    prunable block a channel mask (all ones) so that it can be pruned in place."""
    if spec.family == "wrn":
        return WideResNet(spec, masked)
    return DenseNetBC(spec, masked)
