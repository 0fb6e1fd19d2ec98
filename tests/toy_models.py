"""Models defined only here, to show that gating and pruning need no per-model code."""

from __future__ import annotations

import torch
from torch import nn


class ConcatGroupedNet(nn.Module):
    """Two branches concatenated into a grouped convolution whose groups straddle both."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.branch_a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
        self.branch_b = nn.Sequential(nn.Conv2d(16, 16, 1, bias=True), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 24, 3, padding=1, groups=4, bias=False),
                                     nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(24, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.hidden = nn.Linear(32, 20)
        self.fc = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.head(self.grouped(x))
        return self.fc(torch.relu(self.hidden(self.pool(x).flatten(1))))


def concat_grouped_net(num_classes: int = 10, in_channels: int = 3) -> ConcatGroupedNet:
    return ConcatGroupedNet(num_classes, in_channels)


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """A channel shuffle written with reshape and permute (torchvision uses view/transpose)."""
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


class ShuffleNet(nn.Module):
    """Grouped 1×1 convolutions, a 3-group channel shuffle, chunk into halves, residuals."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 24, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(24), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(24, 36, 1, groups=3, bias=False),
                                    nn.BatchNorm2d(36), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(36, 36, 3, padding=1, groups=36, bias=False),
                                       nn.BatchNorm2d(36))
        self.project = nn.Sequential(nn.Conv2d(36, 24, 1, groups=3, bias=False),
                                     nn.BatchNorm2d(24))
        self.branch = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, bias=True), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(24, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = _shuffle(self.expand(x), 3)  # ShuffleNet V1: shuffle between grouped convs
        x = torch.relu(x + self.project(self.depthwise(y)))
        keep, work = x.chunk(2, dim=1)  # ShuffleNet V2: half passes, half is transformed
        x = torch.cat([keep, self.branch(work)], dim=1)
        b, c, h, w = x.shape  # torchvision's channel_shuffle, inlined
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        x = self.head(x)
        return self.fc(x.mean((2, 3)))


def shuffle_net(num_classes: int = 10, in_channels: int = 3) -> ShuffleNet:
    return ShuffleNet(num_classes, in_channels)


class RotatedSplitNet(nn.Module):
    """Rotates its channels with split + cat into one operation: torch-pruning cannot map it."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU())
        self.mix = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).split([6, 10], dim=1)
        x = self.mix(torch.cat([b, a], dim=1))
        return self.fc(x.mean((2, 3)))


class SharedConvNet(nn.Module):
    """A convolution feeding both its BatchNorm and, directly, another layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.side = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        x = torch.cat([torch.relu(self.bn(y)), self.side(y)], dim=1)
        return self.fc(x.mean((2, 3)))


def tiny_supernet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A supernet small enough to search in a test: 4 searchable layers of 2 candidates."""
    from hwdnal.models.proxyless_supernet import ProxylessSupernet

    return ProxylessSupernet(num_classes, in_channels, candidates=((3, 3), (5, 6)),
                             stages=((8, 2, 1), (16, 2, 2)), stem_stride=1, stem=8, first=8,
                             last=32)
