"""INT8 as Q/DQ ONNX on a CPU target, and the deployed file's accuracy, checked on real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from measurers import measurer_for
from tiny_run import copy_run, quick_target, tiny_run

from hwdnal.accuracy import HeldOut
from hwdnal.compile import compile_network, run_data
from hwdnal.data import batches
from hwdnal.quantize import count_qdq_nodes

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwdnal.cli.app", *args], capture_output=True, text=True,
        timeout=timeout, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with its pruned network trained on until it classifies the synthetic
    stripes well (the tiny search's one epoch leaves it near chance, where an accuracy
    comparison says little): 10 epochs of 256 images, about 1.5 s."""
    run = copy_run(tiny_run(tmp_path_factory), tmp_path_factory.mktemp("trained"))
    data, why = run_data(run)
    assert data is not None, why
    model = torch.load(run / "pruned.pt", weights_only=False)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for epoch in range(10):
        for x, y in batches(data, "train", 32, shuffle=True, seed=epoch):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    torch.save(model.eval(), run / "pruned.pt")
    return run


def _qdq_runs_on_ort(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_int8_compile_deploys_a_qdq_onnx_within_1pp_of_fp32(trained_run: Path, tmp_path: Path):
    done = _cli("compile", str(trained_run), "--target", str(quick_target(tmp_path)), "--int8",
                "--calibration-images", "128")
    assert done.returncode == 0, done.stderr
    folder = trained_run / "compiled" / "cpu-quick"
    int8_file, fp32_file = folder / "model.int8.onnx", folder / "model.onnx"
    assert int8_file.is_file() and fp32_file.is_file()
    assert count_qdq_nodes(int8_file.read_bytes()) > 20
    assert count_qdq_nodes(fp32_file.read_bytes()) == 0
    assert _qdq_runs_on_ort(int8_file, (1, 3, 16, 16)).shape == (1, 10)
    import onnx  # a standard ONNX file, as TensorRT's parser reads it: no ORT-only domains

    qdq = onnx.load(str(int8_file))
    onnx.checker.check_model(qdq)
    assert {o.domain for o in qdq.opset_import} == {""}
    assert {n.domain for n in qdq.graph.node} == {""}

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["deployable"] == "model.int8.onnx"
    assert manifest["files"] == {"onnx": "model.onnx", "int8_onnx": "model.int8.onnx"}
    assert manifest["quantization"] | {"qdq_nodes": 0} == {
        "tool": "onnxruntime.quantization", "format": "QDQ", "calibration_images": 128,
        "method": "MinMax", "per_channel": True, "activations": "QInt8, symmetric",
        "weights": "QInt8, symmetric", "qdq_nodes": 0,
    }
    # the INT8 file classifies the 128 held-out images within 1 pp of PyTorch (FP32), on a
    # network that learned the task
    accuracy = manifest["accuracy"]
    assert accuracy["images"] == 128 and accuracy["reference"] >= 0.9, accuracy
    assert accuracy["reference"] - accuracy["deployed"] <= 0.01, accuracy
    assert accuracy["agreement"] >= 0.97, accuracy
    # both files timed, interleaved, and the ratio reported whichever way it goes
    int8_ms = manifest["latency"]["median_ms"]
    fp32_ms = manifest["latency_fp32"]["median_ms"]
    assert int8_ms > 0 and fp32_ms > 0
    assert manifest["latency"]["measured"] == "model.int8.onnx"
    assert manifest["latency_fp32"]["measured"] == "model.onnx"
    assert manifest["int8_speedup"] == pytest.approx(fp32_ms / int8_ms)
    assert "FP32 ONNX, timed interleaved" in done.stdout and "top-1 on 128" in done.stdout

    result = json.loads((trained_run / "result.json").read_text())
    summary = result["compiled"]["cpu-quick"]
    assert summary["precision"] == "int8" and summary["deployable"] == "model.int8.onnx"
    assert summary["accuracy"]["deployed"] == accuracy["deployed"]
    assert summary["fp32_median_ms"] == fp32_ms
    assert result["artifacts"]["cpu-quick.int8_onnx"] == "compiled/cpu-quick/model.int8.onnx"

    # an FP32 compile afterwards leaves no stale INT8 file behind
    done = _cli("compile", str(trained_run), "--target", str(quick_target(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert not int8_file.exists()
    assert json.loads((folder / "manifest.json").read_text())["precision"] == "fp32"


def test_a_deployed_file_below_the_allowed_accuracy_is_refused_and_kept_aside(
    trained_run: Path, tmp_path: Path
):
    """A limit of -50 points asks the deployed file to beat PyTorch by 50 points, which no real
    file of a network right on most images can: the real refusal path runs, no mock. (The
    command line accepts only limits >= 0, so the library is called directly.)"""
    from hwdnal.compile import compile_run
    from hwdnal.errors import UserError

    run = copy_run(trained_run, tmp_path)
    target = str(quick_target(tmp_path))
    assert _cli("compile", str(run), "--target", target).returncode == 0
    folder = run / "compiled" / "cpu-quick"
    accepted = (folder / "manifest.json").read_bytes()

    with measurer_for(target) as device, pytest.raises(UserError) as refused:
        compile_run(run, device, int8=True, calibration_images=64, max_accuracy_drop=-50)
    lines = [f"error: {refused.value}"]
    assert "\n" not in str(refused.value)
    rejected = folder / "rejected"
    assert f"kept aside in {rejected}" in lines[0] and "--max-accuracy-drop" in lines[0]
    assert "model.int8.onnx (int8) classifies 128 synthetic test images" in lines[0]
    assert (rejected / "model.int8.onnx").is_file() and (rejected / "model.onnx").is_file()
    manifest = json.loads((rejected / "manifest.json").read_text())
    assert manifest["rejected"] in lines[0] and manifest["accuracy"]["images"] == 128
    assert "latency" not in manifest
    # what was accepted before is still what deploys
    assert (folder / "manifest.json").read_bytes() == accepted
    assert not (folder / "model.int8.onnx").exists()
    assert json.loads((run / "result.json").read_text())["compiled"]["cpu-quick"][
        "precision"] == "fp32"


def test_accuracy_in_a_batch_of_4_pads_the_last_batch(trained_run: Path, tmp_path: Path):
    data, why = run_data(trained_run)
    assert data is not None, why
    images, labels = next(iter(batches(data, "test", 10, shuffle=False)))
    target = quick_target(tmp_path)
    target.write_text(target.read_text().replace('precision = "fp32"',
                                                 'precision = "fp32"\nbatch = 4'))
    model = torch.load(trained_run / "pruned.pt", weights_only=False)
    with measurer_for(target) as device:
        artifact = compile_network(model, (4, 3, 16, 16), device, tmp_path / "out",
                                   held_out=HeldOut(images.numpy(), labels.numpy(), "ten images"))
    assert artifact.accuracy is not None
    assert artifact.accuracy.images == 10 and artifact.accuracy.agreement == 1.0
    with torch.no_grad():
        expected = float((model(images).argmax(1) == labels).float().mean())
    assert artifact.accuracy.reference == pytest.approx(expected)
    assert artifact.accuracy.deployed == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"Fashion-MNIST is not in {FASHION_MNIST}")
def test_int8_on_a_fashion_mnist_run_stays_within_1pp(tmp_path: Path):
    """A short real ResNet-20 on 4000 Fashion-MNIST images (~1 min on 2 cores), then
    `hwdnal compile --int8` on the cpu target."""
    run = tmp_path / "fm"
    done = _cli("search", "--model", "resnet20", "--data", "fashion-mnist", "--out", str(run),
                "--train-subset", "4000", "--epochs-weights", "2", "--epochs-arch", "1",
                "--epochs-finetune", "1", timeout=900)
    assert done.returncode == 0, done.stderr
    done = _cli("compile", str(run), "--target", str(quick_target(tmp_path)), "--int8")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((run / "compiled" / "cpu-quick" / "manifest.json").read_text())
    accuracy = manifest["accuracy"]
    assert accuracy["images"] == 1000 and accuracy["reference"] > 0.6, accuracy
    assert accuracy["reference"] - accuracy["deployed"] <= 0.01, accuracy
    assert manifest["latency"]["median_ms"] > 0 and manifest["latency_fp32"]["median_ms"] > 0
