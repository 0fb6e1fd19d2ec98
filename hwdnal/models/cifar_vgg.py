"""VGG-16 with BatchNorm in the CIFAR form used by channel-pruning papers.

Thirteen 3x3 convolutions (Simonyan & Zisserman's configuration D) with BatchNorm, four
max-pools instead of five so 32x32 inputs keep a spatial extent, global average pooling
and a single linear classifier (as in Li et al. 2017 and Liu et al. 2017).
"""

from __future__ import annotations

from torch import Tensor, nn

_CONFIG_D: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _CONFIG_D:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg16_bn_cifar(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(num_classes, in_channels)
