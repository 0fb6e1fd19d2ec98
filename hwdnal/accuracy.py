"""The deployed file's accuracy, checked, not assumed.

The file a user ships (FP32 or Q/DQ INT8 ONNX, an FP16 or INT8 TensorRT engine) runs on the
target's device through its :class:`~hwdnal.devices.Measurer` on the run's held-out images,
in the target's batch, and its top-1 is compared with the PyTorch network's on the very same
images (the reference), along with how often the two predict the same class. Compile
refuses a file that loses more than its allowed drop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from hwdnal.data import DataSpec
    from hwdnal.devices import Deployable, Measurer

#: held-out images the deployed file is checked on by default
ACCURACY_IMAGES = 1000
#: the most top-1 (percentage points) the deployed file may lose against PyTorch by default
MAX_ACCURACY_DROP = 1.0
#: arrays per request to the device: a remote request stays small
RUN_CHUNK = 256
#: and at most this many bytes of inputs per request
RUN_CHUNK_BYTES = 32 << 20


@dataclass(frozen=True)
class HeldOut:
    """Labelled held-out images, normalised as the network sees them (N×C×H×W float32)."""

    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    source: str = "held-out images"

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class AccuracyCheck:
    """Top-1 (0..1) of the PyTorch network and of the deployed file on the same images."""

    reference: float
    deployed: float
    images: int
    agreement: float
    source: str = ""

    @property
    def drop_pp(self) -> float:
        """What the deployed file loses against the reference, in percentage points."""
        return (self.reference - self.deployed) * 100.0

    @property
    def change_pp(self) -> float:
        """The deployed top-1 minus the reference's, in percentage points (+: it gains)."""
        return (self.deployed - self.reference) * 100.0

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "deployed": self.deployed, "images": self.images,
                "agreement": self.agreement, "drop_pp": round(self.drop_pp, 4),
                "source": self.source}


def held_out_images(data: DataSpec, count: int = ACCURACY_IMAGES, source: str = "") -> HeldOut:
    """The first ``count`` test images of ``data`` and their labels (a fixed order)."""
    from hwdnal.data import batches

    images, labels, have = [], [], 0
    for chunk, chunk_labels in batches(data, "test", 256, shuffle=False):
        images.append(chunk.numpy())
        labels.append(chunk_labels.numpy())
        have += len(chunk_labels)
        if have >= count:
            break
    if not images:
        return HeldOut(np.zeros((0,), np.float32), np.zeros((0,), np.int64), source)
    return HeldOut(np.concatenate(images)[:count].astype(np.float32),
                   np.concatenate(labels)[:count].astype(np.int64),
                   source or f"{data.name} test images")


def check_accuracy(
    model: nn.Module,
    measurer: Measurer,
    deployable: Deployable,
    held_out: HeldOut,
    input_shape: Sequence[int],
) -> AccuracyCheck:
    """Top-1 of ``model`` (PyTorch, on this machine, in eval mode) and of ``deployable`` (on
    the device, in batches of ``input_shape``: the last batch is padded with zeros and the
    padding's outputs are dropped) on ``held_out``."""
    import torch

    shape = tuple(int(d) for d in input_shape)
    batches = list(_batched(held_out.images, shape))
    with torch.no_grad():  # eval mode: PyTorch's answers do not depend on the batch
        reference = np.concatenate([
            model(torch.from_numpy(held_out.images[start : start + RUN_CHUNK])).float().numpy()
            for start in range(0, len(held_out), RUN_CHUNK)
        ])
    deployed_outputs: list[np.ndarray] = []
    for chunk in _chunks(batches):
        deployed_outputs += [np.asarray(o, dtype=np.float32).reshape(len(b), -1)
                             for o, b in zip(measurer.run(deployable, chunk), chunk,
                                             strict=True)]
    deployed = np.concatenate(deployed_outputs)[: len(held_out)]
    want, got = reference.argmax(axis=1), deployed.argmax(axis=1)
    n = len(held_out)
    return AccuracyCheck(
        reference=float((want == held_out.labels).mean()),
        deployed=float((got == held_out.labels).mean()),
        images=n,
        agreement=float((want == got).mean()),
        source=held_out.source,
    )


def _batched(images: np.ndarray, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    batch = shape[0]
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        if len(part) < batch:
            part = np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]),
                                                  dtype=np.float32)])
        yield np.ascontiguousarray(part.reshape(shape), dtype=np.float32)


def _chunks(arrays: list[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """Requests of at most :data:`RUN_CHUNK` arrays and :data:`RUN_CHUNK_BYTES` bytes."""
    chunk: list[np.ndarray] = []
    size = 0
    for array in arrays:
        if chunk and (len(chunk) >= RUN_CHUNK or size + array.nbytes > RUN_CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(array)
        size += array.nbytes
    if chunk:
        yield chunk
