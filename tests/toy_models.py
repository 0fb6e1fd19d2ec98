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
