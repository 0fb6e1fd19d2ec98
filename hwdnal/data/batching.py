"""Batches for the training loops: in-memory splits sliced and augmented where they lie,
folders through a DataLoader; deterministic, resumable mid-epoch, sharded per rank."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from hwdnal.data.folders import bad_image_message, collate, say
from hwdnal.data.spec import DataSpec, Split
from hwdnal.errors import UserError


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
            source, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
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
                raise UserError(bad_image_message(path, why))
            if path not in data.skipped:
                data.skipped[path] = why
                say(f"skipped unreadable image {path} ({why}): {len(data.skipped)} left "
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
