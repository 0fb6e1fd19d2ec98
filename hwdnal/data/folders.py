"""Image folders (`--data imagefolder`): files decoded by torchvision, unreadable ones named
or skipped, a seeded subset order."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hwdnal.data.spec import STATS, DataSpec
from hwdnal.errors import UserError, first_line


def subset_order(total: int, count: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a deterministic random subset of ``count`` (None: all of them)."""
    if count is None or count >= total:
        return None
    if count < 1:
        raise UserError(f"--train-subset and --test-subset must be at least 1, got {count}")
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:count]


def load_imagefolder(
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
    mean, std = STATS["imagefolder"]
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
            raise UserError(bad_image_message(path, why))
        skipped[path] = why
        return False

    splits = []
    for sub, count, subset_seed in (("train", train_subset, seed), ("val", test_subset, seed + 1)):
        try:
            folder = datasets.ImageFolder(str(root / sub), transform, is_valid_file=readable)
        except FileNotFoundError as error:  # no class folders, or a class with no image
            raise UserError(f"{root / sub}: {error}") from None
        order = subset_order(len(folder), count, subset_seed)
        splits.append((folder, _Images(folder, None if order is None else order.tolist())))
    if skipped:
        say(f"skipped {len(skipped)} unreadable image file(s) in {root} (--skip-bad-images), "
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


def bad_image_message(path: str, why: str) -> str:
    return (f"{path} cannot be read as an image ({why}): remove or replace it, or pass "
            "--skip-bad-images to leave unreadable files out")


def say(line: str) -> None:
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


def collate(items: list[tuple[object, int]]) -> tuple[object, list[tuple[str, str]]]:
    """The batch of the readable images with their positions in the batch (None if none),
    and the unreadable ones' (path, why)."""
    from torch.utils.data import default_collate

    good = [n for n, item in enumerate(items) if not isinstance(item[0], tuple)]
    bad = [item[0] for item in items if isinstance(item[0], tuple)]
    batch = (default_collate([items[n] for n in good]), torch.tensor(good)) if good else None
    return batch, bad
