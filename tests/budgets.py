"""Budgets a test can rely on, on any CPU: derived from what this device reaches.

How much of a tiny network's time is fixed per-op overhead depends on the CPU, so "60%" is
reachable on one machine and below the smallest network on the next. A test that needs a
reachable budget asks the device: the dense network and the smallest reachable one are
measured in one call, and the budget sits ``where`` of the way from the smallest (0) to the
dense network (1), as a percentage that the search resolves against its own measurement.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hwdnal.budget.reach import reachable_latency
from hwdnal.devices import open_measurer
from hwdnal.models import create_model
from hwdnal.targets import load_target


def reachable_fraction(target: str | Path, model_name: str = "resnet20", input_size: int = 16,
                       in_channels: int = 3, where: float = 0.5,
                       remote: str | None = None) -> float:
    """A fraction of the dense latency between the smallest reachable network and dense."""
    spec = load_target(str(target)).with_remote(remote)
    model = create_model(model_name, num_classes=10, in_channels=in_channels).eval()
    example = torch.randn(1, in_channels, input_size, input_size)
    measurer = open_measurer(spec)
    try:
        dense_ms, smallest_ms = reachable_latency(measurer, model, example,
                                                  spec.profile.preferred_channel_step)
    finally:
        measurer.close()
    floor = min(smallest_ms / dense_ms, 1.0)
    return floor + where * (1.0 - floor)


def reachable_budget(target: str | Path, model_name: str = "resnet20", input_size: int = 16,
                     in_channels: int = 3, where: float = 0.5,
                     remote: str | None = None) -> str:
    """``reachable_fraction`` as a ``--budget`` text ("77%"), rounded up to a whole percent
    and never above 95% (a budget the dense network meets asks nothing of the search)."""
    fraction = reachable_fraction(target, model_name, input_size, in_channels, where, remote)
    return f"{min(95, math.ceil(100 * fraction))}%"
