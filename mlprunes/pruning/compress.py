"""Turn a masked model into the physically thinner network it computes."""

from __future__ import annotations

from torch import nn

from mlprunes.arch import ArchSpec, GraphSpec, Spec
from mlprunes.nets import build
from mlprunes.nets.prunable import PrunableBlock, prunable_blocks


def compress(model: nn.Module) -> nn.Module:
    """The unmasked network with each block's middle convs and BN sliced to its surviving
    channels, carrying the masked model's trained weights. In eval mode it gives the masked
    model's outputs; its parameter count is `count(compressed spec).params`. A traced network
    is cut by its channel groups (`mlprunes.groups.compress_graph`), and checked on a batch."""
    if isinstance(model.spec, GraphSpec):
        from mlprunes.groups import compress_graph
        return compress_graph(model)
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, PrunableBlock)]
    if not named or not all(m.masked for _, m in named):
        raise ValueError("compress needs a masked model: build(spec, masked=True)")
    keeps = [m.mask.nonzero().flatten() for _, m in named]
    compact = build(model.spec.with_mids(len(k) for k in keeps))
    wanted = compact.state_dict()
    # Everything the compact model has is copied; masks and the weights of vanished blocks are
    # simply not wanted.
    state = {key: value for key, value in model.state_dict().items() if key in wanted}
    for (name, _), keep in zip(named, keeps):
        for local, axis in PrunableBlock.MIDDLE_AXES.items():
            key = f"{name}.{local}"
            if key in state:
                state[key] = state[key].index_select(axis, keep)
    param = next(model.parameters())
    compact.to(device=param.device, dtype=param.dtype)
    compact.load_state_dict(state)  # strict: any key or shape left unhandled fails loudly
    return compact.train(model.training)


def _within_full(spec: Spec) -> None:
    full_mids = spec.full_mids()
    if any(m > f for m, f in zip(spec.mids, full_mids)):
        raise ValueError(f"a block of {spec.name} is wider than the full network's "
                         f"({list(spec.mids)} against {list(full_mids)}): sliced init cuts the "
                         f"full network, so it needs widths within it")


def build_sliced(spec: Spec) -> nn.Module:
    """`spec`'s network initialised as the paper's code initialises a pruned architecture: the
    full network of its depth and width is built and initialised, then each block is cut to
    its first `spec.mids[i]` channels. (`build(spec)` instead initialises every layer for its
    own, narrower widths.)"""
    if isinstance(spec, GraphSpec):
        _within_full(spec)
        from mlprunes.groups import build_graph
        return build_graph(spec, init="sliced")
    full_mids = spec.full_mids()
    if any(m > f for m, f in zip(spec.mids, full_mids)):
        raise ValueError(f"a block of {spec.name} is wider than the full network's "
                         f"({list(spec.mids)} against {list(full_mids)}): sliced init cuts the "
                         f"full network, so it needs widths within it")
    full = build(spec.with_mids(full_mids), masked=True)
    for block, width in zip(prunable_blocks(full), spec.mids):
        block.mask.zero_()
        block.mask[:width] = 1
    return compress(full)
