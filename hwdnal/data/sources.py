"""Where each data set comes from: IDX files (Fashion-MNIST, MNIST, Debian's package or a
folder), CIFAR-10's python batches, an image folder, or synthetic images."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from hwdnal.data.folders import load_imagefolder, subset_order
from hwdnal.data.spec import DATASETS, DEBIAN_FASHION_MNIST, NATIVE_SIZE, STATS, DataSpec, Split
from hwdnal.errors import UserError


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
        return load_imagefolder(data_dir, input_size or 224, train_subset, test_subset, seed,
                                 skip_bad_images)
    else:
        size = input_size or 32
        train, test, classes = _synthetic(size, seed)
    train = _subset(train, train_subset, seed)
    test = _subset(test, test_subset, seed + 1)
    mean, std = STATS[name]
    size = input_size or NATIVE_SIZE.get(name, train.images.shape[-1])
    return DataSpec(name, train, test, classes, train.images.shape[1], size, mean, std)


def _subset(split: Split, count: int | None, seed: int) -> Split:
    order = subset_order(len(split), count, seed)
    return split if order is None else Split(split.images[order], split.labels[order])


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
