"""Data sets for the search: real images from disk, or random tensors for latency work.

Small data sets (MNIST, Fashion-MNIST, CIFAR-10, synthetic) are held in memory as uint8
tensors and batched by indexing: on a 2-core machine a DataLoader with worker processes
costs more than it saves. Folders of image files go through torchvision's ImageFolder and a
DataLoader sized to the machine. Every split is deterministic for a given seed.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwdnal.errors import UserError, first_line

DATASETS = ("fashion-mnist", "mnist", "cifar10", "imagefolder", "synthetic")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_STATS = {  # per-channel mean and std of the training images, in [0, 1]
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
_NATIVE_SIZE = {"fashion-mnist": 28, "mnist": 28, "cifar10": 32}


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


def load_data(
    name: str,
    data_dir: str | Path | None = None,
    input_size: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> DataSpec:
    """Load ``name`` (one of :data:`DATASETS`) with deterministic subsets.

    ``skip_bad_images``: image files of an ``imagefolder`` that cannot be read are left out
    and counted (on stderr) instead of stopping the run with the file's name.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}': use one of {', '.join(DATASETS)}")
    if name in ("fashion-mnist", "mnist"):
        train, test, classes = _load_idx(name, data_dir)
    elif name == "cifar10":
        train, test, classes = _load_cifar10(data_dir)
    elif name == "imagefolder":
        return _load_imagefolder(data_dir, input_size or 224, train_subset, test_subset, seed,
                                 skip_bad_images)
    else:
        size = input_size or 32
        train, test, classes = _synthetic(size, seed)
    train = _subset(train, train_subset, seed)
    test = _subset(test, test_subset, seed + 1)
    mean, std = _STATS[name]
    size = input_size or _NATIVE_SIZE.get(name, train.images.shape[-1])
    return DataSpec(name, train, test, classes, train.images.shape[1], size, mean, std)


def _subset(split: Split, count: int | None, seed: int) -> Split:
    order = _subset_order(len(split), count, seed)
    return split if order is None else Split(split.images[order], split.labels[order])


def _subset_order(total: int, count: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a deterministic random subset of ``count`` (None: all of them)."""
    if count is None or count >= total:
        return None
    if count < 1:
        raise UserError(f"--train-subset and --test-subset must be at least 1, got {count}")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]


# -- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_idx_dir(name: str, data_dir: str | Path | None) -> Path:
    candidates = [Path(data_dir)] if data_dir else []
    if name == "fashion-mnist" and not data_dir:
        candidates.append(DEBIAN_FASHION_MNIST)
    if not data_dir:
        candidates.append(Path("data") / name)
    torchvision_folder = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    for folder in candidates:
        for place in (folder, folder / torchvision_folder / "raw"):
            first = place / _IDX_FILES["train"][0]
            if first.exists() or first.with_name(first.name + ".gz").exists():
                return place
    where = ", ".join(str(c) for c in candidates)
    hint = (
        "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
        if name == "fashion-mnist"
        else ""
    )
    raise UserError(
        f"no {name} IDX files (train-images-idx3-ubyte[.gz] ...) found in {where}: {hint}"
        f"run `make data` (torchvision's downloader, needs internet) or download the four "
        "files and pass --data-dir FOLDER"
    )


def _read_idx(path: Path) -> np.ndarray:
    if not path.exists():
        path = path.with_name(path.name + ".gz")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08 or ndim < 1:
            raise ValueError("bad magic number")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return array.reshape(shape)
    except (OSError, EOFError, ValueError, struct.error) as error:
        raise UserError(
            f"{path} is not a valid IDX file ({error}): download it again"
        ) from None


def _load_idx(name: str, data_dir: str | Path | None) -> tuple[Split, Split, int]:
    folder = _find_idx_dir(name, data_dir)
    splits = []
    for images_name, labels_name in _IDX_FILES.values():
        images = _read_idx(folder / images_name)
        labels = _read_idx(folder / labels_name)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"{folder}: {images_name} and {labels_name} do not match "
                f"({images.shape} images, {labels.shape} labels): download them again"
            )
        images_tensor = torch.from_numpy(images.copy()).unsqueeze(1)
        splits.append(Split(images_tensor, torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1], 10


# -- CIFAR-10 (python batches) ------------------------------------------------------------
def _load_cifar10(data_dir: str | Path | None) -> tuple[Split, Split, int]:
    if not data_dir:
        raise UserError(
            "cifar10 needs --data-dir: the folder 'cifar-10-batches-py' from "
            "cifar-10-python.tar.gz (no package ships CIFAR-10 offline)"
        )
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"

    def read(names: list[str]) -> Split:
        images, labels = [], []
        for batch_name in names:
            path = folder / batch_name
            try:
                with open(path, "rb") as handle:
                    batch = pickle.load(handle, encoding="bytes")
                images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(int(v) for v in batch[b"labels"])
            except FileNotFoundError:
                raise UserError(
                    f"{path} is missing: --data-dir must hold CIFAR-10's python batches "
                    "(data_batch_1..5 and test_batch)"
                ) from None
            except Exception as error:
                raise UserError(f"{path} is not a CIFAR-10 python batch ({error})") from None
        return Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels))

    return read([f"data_batch_{i}" for i in range(1, 6)]), read(["test_batch"]), 10


# -- synthetic ----------------------------------------------------------------------------
def _synthetic(size: int, seed: int, classes: int = 10) -> tuple[Split, Split, int]:
    """Random images with a learnable signal: each class brightens its own stripe."""
    generator = torch.Generator().manual_seed(seed)

    def make(count: int) -> Split:
        labels = torch.randint(0, classes, (count,), generator=generator)
        images = torch.randint(0, 160, (count, 3, size, size), generator=generator)
        stripe = max(size // classes, 1)
        for c in range(classes):
            rows = slice(c * stripe, (c + 1) * stripe)
            images[labels == c, :, rows, :] += 90
        return Split(images.clamp(0, 255).to(torch.uint8), labels)

    return make(2048), make(512), classes


# -- image folders ------------------------------------------------------------------------
def _load_imagefolder(
    data_dir: str | Path | None,
    size: int,
    train_subset: int | None,
    test_subset: int | None,
    seed: int,
    skip_bad_images: bool,
) -> DataSpec:
    """``train/`` and ``val/`` with a folder per class; every image resized and centre-cropped
    to ``size``; augmentation (as for the other data sets) happens in :func:`batches`."""
    from torchvision import datasets, transforms
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    if not data_dir:
        raise UserError("imagefolder needs --data-dir with train/ and val/ subfolders")
    root = Path(data_dir)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise UserError(f"{root / sub} is missing: imagefolder needs train/ and val/ "
                            "subfolders with one folder per class")
    mean, std = _STATS["imagefolder"]
    transform = transforms.Compose([
        transforms.Resize(int(size * 1.14)), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    skipped: dict[str, str] = {}

    def readable(path: str) -> bool:
        if not has_file_allowed_extension(path, IMG_EXTENSIONS):
            return False
        why = _unreadable(path)
        if why is None:
            return True
        if not skip_bad_images:
            raise UserError(_bad_image_message(path, why))
        skipped[path] = why
        return False

    splits = []
    for sub, count, subset_seed in (("train", train_subset, seed), ("val", test_subset, seed + 1)):
        try:
            folder = datasets.ImageFolder(str(root / sub), transform, is_valid_file=readable)
        except FileNotFoundError as error:  # no class folders, or a class with no image
            raise UserError(f"{root / sub}: {error}") from None
        order = _subset_order(len(folder), count, subset_seed)
        splits.append((folder, _Images(folder, None if order is None else order.tolist())))
    if skipped:
        _say(f"skipped {len(skipped)} unreadable image file(s) in {root} (--skip-bad-images), "
             f"e.g. {next(iter(skipped))}")
    (train_folder, train), (_, test) = splits
    return DataSpec("imagefolder", train, test, len(train_folder.classes), 3, size, mean, std,
                    skip_bad_images, skipped)


def _unreadable(path: str) -> str | None:
    """Why PIL cannot open ``path`` as an image (its header), or None when it can."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - the header is parsed
    except Exception as error:
        return f"{type(error).__name__}: {first_line(error)}"
    return None


def _bad_image_message(path: str, why: str) -> str:
    return (f"{path} cannot be read as an image ({why}): remove or replace it, or pass "
            "--skip-bad-images to leave unreadable files out")


def _say(line: str) -> None:
    print(line, file=sys.stderr)


class _Images(torch.utils.data.Dataset):
    """An ImageFolder (or a subset of it) whose unreadable files arrive as ``(path, why)``
    in place of the image, for :func:`batches` to stop with the file's name or skip."""

    def __init__(self, folder: torch.utils.data.Dataset, indices: list[int] | None) -> None:
        self.folder = folder
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.folder)

    def __getitem__(self, index: int) -> tuple[object, int]:
        if self.indices is not None:
            index = self.indices[index]
        path, label = self.folder.samples[index]
        try:
            return self.folder[index]
        except Exception as error:  # e.g. a truncated file: its header read, its pixels not
            return (path, f"{type(error).__name__}: {first_line(error)}"), label


def _collate(items: list[tuple[object, int]]) -> tuple[object, list[tuple[str, str]]]:
    """The batch of the readable images with their positions in the batch (None if none),
    and the unreadable ones' (path, why)."""
    from torch.utils.data import default_collate

    good = [n for n, item in enumerate(items) if not isinstance(item[0], tuple)]
    bad = [item[0] for item in items if isinstance(item[0], tuple)]
    batch = (default_collate([items[n] for n in good]), torch.tensor(good)) if good else None
    return batch, bad


# -- batching -----------------------------------------------------------------------------
def batches(
    data: DataSpec,
    split: str,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    augment: bool = False,
    skip: int = 0,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches; in-memory splits are sliced, folders use a DataLoader.

    ``skip`` leaves out the first batches of the (deterministic) order, drawing their random
    augmentation all the same, so that an epoch resumed half-way sees the batches it would
    have seen. ``shard = (rank, world)``: ``batch_size`` is the global batch, and this
    process gets every world-th image of each one, augmented as it would be alone.
    In-memory splits stay where :meth:`DataSpec.to_device` put them (on a GPU, batches are
    cut, normalised and augmented there).
    """
    source = data.train if split == "train" else data.test
    if not isinstance(source, Split):
        yield from _folder_batches(data, split, source, batch_size, shuffle, seed, augment,
                                   skip, shard)
        return
    device = source.images.device
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255
    generator = torch.Generator().manual_seed(seed)
    count = len(source)
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    order = order.to(device, non_blocking=True)
    stop = len(order) - (len(order) % batch_size if shuffle and len(order) > batch_size else 0)
    for number, start in enumerate(range(0, stop, batch_size)):
        index = order[start : start + batch_size]
        flips, shift = _augmentation(len(index), generator) if augment else (None, None)
        if number < skip:
            continue
        if shard is not None:
            index = index[shard[0] :: shard[1]]
            flips = flips[shard[0] :: shard[1]] if flips is not None else None
        images = (source.images[index].float() - mean) / std
        if images.shape[-1] != data.input_size:
            images = F.interpolate(
                images, size=data.input_size, mode="bilinear", align_corners=False
            )
        if flips is not None and shift is not None:
            images = _augment(images, flips.to(device, non_blocking=True), shift)
        yield images, source.labels[index]


class _GlobalBatches(torch.utils.data.Sampler):
    """Index lists of a seeded order cut into global batches, this rank's share of each.

    One sampler serves every epoch of a persistent DataLoader: :meth:`restart` sets the
    epoch's seed and the batches to skip before the loader is iterated again.
    """

    def __init__(self, count: int, batch_size: int, shuffle: bool,
                 shard: tuple[int, int] | None) -> None:
        self.count, self.batch_size, self.shuffle, self.shard = count, batch_size, shuffle, shard
        self.seed = 0
        self.skip = 0

    def restart(self, seed: int, skip: int) -> None:
        self.seed, self.skip = seed, skip

    def _stop(self) -> int:
        """Images used per epoch: a shuffled epoch drops its last, partial batch."""
        size = self.batch_size
        return self.count - (self.count % size if self.shuffle and self.count > size else 0)

    def batch_sizes(self) -> list[int]:
        """The global batches' sizes, every one of the epoch (skipped ones included)."""
        stop = self._stop()
        return [min(self.batch_size, stop - start) for start in range(0, stop, self.batch_size)]

    def _global(self) -> list[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.arange(self.count)
        size = self.batch_size
        return [order[start : start + size].tolist() for start in range(0, self._stop(), size)]

    def __iter__(self) -> Iterator[list[int]]:
        for number, batch in enumerate(self._global()):
            if number < self.skip:
                continue
            yield batch if self.shard is None else batch[self.shard[0] :: self.shard[1]]

    def __len__(self) -> int:
        return max(len(self.batch_sizes()) - self.skip, 0)


def _folder_batches(
    data: DataSpec,
    split: str,
    source: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    augment: bool,
    skip: int,
    shard: tuple[int, int] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of an image folder through a DataLoader, augmented as the in-memory sets are;
    an unreadable file stops with its name, or is left out with ``skip_bad_images``.

    The loader and its worker processes live as long as the data set (persistent workers),
    so an epoch does not pay for starting them; batches come in pinned memory when training
    on a GPU, for copies that overlap the computation.
    """
    generator = torch.Generator().manual_seed(seed)
    key = (split, batch_size, shuffle, shard)
    loader = data.loaders.get(key)
    if loader is None:
        sampler = _GlobalBatches(len(source), batch_size, shuffle, shard)
        workers = _workers()
        loader = torch.utils.data.DataLoader(
            source, batch_sampler=sampler, num_workers=workers, collate_fn=_collate,
            pin_memory=data.pin_memory, persistent_workers=workers > 0,
        )
        data.loaders[key] = loader
    sampler = loader.batch_sampler
    assert isinstance(sampler, _GlobalBatches)
    sampler.restart(seed, skip)
    draws = [_augmentation(count, generator) if augment else (None, None)
             for count in sampler.batch_sizes()]
    for index, (batch, bad) in enumerate(loader, start=skip):
        for path, why in bad:
            if not data.skip_bad_images:
                raise UserError(_bad_image_message(path, why))
            if path not in data.skipped:
                data.skipped[path] = why
                _say(f"skipped unreadable image {path} ({why}): {len(data.skipped)} left "
                     "out so far (--skip-bad-images)")
        if batch is None:
            continue
        (images, labels), good = batch
        flips, shift = draws[index]
        if flips is not None and shift is not None:
            if shard is not None:
                flips = flips[shard[0] :: shard[1]]
            images = _augment(images, flips[good], shift)
        yield images, labels


def steps_per_epoch(data: DataSpec, batch_size: int) -> int:
    count = len(data.train)
    return max(count // batch_size, 1)


_PAD = 2


def _augmentation(count: int, generator: torch.Generator) -> tuple[torch.Tensor, list[int]]:
    """Random flips (a CPU tensor) and one random crop offset per batch (plain numbers: the
    loop reads no tensor for it)."""
    flips = torch.rand(count, generator=generator) < 0.5
    shift = torch.randint(0, 2 * _PAD + 1, (2,), generator=generator).tolist()
    return flips, shift


def _augment(images: torch.Tensor, flips: torch.Tensor, shift: list[int]) -> torch.Tensor:
    """Random horizontal flips and random crops with 2-pixel padding, on the whole batch."""
    images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    padded = F.pad(images, (_PAD, _PAD, _PAD, _PAD))
    dx, dy = shift
    size = images.shape[-1]
    return padded[..., dy : dy + size, dx : dx + size]


def _workers() -> int:
    return max(min((os.cpu_count() or 1) - 1, 8), 0)
