"""Data sets for the search: real images from disk, or random tensors for latency work.

Small data sets (MNIST, Fashion-MNIST, CIFAR-10, synthetic) are held in memory as uint8
tensors and batched by indexing: on a 2-core machine a DataLoader with worker processes
costs more than it saves. Folders of image files go through torchvision's ImageFolder and a
DataLoader sized to the machine. Every split is deterministic for a given seed.
"""

from hwdnal.data.batching import batches
from hwdnal.data.sources import load_data
from hwdnal.data.spec import DATASETS, DEBIAN_FASHION_MNIST, DataSpec, Split, steps_per_epoch

__all__ = [
    "DATASETS", "DEBIAN_FASHION_MNIST", "DataSpec", "Split", "batches", "load_data",
    "steps_per_epoch",
]
