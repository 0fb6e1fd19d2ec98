"""The differentiable latency model: gradients, consistency between gated and pruned nets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from latency_helpers import synthetic_lut

from hwdnal.budget.fit import mask_from_counts, predicted_ms, ranked_channels
from hwdnal.errors import UserError
from hwdnal.gating.alignment import align_keep_mask, aligned_count
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.latency.calibration import fit_correction, random_keep_mask
from hwdnal.latency.group_counts import GroupCountLatency
from hwdnal.latency.predictor import LatencyModel
from hwdnal.models import create_model

CASES = [("resnet20", (1, 3, 16, 16)), ("mobilenet_v2_cifar", (1, 3, 16, 16))]


@pytest.mark.parametrize(("name", "shape"), CASES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_is_positive_on_every_gate_at_delta_1e4(name, shape, sign, tmp_path) -> None:
    """More channels, more latency: d latency / d s > 0 for every gate, even when saturated."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    lut = synthetic_lut(model, shape, tmp_path)
    gated = GatedModel(copy.deepcopy(model), torch.randn(*shape))
    gated.set_keep_mask(torch.ones(gated.plan.num_gates, dtype=torch.bool) if sign > 0
                        else torch.zeros(gated.plan.num_gates, dtype=torch.bool))
    gated.set_mode(GateMode.SOFT)
    assert gated.gate.delta == 1e4
    latency = LatencyModel(lut).predict_gated(gated)
    latency.backward()
    grad = gated.gate.s.grad
    assert latency.item() > 0
    assert torch.all(grad > 0), f"{int((grad <= 0).sum())} gates without a positive gradient"


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_gated_prediction_matches_prediction_of_the_pruned_network(name, shape, tmp_path) -> None:
    torch.manual_seed(1)
    model = create_model(name, num_classes=10)
    lut = synthetic_lut(model, shape, tmp_path)
    predictor = LatencyModel(lut)
    gated = GatedModel(copy.deepcopy(model), torch.randn(*shape))
    keep = random_keep_mask(gated, torch.Generator().manual_seed(3), multiple=4)
    gated.set_keep_mask(keep)
    from_gates = predictor.predict_gated(gated, hard=True).item()
    pruned = prune_physically(gated)
    assert from_gates == pytest.approx(predictor.predict_module(pruned), rel=1e-6)
    dense = predictor.predict_module(model)
    assert from_gates < dense


def test_lut_of_another_model_is_refused(tmp_path) -> None:
    lut = synthetic_lut(create_model("resnet20", num_classes=10), (1, 3, 16, 16), tmp_path)
    with pytest.raises(UserError, match="another model"):
        LatencyModel(lut).predict_module(create_model("vgg16_bn_cifar", num_classes=10))


def test_calibration_fit_recovers_a_known_correction() -> None:
    raw = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.5]
    act = [0.5, 0.7, 1.6, 1.9, 2.2, 3.5, 3.6]
    measured = [0.8 * r + 0.3 * a + 0.2 for r, a in zip(raw, act, strict=True)]
    fit = fit_correction(raw, act, measured)
    assert fit.scale == pytest.approx(0.8)
    assert fit.memory_ms_per_melem == pytest.approx(0.3)
    assert fit.offset_ms == pytest.approx(0.2)


def test_calibration_never_yields_a_negative_slope() -> None:
    fit = fit_correction([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [1, 2.1, 2.9, 4.2, 5, 6.1])
    assert fit.scale > 0 and fit.memory_ms_per_melem >= 0


def test_alignment_rounds_each_group_to_the_preferred_step() -> None:
    assert aligned_count(13, 64, 8) == 16
    assert aligned_count(2, 64, 8) == 8
    assert aligned_count(63, 64, 8) == 64
    assert aligned_count(5, 6, 8) == 5
    gated = GatedModel(create_model("resnet20", num_classes=10), torch.randn(1, 3, 16, 16))
    keep = torch.rand(gated.plan.num_gates, generator=torch.Generator().manual_seed(0)) > 0.4
    aligned = align_keep_mask(gated, keep, 8)
    for group in gated.plan.groups:
        kept = int(aligned[group.start : group.stop].sum())
        assert kept % 8 == 0 or kept == group.size
    assert torch.equal(align_keep_mask(gated, aligned, 8), aligned)


def test_calibration_learns_a_per_layer_cost_when_layers_vanish():
    """Supernet sub-networks lose whole candidate blocks: a layer measured alone carries a
    fixed cost the whole network does not, and the fit finds it from the layer counts."""
    rng = np.random.default_rng(0)
    layers = rng.integers(40, 250, size=12).astype(float)
    raw = 0.01 * layers + rng.uniform(0.5, 8.0, size=12)
    measured = 1.1 * raw - 0.004 * layers + 0.2
    fit = fit_correction(raw, np.zeros(12), measured, layers, smallest_layer_ms=0.006)
    assert fit.per_layer_ms == pytest.approx(-0.004, abs=1e-6)
    assert fit.scale == pytest.approx(1.1, rel=1e-6)
    # constant layer counts (a CNN's sub-networks): no per-layer term
    same = fit_correction(raw, np.zeros(12), 1.1 * raw + 0.2, np.full(12, 60.0), 0.006)
    assert same.per_layer_ms == 0.0
    # a per-layer term that would make a layer cost less than nothing is refused
    steep = fit_correction(raw, np.zeros(12), 1.1 * raw - 0.02 * layers + 5.0, layers, 0.006)
    assert steep.per_layer_ms == 0.0


@pytest.mark.parametrize(("name", "shape"), [
    *CASES, ("toy_models:shuffle_net", (1, 3, 16, 16)),
    ("toy_models:concat_grouped_net", (1, 3, 16, 16)),
    ("proxyless_supernet_cifar", (1, 1, 16, 16)),
])
def test_batched_group_counts_predict_what_the_gated_model_predicts(name, shape,
                                                                     tmp_path) -> None:
    """The fit's fast path (kept counts per group, many architectures at once) gives the
    gated model's hard prediction: across concatenations, shuffles and dropped candidates."""
    torch.manual_seed(0)
    model = create_model(name, 10, shape[1])
    lut = synthetic_lut(model, shape, tmp_path)
    gated = GatedModel(copy.deepcopy(model), torch.randn(*shape))
    with torch.no_grad():
        gated.gate.s.copy_(torch.randn(gated.plan.num_gates))
    predictor = LatencyModel(lut)
    ranked = ranked_channels(gated)
    siblings = gated.rule.siblings
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(5):
        row = []
        for k, group in enumerate(gated.plan.groups):
            count = int(torch.randint(1, group.size + 1, (1,), generator=generator))
            first_of_plain_layer = bool(siblings.get(k)) and siblings[k][0] == k
            if k in siblings and not first_of_plain_layer and \
                    float(torch.rand((), generator=generator)) < 0.4:
                count = 0  # a dropped candidate (a layer without residual keeps its first)
            row.append(count)
        rows.append(row)
    batched = GroupCountLatency(gated, predictor, ranked).predict(torch.tensor(rows))
    one_by_one = [predicted_ms(gated, predictor, mask_from_counts(gated, ranked, row))
                  for row in rows]
    assert batched.tolist() == pytest.approx(one_by_one, rel=1e-6)  # the gates are float32
    if gated.blocks:
        assert any(0 in row for row in rows), "the supernet case drops candidates"
