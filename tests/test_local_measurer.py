"""The local device behind the Measurer seam: the agent's runtimes run in process.

ONNX Runtime is measured for real here; TensorRT and torch-cuda where there is a GPU.
"""

from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
import torch
from hwdnal_agent import runtimes
from hwdnal_agent.timing import TimingSettings, measure, measure_interleaved, summarize
from torch import nn

from hwdnal.compile.onnx_check import max_abs_diff, ort_outputs
from hwdnal.devices import open_measurer
from hwdnal.errors import UserError
from hwdnal.onnx_export import export_onnx, save_onnx
from hwdnal.targets import load_target

QUICK = TimingSettings(warmup=2, iterations=20)


def _small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def test_onnx_export_is_one_checked_file_matching_torch(tmp_path) -> None:
    path = tmp_path / "net.onnx"
    net, x = _small_net(), torch.randn(1, 3, 16, 16)
    data = export_onnx(net, (1, 3, 16, 16), check=True)
    save_onnx(data, path)
    with torch.no_grad():
        expected = [net(x).numpy()]
    assert max_abs_diff(ort_outputs(data, (1, 3, 16, 16), [x]), expected) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]  # no side .data file
    model = onnx.load(str(path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 16, 16]


def test_onnxruntime_runs_onnx_and_matches_torch() -> None:
    runtime = runtimes.create("onnxruntime", precision="fp32", threads=1)
    net = _small_net()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x).numpy()
    compiled = runtime.compile(export_onnx(net, (1, 3, 16, 16)), (1, 3, 16, 16))
    assert abs(compiled.run(x.numpy()) - expected).max() < 1e-4


def test_onnxruntime_measures_median_and_p90() -> None:
    runtime = runtimes.create("onnxruntime", threads=1)
    small = runtime.compile(export_onnx(nn.Conv2d(4, 4, 3, padding=1), (1, 4, 32, 32)), None)
    large = runtime.compile(export_onnx(nn.Conv2d(128, 128, 3, padding=1), (1, 128, 32, 32)),
                            None)
    assert small.input_shape == (1, 4, 32, 32)  # read from the ONNX file when not given
    one = measure(small, warmup=2, iterations=20)
    assert 0 < one.median_ms <= one.p90_ms and one.samples == 20
    a, b = measure_interleaved([small, large], warmup=2, iterations=20)
    assert b.median_ms > 5 * a.median_ms  # ~1000x the work


def test_min_seconds_runs_fast_networks_longer() -> None:
    runtime = runtimes.create("onnxruntime", threads=1)
    tiny = runtime.compile(export_onnx(nn.Conv2d(2, 2, 1), (1, 2, 4, 4)), None)
    assert measure(tiny, warmup=2, iterations=5, min_seconds=0.05).samples > 5


class _Recorded:
    """A compiled network that remembers how many runs each of its bursts asked for."""

    def __init__(self, compiled) -> None:
        self.compiled, self.chunks = compiled, []

    def timings(self, n: int) -> list[float]:
        self.chunks.append(n)
        return self.compiled.timings(n)


def test_interleaved_bursts_last_at_least_burst_seconds() -> None:
    """Bursts of 5 runs let two small networks evict each other's weights between bursts
    (docs/design.md); with ``burst_seconds`` each burst of a fast network runs longer."""
    runtime = runtimes.create("onnxruntime", threads=1)
    fast = _Recorded(runtime.compile(export_onnx(nn.Conv2d(4, 4, 1), (1, 4, 8, 8)), None))
    slow = _Recorded(runtime.compile(
        export_onnx(nn.Conv2d(64, 64, 3, padding=1), (1, 64, 32, 32)), None))
    measure_interleaved([fast, slow], warmup=5, iterations=40, burst=5)
    assert max(fast.chunks[1:] + slow.chunks[1:]) == 5, "without it, bursts of 5 runs"
    fast.chunks, slow.chunks = [], []
    measure_interleaved([fast, slow], warmup=5, iterations=40, burst=5, burst_seconds=0.005)
    assert fast.chunks[1] == 40, "a 10 µs network's 5 ms burst: all 40 runs at once"
    assert 5 <= slow.chunks[1] < 40, "a slower network's bursts need fewer runs"
    settings = TimingSettings.from_dict({"burst_seconds": 0.02})
    assert settings.burst_seconds == 0.02 and settings.to_dict()["burst_seconds"] == 0.02
    with pytest.raises(ValueError, match="burst_seconds"):
        TimingSettings.from_dict({"burst_seconds": 60})


def test_local_measurer_times_modules_and_onnx_interleaved() -> None:
    measurer = open_measurer(load_target("cpu"))
    assert measurer.where == "this machine" and measurer.fingerprint()["target"] == "cpu"
    small, large = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(128, 128, 3, padding=1)
    a, b = measurer.measure(
        [(small, (1, 4, 32, 32)), (export_onnx(large, (1, 128, 32, 32)), (1, 128, 32, 32))],
        QUICK,
    )
    assert a.samples == b.samples == 20 and b.median_ms > 5 * a.median_ms


def test_local_measurer_builds_and_runs_the_deployable() -> None:
    measurer = open_measurer(load_target("cpu"))
    net, shape = _small_net(), (1, 3, 16, 16)
    deployable = measurer.build(net, shape)
    assert deployable.format == "onnx" and onnx.load_from_string(deployable.data).graph.node
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = net(x).numpy()
    (out,) = measurer.run(deployable, [x.numpy()])
    assert abs(out - expected).max() < 1e-4
    (timed,) = measurer.measure([(deployable, shape)], QUICK)
    assert timed.median_ms > 0


def test_a_target_this_machine_cannot_run_is_refused_in_one_line() -> None:
    arm = load_target("arm-cpu")
    with pytest.raises(UserError, match="wrong architecture: this machine is x86_64"):
        open_measurer(replace(arm, architectures=("riscv64",)))


def test_summary_statistics() -> None:
    m = summarize([5.0, 1.0, 2.0, 4.0, 3.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert m.median_ms == 5.5 and m.p90_ms == 9.0 and m.samples == 10


def test_onnxruntime_refuses_fp16() -> None:
    fp16 = replace(load_target("cpu"), precision="fp16")
    with pytest.raises(UserError, match="fp32"):
        open_measurer(fp16).measure([(nn.Conv2d(2, 2, 1), (1, 2, 4, 4))], QUICK)


TRT_OK, TRT_WHY = runtimes.check("tensorrt")


@pytest.mark.skipif(not TRT_OK, reason=f"TensorRT runtime unavailable: {TRT_WHY}")
def test_tensorrt_builds_a_strongly_typed_fp16_engine_and_measures(tmp_path) -> None:
    measurer = open_measurer(load_target("gpu"))  # the FP16 graph is made on the way
    net, shape = _small_net(), (1, 3, 32, 32)
    engine = measurer.build(net, shape)
    assert engine.format == "engine"
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = net(x).numpy()
    (out,) = measurer.run(engine, [x.numpy()])
    assert abs(out - expected).max() < 5e-2
    (result,) = measurer.measure([(engine, shape)], QUICK)
    assert 0 < result.median_ms <= result.p90_ms
    runtime = runtimes.create("tensorrt", precision="fp16")
    with pytest.raises(Exception, match="no FP16 or INT8 tensors"):  # an FP32 graph is refused
        runtime.build(export_onnx(net, shape), shape)
    assert runtime.timing_cache_path.stat().st_size > 0  # kept for the next build


CUDA_OK, CUDA_WHY = runtimes.check("torch-cuda")


@pytest.mark.skipif(not CUDA_OK, reason=f"torch-cuda runtime unavailable: {CUDA_WHY}")
def test_torch_cuda_graph_runs_and_measures() -> None:
    runtime = runtimes.create("torch-cuda", precision="fp32")
    net = _small_net()
    compiled = runtime.compile(net, (1, 3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = net(x).numpy()
    assert abs(compiled.run(x.numpy()) - expected).max() < 1e-3
    small, large = (
        runtime.compile(nn.Conv2d(c, c, 3, padding=1), (1, c, 64, 64)) for c in (4, 512)
    )
    a, b = measure_interleaved([small, large], warmup=5, iterations=30)
    assert 0 < a.median_ms <= a.p90_ms and b.median_ms > a.median_ms
