"""The scaled-sigmoid gate: its modes, δ's schedule, and gradients alive at δ = 1e4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hwdnal.gating.gate import DeltaSchedule, GateMode, ScaledSigmoidGate
from hwdnal.gating.model import GatedModel


def test_gate_modes():
    gate = ScaledSigmoidGate(3)
    with torch.no_grad():
        gate.s.copy_(torch.tensor([-0.5, 0.001, 0.5]))
    assert gate() is None  # off: identity
    gate.mode, gate.delta = GateMode.SOFT, 2.0
    assert torch.allclose(gate(), torch.sigmoid(2.0 * gate.s))
    gate.mode, gate.delta = GateMode.HARD, 1e4
    assert gate().tolist() == [0.0, 1.0, 1.0]


def test_delta_grows_exponentially_from_1_to_1e4():
    schedule = DeltaSchedule(total_steps=101)
    assert schedule(0) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(100.0)
    assert schedule(100) == pytest.approx(1e4)
    ratios = [schedule(i + 1) / schedule(i) for i in range(100)]
    assert max(ratios) == pytest.approx(min(ratios))


def _useful_and_harmful_channel_net() -> nn.Module:
    """Channel 0 carries the label; channel 1 is the same signal pushing the wrong way."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[5].weight.copy_(torch.tensor([[-2.0, 1.0], [2.0, -1.0]]))
    return net.eval()  # BatchNorm at its initial identity statistics


def test_architecture_gradient_is_alive_and_correctly_signed_at_delta_1e4():
    net = _useful_and_harmful_channel_net()
    labels = torch.tensor([0, 1, 0, 1])
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    gated = GatedModel(net, images)
    assert gated.plan.num_gates == 2
    gated.set_mode(GateMode.SOFT)
    gated.set_delta(1e4)
    with torch.no_grad():
        gated.gate.s.fill_(0.01)  # both channels on: sigmoid(1e4 · 0.01) = 1

    F.cross_entropy(gated(images), labels).backward()
    grad = gated.gate.s.grad
    assert grad[0] < -1e-3, "removing the useful channel must raise the loss"
    assert grad[1] > 1e-3, "removing the harmful channel must lower the loss"

    # The naive gate sigmoid(δs) has no gradient left here: the pitfall the design avoids.
    s = torch.full((2,), 0.01, requires_grad=True)
    torch.sigmoid(1e4 * s).sum().backward()
    assert s.grad.abs().max() < 1e-30

    gated.gate.s.grad = None
    gated.sparsity().backward()
    assert (gated.gate.s.grad > 0).all(), "the sparsity term must push every gate towards 0"


def test_expected_channel_counts_are_differentiable_at_delta_1e4():
    net = _useful_and_harmful_channel_net()
    gated = GatedModel(net, torch.zeros(1, 1, 4, 4))
    gated.set_mode(GateMode.SOFT)
    gated.set_delta(1e4)
    with torch.no_grad():
        gated.gate.s.copy_(torch.tensor([0.3, -0.3]))
    counts = {c.name: c for c in gated.channel_counts()}
    conv = counts["0"]
    assert conv.out_channels.item() == pytest.approx(1.0, abs=1e-6)  # forward: binary gates
    conv.out_channels.backward()
    assert (gated.gate.s.grad > 0).all()  # more channels kept ⇒ larger count
    assert counts["5"].in_channels.item() == pytest.approx(1.0, abs=1e-6)
    assert counts["5"].out_channels.item() == 2  # class logits are never gated
    assert not math.isnan(float(gated.sparsity().detach()))


def _closed_channel_gradient(floor: float) -> torch.Tensor:
    """The gradient the cross-entropy sends to the useful channel's gate once it is closed
    (s = -0.01 at δ = 1e4: sigmoid(-100) ≈ 4e-44), with the gate before the ReLU."""
    from hwdnal.gating import SOFT_FLOOR

    net = _useful_and_harmful_channel_net()
    labels = torch.tensor([0, 1, 0, 1])
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous()
    gated = GatedModel(net, images)
    gated.set_mode(GateMode.SOFT)
    gated.set_delta(1e4)
    gated.gate.floor = SOFT_FLOOR if floor else 0.0
    with torch.no_grad():
        gated.gate.s.copy_(torch.tensor([-0.01, 0.01]))
    F.cross_entropy(gated(images), labels).backward()
    return gated.gate.s.grad[0]


def test_a_closed_gate_still_hears_the_cross_entropy():
    """A gate sits before a ReLU, and ReLU'(0) = 0: multiplied by exactly 0, a channel gets
    no gradient and never reopens (the ratchet). The soft gate's floor keeps it audible,
    with the sign that says reopening the useful channel lowers the loss."""
    assert _closed_channel_gradient(floor=0.0) == 0.0
    assert _closed_channel_gradient(floor=1.0) < -1e-4


def test_scaling_a_group_changes_the_loss_with_running_statistics():
    """With BatchNorm on batch statistics a group's common scale is normalised away:
    Σ g·∂L/∂g = 0 and the cross-entropy cannot say how wide the group should be. On the
    dense network's running statistics (the architecture stage's default) it can."""
    from conftest import calibrate_batchnorm

    from hwdnal.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_channels=1)
    calibrate_batchnorm(model, (32, 1, 16, 16))
    images, labels = torch.randn(32, 1, 16, 16), torch.randint(0, 10, (32,))

    def scale_sensitivity(batch_statistics: bool) -> list[float]:
        gated = GatedModel(model, images[:2])
        gated.set_mode(GateMode.SOFT)
        gated.model.eval()
        if batch_statistics:
            for module in gated.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.train()
        with torch.no_grad():
            gated.gate.s.fill_(0.5)
        F.cross_entropy(gated(images), labels).backward()
        values = gated.gate().detach()
        g_dl = (gated.gate.s.grad / (values * (1 - values))) * values  # g · ∂L/∂g
        # a removable residual branch's group also sets its block gate (the largest of its
        # gates, multiplying the branch's output): that sees the scale on any statistics
        branches = {b.group for b in gated.blocks if b.is_branch}
        sums = [float(g_dl[g.start:g.stop].sum()) for k, g in enumerate(gated.plan.groups)
                if not (batch_statistics and k in branches)]
        gated.detach_gates()
        return sums

    batch = scale_sensitivity(True)
    running = scale_sensitivity(False)
    # groups read by BatchNorm only (not the classifier's input group) lose their scale
    assert len(batch) == 5 and sum(abs(v) < 1e-5 for v in batch) >= len(batch) - 2, batch
    assert sum(abs(v) > 1e-4 for v in running) >= len(running) - 1, running
