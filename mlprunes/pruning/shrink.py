"""A masked network cut to its surviving channels mid-run, and back to full width for a checkpoint.

Fine-tuning the masked network computes at full width however many channels are masked. A masked
channel contributes nothing to the output and gets no gradient, and SGD (momentum and weight decay
included) updates every other weight independently of it, so fine-tuning the network cut to its
surviving channels, with the optimiser's state cut the same way, computes the same thing; only the
order of float sums can differ. `cut` makes that network: masked again (all masks one) so that
pruning goes on in it.

Which entry of the old network each entry of the cut one is comes from `compress` itself: a copy
of the network whose every tensor holds its own flat indices is compressed, and what survives is
read back (`_gather_maps`). So weights, BatchNorm statistics, momentum buffers and any
weight-shaped state are cut by the very slicing compression does, for the seed's blocks and for a
traced network's channel groups alike, with no second description of which axis a channel lies on.

Neither draws from the global random generator (it is forked), so the run's random stream is
the masked run's. Dropout on pruned channels is the one thing that still differs: the cut
network draws masks for fewer channels, so its dropout is the same in distribution, not in value.

`expand` goes the other way for checkpoints: the full-width masked state dict of the network a
cut one holds (pruned entries zero, their BatchNorm variances one), which loads into
`build(spec, masked=True)` as a checkpoint of a run that never shrank does.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from mlprunes.arch import GraphSpec, Spec
from mlprunes.nets import build, is_mask_key
from mlprunes.pruning.history import apply_history, masks_from_history

Maps = dict[str, torch.Tensor]   # state-dict name -> flat indices into the old tensor

# float32 holds every integer up to 2**24 exactly; larger tensors are indexed in two parts.
_EXACT = 2 ** 24
_LOW = 2 ** 12


def cut(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[nn.Module, Maps]:
    """`model` (masked) as the masked network of its surviving channels, every mask one, with its
    weights and buffers, in its training mode and on its device; and for every float entry of the
    new state dict (masks aside), the flat indices into `model`'s entry of that name it holds.
    Checked against `model` on a batch of `input_size` (channels, height, width; by default the
    description's, or 3x32x32). A criterion attached to `model` must be detached first:
    its hooks would otherwise be copied."""
    with torch.random.fork_rng(devices=[]):   # building and tracing draw from the global RNG,
        compact, maps = _gather_maps(model)    # which a masked run's dropout would not see
        compact = _masked(compact)
    old = model.state_dict()
    with torch.no_grad():
        for name, tensor in compact.state_dict().items():
            if name in maps:
                tensor.copy_(old[name].flatten()[maps[name].to(old[name].device)]
                             .view(tensor.shape))
            elif is_mask_key(name):
                tensor.fill_(1)
            elif name in old and old[name].shape == tensor.shape:
                tensor.copy_(old[name])   # counters (num_batches_tracked)
            else:
                raise RuntimeError(f"cutting the network left {name} unfilled")
    param = next(model.parameters())
    compact.to(param.device)
    compact.train(model.training)
    _check_same(model, compact, input_size or getattr(model.spec, "input_size", (3, 32, 32)))
    return compact, maps


def cut_tensor(old: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`old`'s entries at `index` (a map from `cut`), shaped and laid out as `like`."""
    out = torch.empty_like(like)
    out.copy_(old.flatten()[index.to(old.device)].view(like.shape))
    return out


def expand(model: nn.Module, spec: Spec, shrunk: Sequence[int],
           history: Sequence[int]) -> dict[str, torch.Tensor]:
    """The full-width masked state dict of `spec`'s network that `model` holds: `model` is that
    network cut after the prunes `shrunk` (a prefix of `history`), masked since as `history`
    says. Pruned channels' entries are zero (their BatchNorm variances one), masks follow
    `history`: what a run that never shrank would save, but for the weights no output reads."""
    with torch.random.fork_rng(devices=[]):
        full = build(spec, masked=True, init="sliced")
        apply_history(full, shrunk)
        _, maps = _gather_maps(full)
    current = model.state_dict()
    with torch.no_grad():
        for name, tensor in full.state_dict().items():
            if is_mask_key(name):
                continue
            if name in maps:
                tensor.fill_(1.0 if name.endswith("running_var") else 0.0)
                values = current[name].detach().to(tensor.device, tensor.dtype).flatten()
                tensor.view(-1)[maps[name]] = values
            elif name in current and current[name].shape == tensor.shape:
                tensor.copy_(current[name])
            elif tensor.is_floating_point():   # a block cut to nothing: none of it survives
                tensor.fill_(1.0 if name.endswith("running_var") else 0.0)
    apply_history(full, history)
    return {name: t.detach().clone() for name, t in full.state_dict().items()}


def surviving(spec: Spec, shrunk: Sequence[int]) -> list[torch.Tensor]:
    """Per block, the original channels a network cut after the prunes `shrunk` holds, in the
    order it holds them (compression keeps channels in order)."""
    return [mask.nonzero().flatten() for mask in masks_from_history(spec, shrunk)]


# -- the indices compression keeps ---------------------------------------------------------------

def _gather_maps(model: nn.Module) -> tuple[nn.Module, Maps]:
    """The unmasked compressed network (its values meaningless) and, per float entry, the flat
    indices into `model`'s entry that compression carried into it."""
    state = model.state_dict()
    floats = [n for n, t in state.items() if t.is_floating_point() and not is_mask_key(n)]
    largest = max((state[n].numel() for n in floats), default=0)
    if largest <= _EXACT:
        compact, codes = _compressed_codes(model, floats, lambda i: i)
        return compact, {n: codes[n] for n in floats if n in codes}
    compact, high = _compressed_codes(model, floats, lambda i: i // _LOW)
    _, low = _compressed_codes(model, floats, lambda i: i % _LOW)
    return compact, {n: high[n] * _LOW + low[n] for n in floats if n in high}


def _compressed_codes(model: nn.Module, names: Sequence[str], code) -> tuple[nn.Module, Maps]:
    from mlprunes.pruning.compress import compress

    probe = _copy(model)
    probe_state = probe.state_dict()
    with torch.no_grad():
        for name in names:
            tensor = probe_state[name]
            index = torch.arange(tensor.numel(), device=tensor.device)
            tensor.copy_(code(index).to(tensor.dtype).view(tensor.shape))
    if isinstance(model.spec, GraphSpec):
        from mlprunes.groups import compress_graph
        compact = compress_graph(probe, check=False)
    else:
        compact = compress(probe)
    wanted = set(names)
    codes = {name: tensor.detach().flatten().round().long()
             for name, tensor in compact.state_dict().items() if name in wanted}
    return compact, codes


def _copy(model: nn.Module) -> nn.Module:
    """A copy of the model to write codes into; a traced network's groups are shared, not copied
    (as compression's own copy does): they read the masks, which the copy does not change."""
    memo = {id(g): g for g in model.__dict__.get("channel_groups", ())}
    return copy.deepcopy(model, memo)


def _masked(compact: nn.Module) -> nn.Module:
    """The unmasked compressed network as a masked one of the same widths."""
    spec = compact.spec
    if isinstance(spec, GraphSpec):
        from mlprunes.groups import install_masks
        device = next(compact.parameters()).device
        install_masks(compact.cpu(), spec)   # traced on the CPU, as its groups were found
        return compact.to(device)
    masked = build(spec, masked=True)
    masked.to(next(compact.parameters()).device)
    return masked


def _check_same(masked: nn.Module, compact: nn.Module, input_size: Sequence[int],
                tolerance: float = 1e-3) -> None:
    """The cut network computes what the masked one did, on a batch, in eval mode: a cut that
    took a wrong channel fails here, not as a silently different run."""
    from mlprunes.groups import output_gap

    gap = output_gap(masked, compact, input_size)
    if gap is None or not gap <= tolerance:
        raise RuntimeError(f"the network cut to its surviving channels computes otherwise than "
                           f"the masked one (largest difference "
                           f"{'shape' if gap is None else f'{gap:.3g}'} of its output's scale)")
