"""`hwdnal profile` on tiny models: a LUT comes out, an interrupted profile resumes."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from measurers import measurer_for
from toy_models import ConcatGroupedNet

from hwdnal.latency.lut import load_lut
from hwdnal.latency.pipeline import profile_model
from hwdnal.latency.predictor import LatencyModel
from hwdnal.targets import load_target


def tiny_target():
    """The cpu target with a 3-point grid and few runs, so a profile takes seconds."""
    target = load_target("cpu")
    return replace(
        target, warmup=1, iterations=5, min_seconds=0.0,
        profile=replace(target.profile, grid_points=3, layer_warmup=1, layer_iterations=3,
                        layer_min_seconds=0.0, calibrate=6, validate=3),
    )


class Interrupted(Exception):
    pass


def test_interrupted_profile_resumes_where_it_stopped(tmp_path) -> None:
    target, model = tiny_target(), ConcatGroupedNet()
    out, cache = tmp_path / "toy.json", tmp_path / "cache"
    seen: list[tuple[int, int, str]] = []

    def stop_after_first_batch(done: int, total: int, what: str) -> None:
        seen.append((done, total, what))
        if done > 0:
            raise Interrupted

    with measurer_for(target) as device, pytest.raises(Interrupted):
        profile_model(device, model, "toy", 16, out=out, cache_dir=cache,
                      progress=stop_after_first_batch)
    assert not out.exists()
    total, first_batch = seen[0][1], seen[-1][0]
    assert 0 < first_batch < total

    with measurer_for(target) as device:
        resumed = profile_model(device, model, "toy", 16, out=out, cache_dir=cache)
    assert resumed.grid_measured_now == total - first_batch
    assert resumed.networks_measured_now == 1 + 6 + 3  # dense, calibration, validation

    with measurer_for(target) as device:
        again = profile_model(device, model, "toy", 16, out=out, cache_dir=cache)
    assert again.grid_measured_now == 0 and again.networks_measured_now == 0

    lut = load_lut(out, target=target)
    assert lut.validation is not None and lut.validation["samples"] == 3
    assert lut.calibration.samples == 7
    assert {e.geometry.kind for e in lut.entries.values()} >= {"dense", "grouped"}
    assert LatencyModel(lut).predict_module(model) > 0


def test_profile_command_writes_a_lut_and_prints_counts(tmp_path) -> None:
    target_file = tmp_path / "tiny.toml"
    target_file.write_text(
        'name = "tiny-cpu"\nruntime = "onnxruntime"\ndevice = "cpu"\nthreads = 2\nwarmup = 1\n'
        "iterations = 5\nmin_seconds = 0.0\n[profile]\ngrid_points = 2\nlayer_warmup = 1\n"
        "layer_iterations = 3\nlayer_min_seconds = 0.0\ncalibrate = 6\n"
    )
    out = tmp_path / "r20.json"
    cmd = [sys.executable, "-m", "hwdnal.cli.app", "profile", "--target", str(target_file),
           "--model", "resnet20", "--input-size", "8", "--num-classes", "10", "--out", str(out),
           "--validate", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "layer measurements" in result.stdout and str(out) in result.stdout
    lut = load_lut(out)
    assert lut.fingerprint["target"] == "tiny-cpu" and lut.validation["samples"] == 2
    # the file holds a LUT for 2 threads: profiling `cpu` (1 thread) into it is refused
    other = subprocess.run(
        [*cmd[:5], "cpu", *cmd[6:]], capture_output=True, text=True, timeout=300, check=False,
        cwd=tmp_path,
    )
    assert other.returncode == 2 and "--force" in other.stderr
