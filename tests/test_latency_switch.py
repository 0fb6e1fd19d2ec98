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


def _nested_masks(gated: GatedModel, fractions: list[float]) -> list[torch.Tensor]:
    """s of architectures that keep a growing share of each gate (nested: more kept is
    never faster)."""
    order = torch.rand(gated.gate.s.shape, generator=torch.Generator().manual_seed(0))
    return [torch.where(order < fraction, 0.5, -0.5) for fraction in fractions]


def test_the_stage_ends_on_the_late_architecture_nearest_under_the_aim(tmp_path) -> None:
    """The switch swings the mask under the aim and back; the stage keeps the late one with
    the highest latency under the aim, not the last one, and masks seen while δ is small
    (gates not yet binary) are not candidates."""
    model = create_model("resnet20", 10, 1).eval()
    latency = LatencyModel(synthetic_lut(model, (1, 1, 28, 28), tmp_path))
    gated = GatedModel(copy.deepcopy(model), torch.randn(1, 1, 28, 28))
    gated.set_mode(GateMode.SOFT)
    early, over, near, far, last = _nested_masks(gated, [0.72, 0.95, 0.7, 0.4, 0.5])

    def relative(s: torch.Tensor) -> float:
        gated.set_delta(1e4)
        with torch.no_grad():
            gated.gate.s.copy_(s)
            return float(latency.predict_gated(gated, values=gated.gate.binary()))

    budget = relative(near) / 0.9  # near lands at 90% of the budget, under the 97% aim
    # early would be the best if the δ of its step did not rule it out
    assert relative(near) < relative(early) < 0.97 * budget < relative(over)
    assert relative(last) < relative(near)
    constraint = LatencyConstraint(latency, budget, control="switch")
    term = constraint.term()
    term.gated = gated
    assert term.at_end is not None and term.state is not None and term.load_state
    for delta, s in [(10.0, early), (2e3, over), (2e3, near), (4e3, far), (1e4, last)]:
        with torch.no_grad():
            gated.gate.s.copy_(s)
        gated.set_delta(delta)
        constraint.ascend(term, term.value().detach())

    resumed = LatencyConstraint(latency, budget, control="switch")
    resumed.load_state(term.state())  # a stage stopped here and resumed ends the same way
    line = resumed.term().at_end(gated)

    assert line is not None and "90%" in line
    assert torch.equal(gated.gate.binary(), near > 0)


def test_with_no_late_architecture_under_the_aim_the_last_one_stands(tmp_path) -> None:
    model = create_model("resnet20", 10, 1).eval()
    latency = LatencyModel(synthetic_lut(model, (1, 1, 28, 28), tmp_path))
    gated = GatedModel(copy.deepcopy(model), torch.randn(1, 1, 28, 28))
    gated.set_mode(GateMode.SOFT)
    (wide,) = _nested_masks(gated, [0.9])
    with torch.no_grad():
        gated.gate.s.copy_(wide)
        budget = float(latency.predict_gated(gated, values=gated.gate.binary())) / 2
    constraint = LatencyConstraint(latency, budget, control="switch")
    term = constraint.term()
    term.gated = gated
    gated.set_delta(1e4)
    constraint.ascend(term, term.value().detach())

    line = constraint.end_on_best(gated)

    assert line is not None and "the last one stands" in line
    assert torch.equal(gated.gate.binary(), wide > 0)
