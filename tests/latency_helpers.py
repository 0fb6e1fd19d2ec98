"""Shared helpers for the latency tests: synthetic LUTs built without timing anything."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from hwdnal_agent.timing import Measurement
from torch import nn

from hwdnal.devices import fingerprint_here
from hwdnal.gating.model import GatedModel
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.lut import Calibration, Lut
from hwdnal.latency.profiler import build_entries, discover_layers, plan_grid, point_key
from hwdnal.targets import load_target


def synthetic_cost(geometry, cin: int, cout: int) -> float:
    """A latency that grows with both channel counts (MAC-like plus a fixed cost)."""
    spatial = 1
    for d in geometry.input_size:
        spatial *= d
    return 0.01 + 1e-6 * spatial * (cin * cout if geometry.kind != "depthwise" else cout)


def synthetic_lut(
    model: nn.Module, input_shape: tuple[int, ...], folder: Path, step: int = 4, points: int = 4
) -> Lut:
    """A LUT for ``model`` whose grid points hold ``synthetic_cost`` instead of measurements."""
    example = torch.randn(*input_shape)
    gated = GatedModel(copy.deepcopy(model), example)
    layers = discover_layers(gated, example)
    entries = plan_grid(layers, step, points)
    fingerprint = fingerprint_here(load_target("cpu"))
    cache = MeasurementCache(folder / "cache.json", fingerprint)
    for entry in entries.values():
        for cin, cout in entry.points():
            cost = synthetic_cost(entry.geometry, cin, cout)
            cache.put(point_key(entry.geometry, cin, cout), Measurement(cost, cost, 1))
    lut_entries, lut_layers = build_entries(entries, layers, cache)
    return Lut(
        fingerprint=fingerprint,
        model={"name": type(model).__name__, "input_shape": list(input_shape)},
        entries=lut_entries,
        layers=lut_layers,
        calibration=Calibration(scale=0.9, memory_ms_per_melem=0.5, offset_ms=0.1, samples=0),
    )
