"""One tiny real search per test session, shared by the compile and report tests (~10 s)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

_CACHE: dict[str, Path] = {}


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory of ResNet-20 on 16×16 synthetic images (1 epoch per stage)."""
    if "run" not in _CACHE:
        from hwdnal.search import DnalSearch, SearchConfig

        out = tmp_path_factory.mktemp("tiny_run")
        config = SearchConfig(
            model="resnet20", data="synthetic", input_size=16, train_subset=256,
            test_subset=128, batch_size=64, epochs_weights=1, epochs_arch=1, epochs_finetune=1,
        )
        DnalSearch(config, out).run()
        _CACHE["run"] = out
    return _CACHE["run"]


def copy_run(run: Path, where: Path) -> Path:
    """A private copy, for tests that change the run."""
    return Path(shutil.copytree(run, where / "run"))


QUICK_TARGET = """
name = "cpu-quick"
description = "the cpu target with few timed runs, for tests"
runtime = "onnxruntime"
device = "cpu"
precision = "fp32"
threads = 1
warmup = 2
iterations = 5
min_seconds = 0.0

[profile]
grid_step = 4
grid_points = 6
layer_warmup = 1
layer_iterations = 5
layer_min_seconds = 0.05
calibrate = 3
validate = 0
"""


def quick_target(folder: Path) -> Path:
    path = folder / "cpu-quick.toml"
    path.write_text(QUICK_TARGET)
    return path
