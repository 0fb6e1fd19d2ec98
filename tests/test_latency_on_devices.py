"""The latency model, the latency term, the fit and the layer table on the gates' device.

Every test runs on the CPU and, where torch sees one, on a CUDA GPU (skipped with the
reason elsewhere). Two checks need no GPU to catch what a GPU would: PyTorch's ``meta``
device runs the whole latency term with no data, and a dispatch watcher records every
operation of a training step's latency term, failing on any that mixes devices (a grid on
the CPU, counts on the GPU: what ``torch.searchsorted`` refuses on CUDA) or reads a value
back to the host (``.item()``/``int()``/``float()``: a device sync).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from budgets import reachable_budget
from latency_helpers import synthetic_lut
from tiny_run import quick_target
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hwdnal.budget.fit import fit_to_latency, predicted_ms
from hwdnal.budget.measure import gates_on_cpu
from hwdnal.budget.term import LatencyConstraint
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.latency.calibration import random_keep_mask
from hwdnal.latency.grid import interpolate, interpolate_grids, stack_grids
from hwdnal.latency.predictor import LatencyModel
from hwdnal.models import create_model
from hwdnal.search import DnalSearch, SearchConfig
from hwdnal.stages.prune import layer_table

NO_CUDA = "no CUDA GPU visible to torch on this machine (torch.cuda.is_available() is False)"
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda",
                 marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)),
]
CASES = [("resnet20", (1, 3, 16, 16)), ("mobilenet_v2_cifar", (1, 3, 16, 16))]


def _setup(name: str, shape: tuple[int, ...], folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10)
    lut = synthetic_lut(model, shape, folder)
    gated = GatedModel(copy.deepcopy(model), torch.randn(*shape))
    with torch.no_grad():
        gated.gate.s.copy_(torch.randn(gated.plan.num_gates))
    gated.set_mode(GateMode.SOFT)
    gated.set_delta(3.0)
    return model, lut, gated


class _Watch(TorchDispatchMode):
    """Records operations that mix devices or read a tensor back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[str] = []
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        devices = {t.device for t in tree_leaves((args, kwargs, out))
                   if isinstance(t, torch.Tensor)}
        if len(devices) > 1:
            self.mixed.append(f"{func}: {sorted(map(str, devices))}")
        return out


# -- interpolation ------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_batched_interpolation_matches_each_layer_alone(device: str) -> None:
    """Rows of different grid sizes (one-point axes included) padded into one batch."""
    layers = [
        ([8, 16, 24], [8, 16], [[1.0, 2.0], [3.0, 5.0], [4.0, 7.0]]),
        ([3], [16, 32, 48, 64], [[0.5, 0.7, 1.0, 1.6]]),
        ([4, 8, 12, 16], [1], [[0.1], [0.2], [0.4], [0.5]]),
        ([3], [10], [[2.5]]),
    ]
    grids = stack_grids(layers).to(device)
    cin = torch.tensor([12.0, 3.0, 10.0, 3.0], dtype=torch.float64, device=device)
    cout = torch.tensor([12.0, 40.0, 1.0, 10.0], dtype=torch.float64, device=device)
    batched = interpolate_grids(grids, cin, cout)
    assert batched.device.type == device
    for k, (a, b, t) in enumerate(layers):
        f64 = dict(dtype=torch.float64)  # a CPU grid: interpolate() moves it to the counts
        alone = interpolate(torch.tensor(a, **f64), torch.tensor(b, **f64),
                            torch.tensor(t, **f64), cin[k], cout[k])
        assert alone.device.type == device
        assert float(alone) == pytest.approx(float(batched[k]), abs=1e-12)
    expected = [2.75, 0.85, 0.3, 2.5]  # worked by hand: bilinear, then linear, linear, constant
    assert batched.cpu().tolist() == pytest.approx(expected)


@pytest.mark.parametrize("device", DEVICES)
def test_interpolation_extrapolates_linearly_and_floors_at_zero(device: str) -> None:
    grids = stack_grids([([8, 16], [8, 16], [[1.0, 2.0], [3.0, 5.0]])]).to(device)
    f64 = dict(dtype=torch.float64, device=device)
    above = interpolate_grids(grids, torch.tensor([24.0], **f64), torch.tensor([8.0], **f64))
    below = interpolate_grids(grids, torch.tensor([-40.0], **f64), torch.tensor([8.0], **f64))
    assert float(above[0]) == pytest.approx(5.0)  # 1 + 2 · (3 - 1)
    assert float(below[0]) == 0.0


# -- the latency model and the latency term -----------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "shape"), CASES)
def test_latency_term_on_the_gates_device_has_gradients_there(name, shape, device,
                                                               tmp_path) -> None:
    _, lut, gated = _setup(name, shape, tmp_path)
    predictor = LatencyModel(lut)
    on_cpu = predictor.predict_gated(gated).item()
    gated = gated.to(device)
    constraint = LatencyConstraint(predictor, budget_ms=1.0)
    term = constraint.term()
    term.gated = gated
    value = term.value()
    assert value.device == gated.gate.s.device and value.dtype == gated.gate.s.dtype
    value.backward()
    grad = gated.gate.s.grad
    assert grad is not None and grad.device == gated.gate.s.device
    assert torch.all(grad > 0), "more channels predict more latency, on every gate"
    assert value.item() == pytest.approx(on_cpu, rel=1e-5)
    term.weight = 0.5
    constraint.ascend(term, value.detach())  # the step's value, never read back
    assert isinstance(term.weight, torch.Tensor) and term.weight.device == value.device
    assert float(term.weight) == pytest.approx(
        max(0.0, 0.5 + constraint.rate * (value.item() - constraint.aim)))


@pytest.mark.parametrize("device", [*DEVICES, pytest.param("meta", id="meta")])
@pytest.mark.parametrize(("name", "shape"), CASES)
def test_a_latency_step_mixes_no_devices_and_reads_nothing_back(name, shape, device,
                                                                 tmp_path) -> None:
    """After the first step (which copies the tables to the device once), a step's term
    and its backward pass stay on the gates' device and never wait for it."""
    _, lut, gated = _setup(name, shape, tmp_path)
    gated = gated.to(device)
    term = LatencyConstraint(LatencyModel(lut), budget_ms=1.0).term()
    term.gated = gated
    term.value().backward()  # the first step: tables and indices reach the device
    watch = _Watch()
    with watch:
        value = term.value()
        value.backward()
    assert value.device == gated.gate.s.device
    assert not watch.mixed, f"operations mixing devices: {watch.mixed[:3]}"
    assert not watch.reads, f"host reads in a step: {len(watch.reads)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("name", "shape"), CASES)
def test_hard_prediction_on_the_device_matches_the_pruned_network(name, shape, device,
                                                                   tmp_path) -> None:
    model, lut, gated = _setup(name, shape, tmp_path, seed=1)
    predictor = LatencyModel(lut)
    keep = random_keep_mask(gated, torch.Generator().manual_seed(3), multiple=4)
    gated.set_keep_mask(keep)
    gated = gated.to(device)
    on_device = predictor.predict_gated(gated, hard=True)
    assert on_device.device == gated.gate.s.device
    assert predicted_ms(gated, predictor, keep) == pytest.approx(on_device.item(), rel=1e-6)
    pruned = prune_physically(gated.cpu())
    assert on_device.item() == pytest.approx(predictor.predict_module(pruned), rel=1e-5)
    assert on_device.item() < predictor.predict_module(model)


# -- the fit and the layer table ------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_fit_on_the_device_gives_the_fit_on_the_cpu(device: str, tmp_path) -> None:
    model, lut, gated = _setup("resnet20", (1, 3, 16, 16), tmp_path)
    predictor = LatencyModel(lut)
    start = torch.ones(gated.plan.num_gates, dtype=torch.bool)
    target = 0.6 * predicted_ms(gated, predictor, start)
    on_cpu = fit_to_latency(gated, predictor, target, multiple=4, start=start)
    gated = gated.to(device)
    s_before = gated.gate.s.detach().clone()
    twin = gates_on_cpu(gated, model, torch.randn(1, 3, 16, 16))
    assert twin.gate.s.device.type == "cpu"
    assert torch.equal(twin.gate.s, s_before.cpu()) and twin.gate.delta == gated.gate.delta
    assert torch.equal(fit_to_latency(twin, predictor, target, 4, start), on_cpu)
    # and where the gates are, should a caller fit there directly
    assert torch.equal(fit_to_latency(gated, predictor, target, 4, start), on_cpu)
    assert torch.equal(gated.gate.s, s_before), "fitting leaves the gates as they were"


@pytest.mark.parametrize("device", DEVICES)
def test_layer_table_on_the_device(device: str, tmp_path) -> None:
    _, lut, gated = _setup("mobilenet_v2_cifar", (1, 3, 16, 16), tmp_path)
    predictor = LatencyModel(lut)
    gated.set_keep_mask(random_keep_mask(gated, torch.Generator().manual_seed(5), multiple=4))
    on_cpu = layer_table(gated, predictor)
    on_device = layer_table(gated.to(device), predictor)
    assert on_device == on_cpu
    assert any(row["pruned_out"] < row["dense_out"] for row in on_cpu)
    assert all(row["pruned_lut_ms"] <= row["dense_lut_ms"] + 1e-12 for row in on_cpu)


# -- a whole budgeted search -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.latency
def test_budgeted_search_on_the_device(device: str, tmp_path: Path, monkeypatch) -> None:
    """Train on ``device``, measure on this machine's CPU (the cpu-quick target)."""
    target = quick_target(tmp_path)
    config = SearchConfig(
        model="resnet20", data="synthetic", input_size=16, train_subset=256, test_subset=128,
        batch_size=64, epochs_weights=1, epochs_arch=2, epochs_finetune=1, compile=False,
        device=device, target=str(target), budget=reachable_budget(target),
    )
    DnalSearch(config, tmp_path / "run").run()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["fit_rounds"] and result["layers"] and "pruned_lut_ms" in result["layers"][0]
    assert any("predicted_latency_ms" in point for point in result["arch_curve"])
