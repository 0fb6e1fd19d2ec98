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


@pytest.mark.parametrize(("model", "candidates", "words"), [
    ("resnet20", "3x3", ("applies to the supernets", "resnet20")),
    ("proxyless_supernet_cifar", "3x3,5", ("'5' is not kernel x expansion", "3x3,3x6")),
    ("proxyless_supernet_cifar", "4x6", ("kernel must be odd",)),
])
def test_malformed_candidates(tmp_path: Path, model: str, candidates: str,
                              words: tuple[str, ...]):
    assert_clear_error(search(tmp_path, *FAST, "--model", model, "--candidates", candidates),
                       *words)
    assert not (tmp_path / "run").exists()


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


# -- files that cannot run code (--weights) ---------------------------------------------
_EVIL = '''
import os, pickle, sys

import torch


class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))


if sys.argv[3] == "torch":
    torch.save({"model": Evil()}, sys.argv[1])
else:
    with open(sys.argv[1], "wb") as handle:
        pickle.dump(Evil(), handle)
'''


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_malicious_weights_file_is_refused_without_running_it(tmp_path: Path, how: str):
    weights, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    (tmp_path / "make_evil.py").write_text(_EVIL)
    made = subprocess.run([sys.executable, "make_evil.py", str(weights), str(marker), how],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert made.returncode == 0 and weights.exists() and not marker.exists(), made.stderr
    done = search(tmp_path, *FAST, "--weights", str(weights))
    assert_clear_error(done, str(weights), "run code", "--trust-weights-pickle")
    assert not marker.exists(), "unpickling the file ran its code"
    assert not (tmp_path / "run").exists(), "bad input leaves no run directory behind"


def test_weights_accepted_as_state_dicts_and_a_module_only_when_trusted(tmp_path: Path):
    import torch

    from hwdnal.errors import UserError
    from hwdnal.models import create_model
    from hwdnal.stages.weights import load_weights

    torch.manual_seed(1)
    trained = create_model("resnet20", num_classes=10, in_channels=3)
    state = trained.state_dict()
    for name, payload in [("plain", state), ("model", {"model": state, "epoch": 3}),
                          ("state_dict", {"state_dict": state, "optimizer": {}})]:
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        model = create_model("resnet20", num_classes=10, in_channels=3)
        load_weights(model, str(path))
        assert torch.equal(model.conv1.weight, trained.conv1.weight), name
    whole = tmp_path / "module.pt"
    torch.save(trained, whole)
    with pytest.raises(UserError, match="trust-weights-pickle"):
        load_weights(create_model("resnet20"), str(whole))
    model = create_model("resnet20", num_classes=10, in_channels=3)
    load_weights(model, str(whole), trust_pickle=True)
    assert torch.equal(model.conv1.weight, trained.conv1.weight)


def test_trust_weights_pickle_names_the_risk_in_its_help():
    import inspect

    from hwdnal.cli.search_cmd import search as search_command

    option = inspect.signature(search_command).parameters["trust_weights_pickle"].default
    assert option.default is False and "runs code from the file" in option.help


# -- numeric options, checked before the run directory is touched ----------------------
_SEARCH_OPTIONS = [
    ("input_size", 0, "--input-size", "at least 1"),
    ("train_subset", 0, "--train-subset", "at least 1"),
    ("test_subset", -5, "--test-subset", "at least 1"),
    ("epochs_weights", -1, "--epochs-weights", "at least 0"),
    ("epochs_arch", 0, "--epochs-arch", "at least 1"),
    ("epochs_finetune", -1, "--epochs-finetune", "at least 0"),
    ("batch_size", 0, "--batch-size", "at least 1"),
    ("lr", 0.0, "--lr", "greater than 0"),
    ("finetune_lr", -0.1, "--finetune-lr", "greater than 0"),
    ("arch_lr", float("nan"), "--arch-lr", "greater than 0"),
    ("lambda_a", -1.0, "--lambda-a", "at least 0"),
    ("channel_step", 0, "--channel-step", "at least 1"),
    ("latency_rate", -0.05, "--latency-rate", "at least 0"),
]


@pytest.mark.parametrize(("name", "value", "flag", "words"), _SEARCH_OPTIONS,
                         ids=[case[0] for case in _SEARCH_OPTIONS])
def test_search_option_out_of_range(name: str, value: float, flag: str, words: str):
    from hwdnal.errors import UserError
    from hwdnal.search import SearchConfig

    SearchConfig().validate()  # the defaults are fine
    with pytest.raises(UserError, match=f"^{flag} must be {words}, got ") as caught:
        SearchConfig(**{name: value}).validate()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("args", "words"), [
    (["--input-size", "0"], ["--input-size", "at least 1", "got 0"]),
    (["--lambda-a", "-1"], ["--lambda-a", "at least 0", "got -1"]),
    (["--finetune-lr", "0"], ["--finetune-lr", "greater than 0"]),
])
def test_search_option_out_of_range_on_the_command_line(tmp_path: Path, args: list[str],
                                                        words: list[str]):
    assert_clear_error(search(tmp_path, *FAST, *args), *words)
    assert not (tmp_path / "run").exists(), "bad input leaves no run directory behind"


@pytest.mark.parametrize(("args", "words"), [
    (["--input-size", "0"], ["--input-size", "at least 1"]),
    (["--input-size", "16", "--step", "0"], ["--step", "at least 1"]),
    (["--input-size", "16", "--grid-points", "0"], ["--grid-points", "at least 1"]),
    (["--input-size", "16", "--num-classes", "0"], ["--num-classes", "at least 1"]),
    (["--input-size", "16", "--in-channels", "0"], ["--in-channels", "at least 1"]),
    (["--input-size", "16", "--calibrate", "-1"], ["--calibrate", "at least 0"]),
    (["--input-size", "16", "--validate", "-1"], ["--validate", "at least 0"]),
])
def test_profile_option_out_of_range(tmp_path: Path, args: list[str], words: list[str]):
    out = tmp_path / "lut.json"
    done = hwdnal(tmp_path, "profile", "--target", "cpu", "--model", "resnet20",
                  "--out", str(out), *args)
    assert_clear_error(done, *words)
    assert not out.exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--calibration-images", "0"], ["--calibration-images", "at least 1"]),
    (["--accuracy-images", "-1"], ["--accuracy-images", "at least 0"]),
    (["--max-accuracy-drop", "-1"], ["--max-accuracy-drop", "at least 0"]),
    (["--atol", "0"], ["--atol", "greater than 0"]),
])
def test_compile_option_out_of_range(tmp_path: Path, args: list[str], words: list[str]):
    assert_clear_error(hwdnal(tmp_path, "compile", str(tmp_path / "run"), "--target", "cpu",
                              *args), *words)


# -- unreadable images -------------------------------------------------------------------
def _image_folder(root: Path, bad: str | None = None) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (40 * i, 100, 200)).save(folder / f"{i}.png")
    if bad is not None:
        (root / bad).write_bytes(b"this is not a PNG")
    return root


def test_unreadable_image_names_the_file(tmp_path: Path):
    data = _image_folder(tmp_path / "images", bad="train/a/broken.png")
    done = search(tmp_path, *FAST, "--data", "imagefolder", "--data-dir", str(data))
    assert_clear_error(done, "broken.png", "cannot be read as an image", "--skip-bad-images")
    assert not (tmp_path / "run").exists(), "bad input leaves no run directory behind"
