"""DenseNet-BC-d (growth k): three dense blocks of (d-4)/6 bottleneck layers with transitions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlprunes.arch import ArchSpec
from mlprunes.nets.prunable import PrunableBlock, conv1x1, conv3x3, init_weights


def transition_out(channels: int, reduction: float) -> int:
    return int(math.floor(channels * reduction))


class DenseLayer(PrunableBlock):
    """bn1-relu-conv1x1(mid)-bn2-relu-[mask]-conv3x3(growth), concatenated to its input.

    With `mid == 0` the layer has no weights and contributes `growth` zero channels, so every
    shape downstream is unchanged.
    """

    def __init__(self, in_ch: int, mid: int, growth: int, masked: bool = False):
        super().__init__(mid, masked)
        self.growth = growth
        if mid > 0:
            self.bn1 = nn.BatchNorm2d(in_ch)
            self.conv1 = conv1x1(in_ch, mid)
            self.bn2 = nn.BatchNorm2d(mid)
            self.conv2 = conv3x3(mid, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mid == 0:
            n, _, h, w = x.shape
            return torch.cat([x, x.new_zeros(n, self.growth, h, w)], 1)
        h = self.conv1(F.relu(self.bn1(x)))
        h = self.bn2_relu(h)
        return torch.cat([x, self.conv2(h)], 1)


class Transition(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch)
        self.conv = conv1x1(in_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(nn.Module):
    def __init__(self, spec: ArchSpec, masked: bool = False):
        super().__init__()
        if spec.family != "densenet":
            raise ValueError(f"DenseNetBC needs a densenet description, got {spec.family!r}")
        self.spec = spec
        k = spec.growth
        channels = 2 * k
        self.conv1 = conv3x3(3, channels)
        mids = iter(spec.mids)
        stages = []
        for stage in range(3):
            for _ in range(spec.blocks_per_stage):
                stages.append(DenseLayer(channels, next(mids), k, masked))
                channels += k
            if stage < 2:
                out = transition_out(channels, spec.reduction)
                stages.append(Transition(channels, out))
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, spec.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv1(x))
        x = F.relu(self.bn(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
