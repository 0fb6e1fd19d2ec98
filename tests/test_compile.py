"""`hwdnal compile` and `hwdnal bench`: what is deployed computes what PyTorch computes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import calibrate_batchnorm
from measurers import measurer_for
from tiny_run import copy_run, quick_target, tiny_run
from torch import nn

from hwdnal.compile import (
    ONNX_ATOL,
    artifact_input_shape,
    bench_artifact,
    calibration_batches,
    compile_network,
    compile_run,
)
from hwdnal.devices import fingerprint_here, open_measurer, usable_here
from hwdnal.errors import UserError
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.models import create_model
from hwdnal.targets import load_target

PRUNED = [("resnet20", 32), ("vgg16_bn_cifar", 32), ("mobilenet_v2_cifar", 32), ("resnet18", 64)]


def _pruned(name: str, size: int, logit_scale: float = 20.0) -> nn.Module:
    """A randomly pruned network whose logits reach ~``logit_scale``, as a trained one's do:
    random networks output ~0.1, where any export would pass an absolute 1e-4 check."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3)
    calibrate_batchnorm(model, (4, 3, size, size))
    x = torch.randn(1, 3, size, size)
    gated = GatedModel(model, x)
    gated.set_keep_mask(torch.rand(gated.plan.num_gates) < 0.6)
    pruned = prune_physically(gated).eval()
    last = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        scale = logit_scale / pruned(x).abs().max().item()
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return pruned


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwdnal.cli.app", *args], capture_output=True, text=True,
        timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.mark.parametrize(("name", "size"), PRUNED, ids=[p[0] for p in PRUNED])
def test_compiled_onnx_matches_pytorch_on_pruned_networks(name: str, size: int, tmp_path: Path):
    model = _pruned(name, size)
    with measurer_for(quick_target(tmp_path)) as device:
        artifact = compile_network(model, (1, 3, size, size), device, tmp_path / "out")
    assert artifact.onnx_max_abs_diff <= ONNX_ATOL
    # no labelled images given: nothing to measure accuracy on, and nothing refused
    assert artifact.accuracy is None and artifact.manifest["accuracy"] is None
    assert "no labelled held-out images" in artifact.manifest["accuracy_note"]

    # independently of compile's own check: the written file, fresh inputs, plain ORT
    import onnxruntime as ort

    session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(123)
    for _ in range(3):
        x = torch.randn(1, 3, size, size, generator=generator) * 1.5
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert np.abs(expected).max() > 1.0, "logits must be large for 1e-4 to mean much"
        assert np.abs(got - expected).max() <= 1e-4


def test_onnx_that_differs_from_pytorch_is_refused_and_nothing_written(tmp_path: Path):
    class ExportsSomethingElse(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.onnx.is_in_onnx_export():
                return x.mean(dim=(2, 3)) + 1e-3
            return x.mean(dim=(2, 3))

    with measurer_for(quick_target(tmp_path)) as device, \
            pytest.raises(UserError, match=r"differs from PyTorch by .*limit 0.0001"):
        compile_network(ExportsSomethingElse(), (1, 3, 8, 8), device, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compile_run_writes_onnx_manifest_and_records_them(run: Path, tmp_path: Path):
    mine = copy_run(run, tmp_path)
    target_file = quick_target(tmp_path)
    with measurer_for(target_file) as device:
        artifact = compile_run(mine, device)
    folder = mine / "compiled" / "cpu-quick"
    assert artifact.onnx_path == folder / "model.onnx" and artifact.engine_path is None

    manifest = json.loads((folder / "manifest.json").read_text())
    target = load_target(target_file)
    assert manifest["target"] == {"name": "cpu-quick", "fingerprint": fingerprint_here(target)}
    assert manifest["input_shape"] == [1, 3, 16, 16]
    assert manifest["precision"] == "fp32" and manifest["runtime"] == "onnxruntime"
    assert manifest["hwdnal"]
    assert manifest["files"] == {"onnx": "model.onnx"} and manifest["deployable"] == "model.onnx"
    digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    assert manifest["sha256"] == {"model.onnx": digest}
    check = manifest["check"]
    assert 0 <= check["onnx_vs_torch_max_abs_diff"] <= check["tolerance"] == 1e-4
    assert check["input_source"].startswith("synthetic test images")
    latency = manifest["latency"]
    assert 0 < latency["median_ms"] <= latency["p90_ms"] and latency["samples"] >= 5

    # the deployed FP32 file classifies the run's 128 held-out images as PyTorch does
    accuracy = manifest["accuracy"]
    assert accuracy["images"] == 128 and accuracy["source"] == "synthetic test images"
    assert 0 <= accuracy["reference"] <= 1 and 0 <= accuracy["deployed"] <= 1
    assert abs(accuracy["reference"] - accuracy["deployed"]) <= 0.01
    assert accuracy["agreement"] >= 0.99
    assert "latency_fp32" not in manifest and "quantization" not in manifest

    result = json.loads((mine / "result.json").read_text())
    assert result["compiled"]["cpu-quick"]["accuracy"]["images"] == 128
    assert result["artifacts"]["cpu-quick.onnx"] == "compiled/cpu-quick/model.onnx"
    assert result["artifacts"]["cpu-quick.manifest"] == "compiled/cpu-quick/manifest.json"
    assert result["artifacts"]["pruned_model"] == "pruned.pt"  # earlier entries kept
    assert result["compiled"]["cpu-quick"]["median_ms"] == latency["median_ms"]
    assert artifact_input_shape(folder / "model.onnx") == (1, 3, 16, 16)
    with measurer_for(target) as device:
        assert bench_artifact(folder / "model.onnx", device).median_ms > 0


def test_compile_and_bench_through_the_cli(run: Path, tmp_path: Path):
    mine = copy_run(run, tmp_path)
    done = _cli("compile", str(mine), "--target", "cpu")
    assert done.returncode == 0, done.stderr
    onnx_file = mine / "compiled" / "cpu" / "model.onnx"
    assert onnx_file.is_file() and (onnx_file.parent / "manifest.json").is_file()
    assert "median" in done.stdout

    done = _cli("bench", str(onnx_file), "--target", "cpu")
    assert done.returncode == 0, done.stderr
    assert "median (ms)" in done.stdout and "[1, 3, 16, 16]" in done.stdout


@pytest.mark.parametrize(
    ("artifact", "target", "message"),
    [
        ("pruned.pt", "cpu", "is not an ONNX model"),
        ("result.json", "cpu", "is not an ONNX model"),
        ("missing.onnx", "cpu", "does not exist"),
        ("fake.engine", "cpu", "is a TensorRT engine, but target 'cpu' runs onnxruntime"),
    ],
)
def test_bench_on_a_wrong_artifact_exits_2_with_one_line(
    run: Path, tmp_path: Path, artifact: str, target: str, message: str
):
    (tmp_path / "fake.engine").write_bytes(b"not an engine")
    path = run / artifact if (run / artifact).exists() else tmp_path / artifact
    done = _cli("bench", str(path), "--target", target)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], done.stderr


def test_int8_without_calibration_images_and_unusable_targets_are_user_errors(tmp_path: Path):
    model = _pruned("resnet20", 16)
    with measurer_for("cpu") as device, \
            pytest.raises(UserError, match=r"no calibration batches of shape \(1, 3, 16, 16\)"):
        compile_network(model, (1, 3, 16, 16), device, tmp_path, int8_calibration=[])
    assert not (tmp_path / "model.onnx").exists()
    for name in ("gpu", "jetson"):
        ok, why = usable_here(load_target(name))
        if ok:
            continue
        refusal = f"target .{name}. cannot be measured on this machine.*{re.escape(why)}"
        with pytest.raises(UserError, match=refusal):  # refused where the device is opened
            open_measurer(load_target(name))


def _tensorrt_or_skip() -> None:
    ok, why = usable_here(load_target("gpu"))
    if not ok:
        pytest.skip(f"TensorRT path needs the gpu target: {why}")


def test_tensorrt_fp16_engine_is_built_checked_and_benched(tmp_path: Path):
    _tensorrt_or_skip()
    model = _pruned("resnet20", 32)
    with measurer_for("gpu") as device:
        artifact = compile_network(model, (1, 3, 32, 32), device, tmp_path)
    assert artifact.engine_path is not None and artifact.engine_path.name == "model.engine"
    manifest = json.loads(artifact.manifest_path.read_text())
    assert manifest["precision"] == "fp16" and manifest["deployable"] == "model.engine"
    assert artifact.engine_max_abs_diff is not None and artifact.engine_max_abs_diff < 0.2
    with measurer_for("gpu") as device:
        assert bench_artifact(artifact.engine_path, device).median_ms > 0
        assert bench_artifact(artifact.onnx_path, device).median_ms > 0


def test_tensorrt_int8_engine_is_built_from_the_qdq_onnx(run: Path, tmp_path: Path):
    _tensorrt_or_skip()
    from hwdnal.compile import run_data

    data, why = run_data(run)
    assert data is not None, why
    model = torch.load(run / "pruned.pt", weights_only=False)
    with measurer_for("gpu") as device:
        artifact = compile_network(
            model, (1, 3, 16, 16), device, tmp_path,
            int8_calibration=calibration_batches(data, (1, 3, 16, 16), 64),
        )
    assert artifact.precision == "int8" and artifact.engine_path is not None
    assert artifact.int8_onnx_path is not None and artifact.int8_onnx_path.is_file()
    assert artifact.fp32_measurement is not None and artifact.int8_speedup is not None
