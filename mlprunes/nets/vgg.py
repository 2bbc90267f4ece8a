"""The CIFAR VGG with batch norm of Liu et al. 2017 (network slimming): conv3x3-BN-ReLU layers
and max pools in the configurations below, global average pooling, one linear classifier.

A plain factory for dependency-graph pruning (Torch-Pruning finds the channel groups), so no
`PrunableBlock`, `ArchSpec` or masks here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mlprunes.nets.prunable import conv3x3

# Network slimming's configurations: a number is a conv3x3-BN-ReLU of that width, "M" a 2x2 max
# pool. Every one ends at 512 channels after four pools (32x32 -> 2x2).
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512],
}


def vgg_config(depth: int) -> list[int | str]:
    # The int check keeps 16.0 (equal to 16 as a dict key) out.
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in VGG_CONFIGS:
        choices = ", ".join(map(str, VGG_CONFIGS))
        raise ValueError(f"VGG depth must be one of {choices}, got {depth!r}")
    return VGG_CONFIGS[depth]


def make_features(config: list[int | str], in_ch: int = 3) -> nn.Sequential:
    """The feature extractor. ReLUs are not in-place, so that module hooks (saliency
    criteria) can see BN outputs."""
    layers: list[nn.Module] = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [conv3x3(in_ch, int(v)), nn.BatchNorm2d(int(v)), nn.ReLU()]
            in_ch = int(v)
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    def __init__(self, depth: int = 16, num_classes: int = 10):
        super().__init__()
        config = vgg_config(depth)
        self.depth = depth
        self.features = make_features(config)
        self.classifier = nn.Linear(int(config[-1]), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling to 1x1 equals the reference's AvgPool2d(2) at 32x32, and works at any size.
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def init_vgg(model: nn.Module) -> None:
    """Network slimming's init: conv ~ N(0, sqrt(2 / (kh * kw * out))), BN weight 0.5 and
    bias 0 (as the reference's models/vgg.py fills it, not PyTorch's 1), linear ~ N(0, 0.01)
    with bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (kh * kw * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def cifar_vgg(depth: int = 16, num_classes: int = 10) -> nn.Module:
    """VGG-`depth` with BN for 3-channel images, freshly initialised."""
    model = CifarVGG(depth, num_classes)
    init_vgg(model)
    return model
