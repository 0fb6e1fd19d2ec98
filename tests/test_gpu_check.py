"""scripts/gpu-check.sh, the one command for a lent GPU machine: on a machine without one it
parses and stops at once with one clear line and exit code 2."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check.sh"


def test_the_gpu_check_parses() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"],
                                                     capture_output=True).returncode == 0:
        pytest.skip("this machine has an NVIDIA GPU: run the check itself")
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "no NVIDIA GPU" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing is started without a GPU"


def test_without_an_output_folder_it_shows_its_usage() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage: scripts/gpu-check.sh OUTDIR" in done.stderr
