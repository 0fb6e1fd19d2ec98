"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing left half-done.

One test per kind of mistake a user can make on the command line (docs/errors.md lists
them with their fixes).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

FAST = ["--data", "synthetic", "--input-size", "16", "--train-subset", "64",
        "--test-subset", "32", "--epochs-weights", "1", "--epochs-arch", "1",
        "--epochs-finetune", "0", "--no-compile"]


def hwdnal(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hwdnal.cli.app", *args], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)


def assert_clear_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def search(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return hwdnal(tmp_path, "search", "--out", str(tmp_path / "run"), *args)


def test_unknown_model(tmp_path: Path):
    assert_clear_error(search(tmp_path, *FAST, "--model", "resnet9000"),
                       "unknown model 'resnet9000'", "resnet20")
    assert not (tmp_path / "run").exists(), "bad input leaves no run directory behind"


def test_unknown_target(tmp_path: Path):
    assert_clear_error(search(tmp_path, *FAST, "--target", "tpu9"), "unknown target 'tpu9'",
                       "cpu")


def test_unknown_dataset(tmp_path: Path):
    assert_clear_error(search(tmp_path, *FAST, "--data", "imagenet-42"),
                       "unknown dataset 'imagenet-42'", "fashion-mnist")


def test_missing_dataset_files(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clear_error(search(tmp_path, "--data", "mnist", "--data-dir", str(empty)),
                       "no mnist IDX files", "--data-dir")


def test_malformed_dataset_files(tmp_path: Path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(folder / f"{name}.gz", "wb") as handle:
            handle.write(b"this is not an IDX file")
    assert_clear_error(search(tmp_path, "--data", "mnist", "--data-dir", str(folder)),
                       "not a valid IDX file", "download it again")


@pytest.mark.parametrize("budget", ["fast", "20", "-3ms", "150%"])
def test_malformed_budget(tmp_path: Path, budget: str):
    assert_clear_error(search(tmp_path, *FAST, "--budget", budget), "--budget", "20ms")


def test_corrupt_lut_given_to_search(tmp_path: Path):
    lut = tmp_path / "bad.json"
    lut.write_text('{"schema": "hwdnal-lut", "version": 1, "entr')
    assert_clear_error(search(tmp_path, *FAST, "--budget", "50%", "--lut", str(lut)),
                       str(lut))


def test_corrupt_checkpoint(tmp_path: Path):
    first = search(tmp_path, *FAST)
    assert first.returncode == 0, first.stderr[-2000:]
    state_path = tmp_path / "run" / "state.json"
    state = json.loads(state_path.read_text())
    state["finished"] = ["weights"]  # make the architecture stage start again from its file
    state_path.write_text(json.dumps(state))
    (tmp_path / "run" / "checkpoints" / "architecture.pt").write_bytes(b"\x00garbage")
    assert_clear_error(search(tmp_path, *FAST), "architecture.pt", "corrupt", "delete it")


def test_run_directory_of_an_incompatible_version(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": 99}))
    assert_clear_error(search(tmp_path, *FAST), "incompatible", "new --out")


def test_output_path_that_cannot_be_written(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = hwdnal(tmp_path, "search", "--out", str(blocker / "run"), *FAST)
    assert_clear_error(done, "cannot create run directory", "writable --out")


def test_gpu_target_without_gpu_or_tensorrt(tmp_path: Path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    measured = [option for option in FAST if option != "--no-compile"]
    assert_clear_error(search(tmp_path, *measured, "--target", "gpu"),
                       "target 'gpu' cannot be measured on this machine", "GPU",
                       "--remote")


def test_tensorrt_engine_asked_for_where_it_is_absent(tmp_path: Path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    assert_clear_error(hwdnal(tmp_path, "profile", "--target", "gpu", "--model", "resnet20",
                              "--input-size", "16"), "gpu", "tensorrt")


def test_cuda_device_without_gpu(tmp_path: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_clear_error(search(tmp_path, *FAST, "--device", "cuda"), "--device cuda",
                       "no CUDA GPU")


def test_user_model_that_fails_to_import(tmp_path: Path):
    assert_clear_error(search(tmp_path, *FAST, "--model", "no_such_pkg.nets:build"),
                       "cannot import 'no_such_pkg.nets'", "PYTHONPATH")


def test_user_model_that_returns_no_module(tmp_path: Path):
    (tmp_path / "my_nets.py").write_text("def build(**kwargs):\n    return 'a string'\n")
    assert_clear_error(search(tmp_path, *FAST, "--model", "my_nets:build"),
                       "my_nets:build returned str", "nn.Module")


def test_debug_shows_the_traceback(tmp_path: Path):
    done = hwdnal(tmp_path, "--debug", "search", "--out", str(tmp_path / "run"), *FAST,
                  "--model", "resnet9000")
    assert done.returncode != 0 and "Traceback" in done.stderr
