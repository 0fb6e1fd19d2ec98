"""What the device can reach: networks measured together in one interleaved call, and the
dense and smallest reachable networks (which fractional budgets can be met at all)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from hwdnal.budget.fit import mask_from_counts, minimal_counts, ranked_channels
from hwdnal.devices.measurer import Measurement, Measurer, target_settings
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import subnetwork


def measure_together(
    measurer: Measurer, networks: list[nn.Module], input_shape: tuple[int, ...]
) -> list[Measurement]:
    """Interleaved measurement after a discarded warm-up pass (cold caches, thread pools
    and clock ramps inflate whatever is measured first in a process)."""
    return measurer.measure(
        [(copy.deepcopy(net).cpu().eval(), input_shape) for net in networks],
        target_settings(measurer.target, pre_seconds=0.2),
    )


def reachable_latency(
    measurer: Measurer, model: nn.Module, example: torch.Tensor, channel_step: int
) -> tuple[float, float]:
    """The dense network's and the smallest reachable network's measured medians (ms),
    interleaved in one call: how much of a small network's time is per-op overhead depends
    on the device, so which fractional budgets can be met is known only by measuring."""
    model = copy.deepcopy(model).cpu().eval()
    example = example.cpu()
    gated = GatedModel(copy.deepcopy(model), example)
    counts = minimal_counts(gated, channel_step)
    smallest = subnetwork(model, mask_from_counts(gated, ranked_channels(gated), counts), example)
    input_shape = (measurer.target.batch, *example.shape[1:])
    dense_measured, smallest_measured = measure_together(measurer, [model, smallest],
                                                          input_shape)
    return dense_measured.median_ms, smallest_measured.median_ms
