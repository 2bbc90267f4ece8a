"""What every prunable block shares: its middle width, its channel mask, and the observer hook
through which a saliency criterion sees the masked activation."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ActivationObserver = Callable[[torch.Tensor], None]


class PrunableBlock(nn.Module):
    """A block whose middle channels (the outputs of `conv1`, normalised by `bn2`, read by
    `conv2`) can be pruned.

    A masked block multiplies its middle activation by a 0/1 `mask` buffer after bn2-relu (see
    `bn2_relu`); the mask is a buffer, so it saves and loads with the model's state dict. An unmasked block is what compression
    produces: the same block, physically `mid` channels wide.
    """

    # The state-dict entries that carry middle channels, and the axis they lie on. Compression
    # slices exactly these; everything else in a block is copied whole.
    MIDDLE_AXES = {
        "conv1.weight": 0,
        "bn2.weight": 0,
        "bn2.bias": 0,
        "bn2.running_mean": 0,
        "bn2.running_var": 0,
        "conv2.weight": 1,
    }

    def __init__(self, mid: int, masked: bool):
        super().__init__()
        self.mid = mid
        self.masked = masked
        if masked:
            self.register_buffer("mask", torch.ones(mid))
        # Set by a saliency criterion (e.g. Fisher) that needs the masked activation; None
        # keeps the forward pass free of any extra work.
        self.activation_observer: ActivationObserver | None = None
        # A masked block runs bn2 as a function, so hooks on the bn2 module do not fire there;
        # a criterion that watches its layers (Hessian) sees bn2's (input, output) here instead.
        self.bn_observer: Callable[[torch.Tensor, torch.Tensor], None] | None = None

    # -- the interface a pruner and a criterion use (shared with a traced network's groups) --

    def set_mask(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask)

    def drop(self, channel: int) -> None:
        self.mask[channel] = 0

    def filters(self, dead=None) -> torch.Tensor:
        """Each middle channel's filter in the block's first conv, one row per channel (none
        for a block of width 0, which has no conv)."""
        if self.mid == 0:
            return torch.zeros(0, 1)
        return self.conv1.weight.detach().flatten(1)

    def parts(self, dead=None, weight=None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Every weight the middle channels carry, as (kind, rows, channel of each row): the
        first conv's filters ("out"), bn2's scales ("bn"), the second conv's input columns
        ("in"). Magnitude criteria sum over them as over a traced network's channel group.
        (`dead` is a traced network's: a block's inputs are never pruned channels.) `weight`
        reads another tensor of each layer's weight's shape in its place (Hessian's w^2 h)."""
        if self.mid == 0:
            return []
        read = weight or (lambda module: module.weight.detach())
        channels = torch.arange(self.mid, device=self.conv1.weight.device)
        return [("out", read(self.conv1).flatten(1), channels),
                ("bn", read(self.bn2)[:, None], channels),
                ("in", read(self.conv2).transpose(0, 1).flatten(1), channels)]

    def layers(self) -> list[nn.Module]:
        """The layers whose weights `parts` reads."""
        return [] if self.mid == 0 else [self.conv1, self.bn2, self.conv2]

    def observe(self, callback: Callable[[torch.Tensor], None] | None) -> None:
        """Call `callback` once per backward pass with the (N, mid) per-sample sums over
        positions of a * dL/da, a the masked middle activation; None stops observing."""
        if callback is None:
            self.activation_observer = None
            return

        def observer(activation: torch.Tensor) -> None:
            # Hold a detached alias (same storage, already kept alive by conv2 for its
            # backward), so the hook does not make a reference cycle through autograd.
            activation.register_hook(partial(_per_sample, callback, activation.detach()))
        self.activation_observer = observer

    def bn2_relu(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(x)), times the mask when the block is masked: the masked middle activation.

        The mask is folded into bn2's affine parameters instead of multiplying the activation:
        for m in {0, 1}, relu(bn(x)) * m == relu(x_hat * (gamma * m) + beta * m), so the result and
        every gradient are the same, and a C-element product replaces a full-size one in both
        passes (this is what keeps a masked training step near the cost of a plain one).
        """
        bn = self.bn2
        if not self.masked:
            return F.relu(bn(x))
        if bn.training:
            bn.num_batches_tracked.add_(1)
        mask = self.mask.to(bn.weight.dtype)
        y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight * mask, bn.bias * mask,
                         bn.training, bn.momentum, bn.eps)
        if self.bn_observer is not None and y.requires_grad:
            self.bn_observer(x, y)
        h = F.relu(y)
        if self.activation_observer is not None and h.requires_grad:
            self.activation_observer(h)
        return h


def _per_sample(callback, activation: torch.Tensor, grad: torch.Tensor) -> None:
    # In fp32 whatever autocast ran the step in: squares of bf16 products lose the ranking.
    callback((activation.float() * grad.float()).sum(dim=(2, 3)))


def prunable_blocks(model: nn.Module) -> list[PrunableBlock]:
    """The model's prunable blocks in global channel order (the order of `spec.mids`)."""
    return [m for m in model.modules() if isinstance(m, PrunableBlock)]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, padding=0, bias=False)


def init_weights(model: nn.Module) -> None:
    """The paper's init: conv ~ N(0, sqrt(2 / (kh * kw * out))), BN (1, 0), linear bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (kh * kw * m.out_channels)))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
