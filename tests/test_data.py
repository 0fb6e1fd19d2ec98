"""Data loading: IDX and CIFAR files read for real, deterministic splits, clear errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hwdnal.data import batches, load_data
from hwdnal.errors import UserError


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim,
                                                                     *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 50), ("t10k", 20)):
        images = rng.integers(0, 255, (count, 28, 28))
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (count,)))
    return tmp_path


def test_idx_files_load_with_their_shapes(idx_folder: Path):
    data = load_data("mnist", idx_folder)
    assert data.train.images.shape == (50, 1, 28, 28) and len(data.test) == 20
    assert data.in_channels == 1 and data.num_classes == 10 and data.input_size == 28


def test_subsets_and_batch_order_are_deterministic(idx_folder: Path):
    a = load_data("mnist", idx_folder, train_subset=16, seed=3)
    b = load_data("mnist", idx_folder, train_subset=16, seed=3)
    assert torch.equal(a.train.labels, b.train.labels)
    xa, _ = next(batches(a, "train", 8, shuffle=True, seed=1, augment=True))
    xb, _ = next(batches(b, "train", 8, shuffle=True, seed=1, augment=True))
    assert torch.equal(xa, xb)


def test_input_size_resizes_batches(idx_folder: Path):
    data = load_data("mnist", idx_folder, input_size=32)
    images, labels = next(batches(data, "test", 4, shuffle=False))
    assert images.shape == (4, 1, 32, 32) and labels.shape == (4,)


def test_normalised_batches_are_centred(idx_folder: Path):
    data = load_data("mnist", idx_folder)
    images, _ = next(batches(data, "train", 50, shuffle=False))
    assert abs(float(images.mean())) < 3 and images.dtype == torch.float32


def test_truncated_idx_file_is_a_clear_error(idx_folder: Path):
    path = idx_folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(UserError, match="not a valid IDX file"):
        load_data("mnist", idx_folder)


def test_missing_dataset_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(UserError, match="--data-dir"):
        load_data("mnist", tmp_path)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UserError, match="fashion-mnist"):
        load_data("imagenet22k")


def test_cifar10_python_batches(tmp_path: Path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                         b"labels": [0, 1, 2, 3]}, handle)
    data = load_data("cifar10", tmp_path)
    assert data.train.images.shape == (20, 3, 32, 32) and len(data.test) == 4


def test_synthetic_data_is_learnable_and_reproducible():
    a, b = load_data("synthetic", seed=1), load_data("synthetic", seed=1)
    assert torch.equal(a.train.images, b.train.images)
    assert a.train.labels.unique().numel() == 10


# -- image folders -------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return tmp_path


def test_imagefolder_honours_the_subsets_deterministically(image_folder: Path):
    data = load_data("imagefolder", image_folder, input_size=16, train_subset=5,
                     test_subset=4, seed=2)
    assert len(data.train) == 5 and len(data.test) == 4 and data.num_classes == 2
    again = load_data("imagefolder", image_folder, input_size=16, train_subset=5,
                      test_subset=4, seed=2)
    _, labels = next(batches(data, "train", 5, shuffle=False))
    _, labels_again = next(batches(again, "train", 5, shuffle=False))
    assert torch.equal(labels, labels_again)
    with pytest.raises(UserError, match="at least 1"):
        load_data("imagefolder", image_folder, input_size=16, train_subset=0)


def test_imagefolder_augments_like_the_other_datasets(image_folder: Path):
    data = load_data("imagefolder", image_folder, input_size=16)
    plain, _ = next(batches(data, "train", 12, shuffle=False))
    assert plain.shape == (12, 3, 16, 16)
    again, _ = next(batches(data, "train", 12, shuffle=False))
    assert torch.equal(plain, again), "without augmentation the images are fixed"
    a, _ = next(batches(data, "train", 12, shuffle=False, seed=1, augment=True))
    b, _ = next(batches(data, "train", 12, shuffle=False, seed=1, augment=True))
    assert torch.equal(a, b), "augmentation is drawn from the seed"
    assert not torch.equal(a, plain)


def test_unreadable_image_is_an_error_naming_it_or_skipped_and_counted(
    image_folder: Path, capsys: pytest.CaptureFixture[str]
):
    bad = image_folder / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=r"broken\.png cannot be read as an image.*"
                                        r"--skip-bad-images"):
        load_data("imagefolder", image_folder, input_size=16)
    data = load_data("imagefolder", image_folder, input_size=16, skip_bad_images=True)
    assert len(data.train) == 12 and list(data.skipped) == [str(bad)]
    assert "skipped 1 unreadable image file" in capsys.readouterr().err


def test_image_that_fails_to_decode_is_named_or_skipped(image_folder: Path,
                                                        capsys: pytest.CaptureFixture[str]):
    truncated = image_folder / "val" / "dog" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])  # the header reads, the pixels do not
    data = load_data("imagefolder", image_folder, input_size=16)
    with pytest.raises(UserError, match=r"0\.png cannot be read as an image"):
        list(batches(data, "test", 4, shuffle=False))
    data = load_data("imagefolder", image_folder, input_size=16, skip_bad_images=True)
    labels = torch.cat([labels for _, labels in batches(data, "test", 4, shuffle=False)])
    assert len(labels) == 5 and list(data.skipped) == [str(truncated)]
    assert "1 left out so far" in capsys.readouterr().err


# -- shards of a global batch (torchrun) ---------------------------------------------------
def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Rank 0's first image, rank 1's first, rank 0's second, ...: the global batch."""
    whole = torch.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for rank, part in enumerate(parts):
        whole[rank :: len(parts)] = part
    return whole


@pytest.mark.parametrize("source", ["synthetic", "imagefolder"])
def test_the_ranks_shares_of_a_global_batch_make_up_the_single_process_batch(
        source: str, image_folder: Path):
    """Same images, same labels, same augmentation: a rank count changes no batch."""
    data = (load_data("synthetic", input_size=16, train_subset=96) if source == "synthetic"
            else load_data("imagefolder", image_folder, input_size=16))
    size = 12 if source == "synthetic" else 4
    alone = list(batches(data, "train", size, shuffle=True, seed=5, augment=True, skip=1))
    ranks = [list(batches(data, "train", size, shuffle=True, seed=5, augment=True, skip=1,
                          shard=(rank, 2))) for rank in range(2)]
    assert len(alone) == len(ranks[0]) == len(ranks[1]) > 0
    for number, (images, labels) in enumerate(alone):
        shares = [ranks[rank][number] for rank in range(2)]
        assert torch.equal(_interleave([s[1] for s in shares]), labels)
        assert torch.equal(_interleave([s[0] for s in shares]), images)


def test_an_image_folder_keeps_its_loader_and_workers_between_epochs(image_folder: Path):
    data = load_data("imagefolder", image_folder, input_size=16)
    first = [labels for _, labels in batches(data, "train", 4, shuffle=True, seed=1)]
    loader = next(iter(data.loaders.values()))
    second = [labels for _, labels in batches(data, "train", 4, shuffle=True, seed=2)]
    assert list(data.loaders.values()) == [loader], "one loader serves every epoch"
    assert sorted(torch.cat(first).tolist()) == sorted(torch.cat(second).tolist())
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
