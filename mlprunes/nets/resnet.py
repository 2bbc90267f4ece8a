"""He et al. 2016's CIFAR ResNet-d (d = 6n + 2): a 16-channel stem, three stages of n basic
blocks at 16, 32, 64 channels (strides 1, 2, 2), global pooling and one linear layer.

A plain factory for dependency-graph pruning (Torch-Pruning finds the channel groups), so no
`PrunableBlock`, `ArchSpec` or masks here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlprunes.nets.prunable import conv3x3

DEPTH_RULE = "ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110)"


def blocks_per_stage(depth: int) -> int:
    """n for depth 6n + 2; anything else is a ValueError naming the rule."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"{DEPTH_RULE}, got {depth!r}")
    return (depth - 2) // 6


class PadShortcut(nn.Module):
    """He et al.'s option A, parameter-free: subsample by `stride`, then zero-pad `extra`
    channels, all of them after the input's (He et al.'s text says only "padded"; common
    reimplementations split them extra//2 before and the rest after).

    All-after keeps input channel i at output channel i. Torch-Pruning does not see the zeros
    (they are not in the autograd graph), so it links a block's output channel i to its input
    channel i; with the zeros in front that link would point at the wrong channel. It also means
    that on the residual stream only channels below the narrower stage's width can be pruned
    through this shortcut: Torch-Pruning passes a padded-range index on to the previous stage,
    which has no such channel (it lowers that stage's `out_channels`/`num_features` but keeps its
    weights), and the forward pass then fails on a shape mismatch. `extra` is fixed on purpose,
    so that this fails loudly instead of leaving the model out of step with its attributes.
    """

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride = stride
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sub = x[:, :, ::self.stride, ::self.stride]
        # F.pad's last pair pads dim 1 (channels): (W left, W right, H top, H bottom, C, C).
        return F.pad(sub, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra={self.extra}"


class BasicBlock(nn.Module):
    """conv3x3(stride)-bn1-relu-conv3x3-bn2, plus the shortcut, then relu."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        if stride != 1 or in_ch != out_ch:
            if out_ch < in_ch:
                raise ValueError(f"option-A shortcut cannot narrow {in_ch} to {out_ch} channels")
            self.shortcut: nn.Module = PadShortcut(stride, out_ch - in_ch)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        # Shortcut first: Torch-Pruning infers an add's channel count from its last operand,
        # and through the padded shortcut it would count only the unpadded channels (and then
        # map fc's inputs wrongly).
        return F.relu(self.shortcut(x) + out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 56, num_classes: int = 10, width: float = 1):
        super().__init__()
        n = blocks_per_stage(depth)
        channels = [int(c * width) for c in (16, 32, 64)]
        if min(channels) < 1:
            raise ValueError(f"ResNet width must leave every stage a channel, got {width!r}")
        self.depth = depth
        self.conv1 = conv3x3(3, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0])
        in_ch = channels[0]
        stages = []
        for out_ch, stride in zip(channels, (1, 2, 2)):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(in_ch, out_ch, stride if b == 0 else 1))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        # Global pooling over whatever spatial size is left, so any input size works.
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def init_resnet(model: nn.Module) -> None:
    """He et al.'s init: conv kaiming-normal (fan_out, relu), BN (1, 0); linear keeps
    PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(depth: int = 56, num_classes: int = 10, width: float = 1) -> nn.Module:
    """ResNet-`depth` for 3-channel images, stage widths 16, 32, 64 times `width`, freshly
    initialised."""
    model = CifarResNet(depth, num_classes, width)
    init_resnet(model)
    return model
