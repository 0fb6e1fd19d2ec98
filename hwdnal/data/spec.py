"""A data set as the search sees it: its splits, classes, image size and normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


STATS = {  # per-channel mean and std of the training images, in [0, 1]
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


NATIVE_SIZE = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32}


@dataclass
class Split:
    """Images (uint8, N×C×H×W) and labels (int64) held in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataSpec:
    name: str
    train: Split | torch.utils.data.Dataset
    test: Split | torch.utils.data.Dataset
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: image folders: leave out files that cannot be read (else they are an error)
    skip_bad_images: bool = False
    #: the files left out so far, each with why
    skipped: dict[str, str] = field(default_factory=dict)
    #: image folders: batches in pinned memory (set by :meth:`to_device` for a GPU)
    pin_memory: bool = False
    #: image folders: one DataLoader per (split, batch, shuffle, shard), kept for its workers
    loaders: dict[tuple, torch.utils.data.DataLoader] = field(default_factory=dict, repr=False)

    def to_device(self, device: str | torch.device) -> DataSpec:
        """Keep in-memory splits on ``device`` (a GPU holds Fashion-MNIST or CIFAR-10 many
        times over): batches are then cut, normalised and augmented there, with no copy per
        step. Image folders stay on disk and arrive in pinned memory instead."""
        device = torch.device(device)
        for name in ("train", "test"):
            split = getattr(self, name)
            if isinstance(split, Split):
                setattr(self, name, Split(split.images.to(device), split.labels.to(device)))
        self.pin_memory = device.type == "cuda"
        return self

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, self.in_channels, self.input_size, self.input_size)


def steps_per_epoch(data: DataSpec, batch_size: int) -> int:
    count = len(data.train)
    return max(count // batch_size, 1)
