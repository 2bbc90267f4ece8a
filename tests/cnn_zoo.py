"""Small networks for the any-CNN tests, built by `package.module:factory` (`cnn_zoo:branchy`).

Imported by name (`cnn_zoo`), through `MLPRUNES_ALLOWED_MODULES`: this file's folder must be on
`sys.path` (tests/test_any_cnn.py puts it there). Every factory takes `num_classes`, as a
builder must.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
             ) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(cout))


class Residual(nn.Module):
    """relu(bn(conv3x3(x)) + bn(conv1x1(x))): one channel group with two producers."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.a = _conv_bn(cin, cout, 3)
        self.b = _conv_bn(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x) + self.b(x))


class Concat(nn.Module):
    """cat(relu(bn(conv3x3(x))), relu(bn(conv1x1(x)))) along the channels."""

    def __init__(self, cin: int, left: int, right: int):
        super().__init__()
        self.left = _conv_bn(cin, left, 3)
        self.right = _conv_bn(cin, right, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)


class Branchy(nn.Module):
    """stem -> residual add -> concatenation -> depthwise conv -> 1x1 conv -> global pool ->
    a hidden linear layer -> linear classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, stride=2)
        self.res = Residual(8, 8)
        self.cat = Concat(8, 6, 4)
        self.dw = _conv_bn(10, 10, 3, stride=2, groups=10)
        self.head = _conv_bn(10, 12, 1)
        self.hidden = nn.Linear(12, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = self.res(x)
        x = self.cat(x)
        x = torch.relu(self.dw(x))
        x = torch.relu(self.head(x))
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(torch.relu(self.hidden(x)))


# Which modules produce each channel group of `branchy` under --groups all, written out by hand
# (not read from mlprunes): the layers whose output a channel's mask multiplies, each with the
# first of its output channels that the group covers (group channel j is its channel first + j).
BRANCHY_PRODUCERS = {
    "stem.0": [("stem.1", 0)],
    "res.a.0": [("res.a.1", 0), ("res.b.1", 0)],
    "cat.left.0": [("cat.left.1", 0), ("dw.1", 0)],     # dw channels 0..5 are left's
    "cat.right.0": [("cat.right.1", 0), ("dw.1", 6)],   # dw channels 6..9 are right's
    "head.0": [("head.1", 0)],
    "hidden": [("hidden", 0)],   # a linear layer no BN follows carries its own mask
}


class ConvClassifier(nn.Module):
    """SqueezeNet's ending: the classifier is a 1x1 conv, then global average pooling."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(_conv_bn(3, 8, 3, 2), nn.ReLU(), _conv_bn(8, 12, 3, 2),
                                      nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(12, num_classes, 1),
                                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Grouped(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, 2)
        self.mix = _conv_bn(8, 8, 3, groups=2)   # grouped, not depthwise
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mix(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Shared(nn.Module):
    """One conv applied twice (weight sharing): a layer called more than once per forward."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, 2)
        self.block = nn.Conv2d(8, 8, 3, 1, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.block(x))
        x = torch.relu(self.block(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Gated(nn.Module):
    """A sigmoid between a BN and the conv that reads it: a channel masked at its BN reads as
    sigmoid(0) = 0.5 downstream, not as the channel removed."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 8, 3, 2)
        self.conv = _conv_bn(8, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(torch.sigmoid(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def branchy(num_classes: int = 10) -> nn.Module:
    return Branchy(num_classes)


def conv_classifier(num_classes: int = 10) -> nn.Module:
    return ConvClassifier(num_classes)


def grouped(num_classes: int = 10) -> nn.Module:
    return Grouped(num_classes)


def shared(num_classes: int = 10) -> nn.Module:
    return Shared(num_classes)


def gated(num_classes: int = 10) -> nn.Module:
    return Gated(num_classes)


def broken(num_classes: int = 10) -> nn.Module:
    raise RuntimeError("boom")


def not_a_module(num_classes: int = 10):
    return 42
