"""The latency term's switch judges the architecture the gates stand for now, not the soft
prediction that lags it while the gates cross zero together."""

from __future__ import annotations

import copy

import pytest
import torch
from latency_helpers import synthetic_lut

from hwdnal.budget.term import LatencyConstraint
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.latency.predictor import LatencyModel
from hwdnal.models import create_model


@pytest.mark.parametrize(("switch_on", "weight"), [("mask", 0.0), ("soft", 10.0)])
def test_gates_just_past_zero_switch_the_latency_weight_off_only_on_the_mask(
        tmp_path, switch_on: str, weight: float) -> None:
    model = create_model("resnet20", 10, 1).eval()
    example = torch.randn(1, 1, 28, 28)
    latency = LatencyModel(synthetic_lut(model, (1, 1, 28, 28), tmp_path))
    gated = GatedModel(copy.deepcopy(model), example)
    gated.set_mode(GateMode.SOFT)
    gated.set_delta(1.0)
    with torch.no_grad():
        gated.gate.s.fill_(-0.05)  # every gate just closed: soft values still about 0.49
        soft = float(latency.predict_gated(gated))
        mask = float(latency.predict_gated(gated, values=gated.gate.binary()))
    assert mask < 0.5 * soft  # the open gates' architecture: nothing left but the classifier
    budget = (soft + mask) / 2
    constraint = LatencyConstraint(latency, budget, control="switch", switch_on=switch_on)
    term = constraint.term()
    term.gated = gated
    value = term.value()
    constraint.ascend(term, value.detach())
    assert float(value) == pytest.approx(soft / budget, rel=1e-6)
    assert float(term.weight) == weight
