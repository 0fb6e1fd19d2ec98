"""DNAL's scaled-sigmoid (SS) channel gate and the schedule of its scale δ.

One :class:`ScaledSigmoidGate` holds the architecture parameters ``s`` of one group of
coupled channels. Its value is ``sigmoid(δ·s)``: with δ = 1 it is a smooth gate, and as δ
grows towards 1e4 it becomes a step function, so that by the end of the architecture stage
every gate reads exactly 0 or 1 and the binarised network is the one that was trained.

The saturation pitfall: ``d sigmoid(δs)/ds = δ·σ(δs)(1-σ(δs))`` is zero almost everywhere
once δ is large, which would freeze the search half-way. DNAL's own code keeps its sparsity
term on ``sigmoid(s)`` for that reason. We go one step further and give the *whole* gate a
straight-through surrogate: the forward value is ``sigmoid(δs)`` (what the network computes
with), the backward pass uses the gradient of ``sigmoid(s)`` (alive for every finite s).
Every loss term that reads a gate — cross-entropy, λa's sparsity, the latency model — thus
keeps a useful, correctly signed gradient up to δ = 1e4.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from torch import nn

from hwdnal.gating import KEEP_THRESHOLD


class GateMode(StrEnum):
    """How a gate acts on the channels it guards."""

    OFF = "off"  # identity: training the weights of the dense network
    SOFT = "soft"  # x · sigmoid(δs): the architecture stage
    HARD = "hard"  # x · 1[sigmoid(δs) > KEEP_THRESHOLD]: what pruning will produce


def straight_through_sigmoid(s: torch.Tensor, delta: float, floor: float = 0.0) -> torch.Tensor:
    """``max(sigmoid(δs), floor)`` in the forward pass, the gradient of ``sigmoid(s)`` in
    the backward."""
    surrogate = torch.sigmoid(s)
    if delta == 1.0 and floor <= 0.0:
        return surrogate
    value = torch.sigmoid(s * delta)
    if floor > 0.0:
        value = value.clamp_min(floor)
    return surrogate + (value - surrogate).detach()


class ScaledSigmoidGate(nn.Module):
    """The gate of one channel group: a vector ``s`` and its mode and scale."""

    def __init__(self, num_channels: int, name: str = "") -> None:
        super().__init__()
        self.s = nn.Parameter(torch.zeros(num_channels))
        self.name = name
        self.mode = GateMode.OFF
        self.delta = 1.0
        #: the least value the soft gate passes on (:data:`SOFT_FLOOR` in the search)
        self.floor = 0.0

    @property
    def num_channels(self) -> int:
        return self.s.numel()

    def forward(self) -> torch.Tensor | None:
        """The per-channel multiplier, or ``None`` when the gate is off."""
        if self.mode is GateMode.OFF:
            return None
        if self.mode is GateMode.HARD:
            return self.binary().to(self.s.dtype)
        return straight_through_sigmoid(self.s, self.delta, self.floor)

    def probability(self) -> torch.Tensor:
        """Differentiable keep-probability of each channel (what the cost terms read)."""
        return straight_through_sigmoid(self.s, self.delta)

    def binary(self) -> torch.Tensor:
        """Which channels read above DNAL's keep threshold."""
        with torch.no_grad():
            return torch.sigmoid(self.s * self.delta) > KEEP_THRESHOLD

    def extra_repr(self) -> str:
        return f"{self.name or 'gate'}: {self.num_channels} channels, mode={self.mode.value}"


class DeltaSchedule:
    """δ grows exponentially from ``start`` to ``end`` over ``total_steps`` steps."""

    def __init__(self, total_steps: int, start: float = 1.0, end: float = 1e4) -> None:
        if total_steps < 1:
            raise ValueError("the δ schedule needs at least one step")
        if not 0 < start <= end:
            raise ValueError("δ must grow from a positive start to a larger end")
        self.total_steps = total_steps
        self.start = start
        self.end = end

    def __call__(self, step: int) -> float:
        fraction = min(max(step, 0), self.total_steps - 1) / max(self.total_steps - 1, 1)
        log_delta = math.log(self.start) + fraction * (math.log(self.end) - math.log(self.start))
        return math.exp(log_delta)
