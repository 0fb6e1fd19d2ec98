"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

The CIFAR adaptation used in pruning papers: the stem and the second stage keep stride 1,
so a 32x32 image ends at 4x4 rather than 1x1; widths and expansion ratios are the paper's.
"""

from __future__ import annotations

from torch import Tensor, nn

# expansion, output channels, repeats, first stride
_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1,
            act: bool = True) -> list[nn.Module]:
    """Conv (no bias), BatchNorm and, unless ``act`` is off, ReLU6: MobileNet's unit."""
    layers: list[nn.Module] = [
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inp * expansion
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += conv_bn(inp, hidden, 1, 1)
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += conv_bn(hidden, out, 1, 1, act=False)
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = list(conv_bn(in_channels, 32, 3, 1))
        channels = 32
        for expansion, out, repeats, stride in _STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expansion))
                channels = out
        layers += conv_bn(channels, 1280, 1, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v2_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, in_channels)
