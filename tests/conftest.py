from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def profiles_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test profiles into its own folder: never the user's cache, never the checkout."""
    folder = tmp_path / "profiles"
    monkeypatch.setenv("HWDNAL_PROFILES_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """The machine is shared: two spinning OpenMP threads on a busy 2-core box make a
    ResNet-20 forward 100x slower, and nothing in the modules that use this needs more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fashion_mnist_available() -> None:
    from hwdnal.data import DEBIAN_FASHION_MNIST

    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed: apt-get install dataset-fashion-mnist")


def calibrate_batchnorm(model: torch.nn.Module, shape: tuple[int, ...], batches: int = 3) -> None:
    """Give every BatchNorm non-trivial running statistics, then switch to eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape) * 2 + 0.5)
    model.eval()
