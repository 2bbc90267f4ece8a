"""WRN-d-k, pre-activation, as in the paper: three stages of (d-4)/6 blocks, strides 1, 2, 2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlprunes.arch import ArchSpec
from mlprunes.nets.prunable import PrunableBlock, conv1x1, conv3x3, init_weights


def needs_shortcut_conv(in_ch: int, out_ch: int, stride: int) -> bool:
    return in_ch != out_ch or stride != 1


class WideBlock(PrunableBlock):
    """bn1-relu-conv3x3(stride)-bn2-relu-[mask]-conv3x3, plus the shortcut: identity, or a 1x1
    strided conv on the pre-activated input when the shape changes.

    With `mid == 0` the residual branch is gone and the block is its shortcut; bn1 then exists
    only if the shortcut conv reads the pre-activated input.
    """

    def __init__(self, in_ch: int, mid: int, out_ch: int, stride: int, masked: bool = False):
        super().__init__(mid, masked)
        self.shortcut = conv1x1(in_ch, out_ch, stride) if needs_shortcut_conv(
            in_ch, out_ch, stride) else None
        if mid > 0 or self.shortcut is not None:
            self.bn1 = nn.BatchNorm2d(in_ch)
        if mid > 0:
            self.conv1 = conv3x3(in_ch, mid, stride)
            self.bn2 = nn.BatchNorm2d(mid)
            self.conv2 = conv3x3(mid, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mid == 0 and self.shortcut is None:
            return x
        pre = F.relu(self.bn1(x))
        out = x if self.shortcut is None else self.shortcut(pre)
        if self.mid > 0:
            h = self.bn2_relu(self.conv1(pre))
            out = out + self.conv2(h)
        return out


class WideResNet(nn.Module):
    def __init__(self, spec: ArchSpec, masked: bool = False):
        super().__init__()
        if spec.family != "wrn":
            raise ValueError(f"WideResNet needs a wrn description, got {spec.family!r}")
        self.spec = spec
        channels = spec.stage_channels
        self.conv1 = conv3x3(3, channels[0])
        blocks = []
        in_ch = channels[0]
        mids = iter(spec.mids)
        for stage, out_ch in enumerate(channels[1:]):
            for b in range(spec.blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(WideBlock(in_ch, next(mids), out_ch, stride, masked))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_ch)
        self.fc = nn.Linear(in_ch, spec.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(x))
        x = F.relu(self.bn(x))
        # Global pooling over whatever spatial size is left, so any input size works.
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
