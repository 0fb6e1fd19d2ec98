"""Per-layer latency tables: every prunable conv/linear layer timed over a channel grid.

Layers with the same geometry and full widths share one entry; points with the same
geometry and channels are measured once (and found again in the measurement cache by later
profiles of other models). Each batch of points is compiled together and timed interleaved,
so slow drifts of a shared machine do not tilt one table against another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from hwdnal.devices.measurer import Measurer, TimingSettings
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.grid import channel_axis, monotone
from hwdnal.latency.lut import LutEntry, LutLayer
from hwdnal.latency.signature import LayerGeometry, LayerInfo, geometry_of, layer_shapes

#: progress(done, total, what) — called after each measured batch
Progress = Callable[[int, int, str], None]
BATCH = 8  # points compiled and timed together


def discover_layers(gated, example_input: torch.Tensor) -> dict[str, LayerInfo]:
    """Every conv/linear layer of a gated model with its geometry and channel range.

    ``gated`` is a :class:`hwdnal.gating.model.GatedModel`; its channel plan tells which channels
    no gate can remove (model inputs, logits), i.e. the smallest widths a layer can reach.
    """
    model = gated.model
    shapes = layer_shapes(model, example_input)
    num_gates = gated.plan.num_gates
    layers: dict[str, LayerInfo] = {}
    for name, channels in gated.plan.layers.items():
        if name not in shapes:
            continue  # never called in the forward pass: costs nothing
        module = channels.module
        in_shape, out_shape = shapes[name]
        geometry = geometry_of(module, in_shape)
        fixed_in = int((channels.in_gate_index >= num_gates).sum())
        fixed_out = int((channels.out_gate_index >= num_gates).sum())
        full_in = channels.in_gate_index.numel()
        full_out = channels.out_gate_index.numel()
        layers[name] = LayerInfo(
            name=name, geometry=geometry, in_channels=full_in, out_channels=full_out,
            min_in=full_in if fixed_in == full_in else max(1, fixed_in),
            min_out=full_out if fixed_out == full_out else max(1, fixed_out),
            out_elements_per_channel=_prod(out_shape) // max(1, full_out),
        )
    return layers


@dataclass
class GridEntry:
    key: str
    geometry: LayerGeometry
    in_axis: list[int]
    out_axis: list[int]  # [] for depthwise
    layers: list[str] = field(default_factory=list)

    def points(self) -> list[tuple[int, int]]:
        if self.geometry.kind == "depthwise":
            return [(c, c) for c in self.in_axis]
        return [(i, o) for i in self.in_axis for o in self.out_axis]


def plan_grid(layers: dict[str, LayerInfo], step: int, max_points: int) -> dict[str, GridEntry]:
    """Group layers by signature and give each signature its channel axes."""
    entries: dict[str, GridEntry] = {}
    for info in layers.values():
        geometry = info.geometry
        multiple = geometry.channel_multiple
        key = f"{geometry.key()} | {info.in_channels}x{info.out_channels}"
        if info.depthwise:
            in_axis = channel_axis(info.out_channels, info.min_out, step, max_points)
            out_axis: list[int] = []
        else:
            in_axis = channel_axis(info.in_channels, info.min_in, step, max_points, multiple)
            out_axis = channel_axis(info.out_channels, info.min_out, step, max_points, multiple)
        entry = entries.get(key)
        if entry is None:
            entries[key] = GridEntry(key, geometry, in_axis, out_axis, [info.name])
        else:  # same signature, other fixed channels: measure the union of both grids
            entry.in_axis = sorted(set(entry.in_axis) | set(in_axis))
            entry.out_axis = sorted(set(entry.out_axis) | set(out_axis))
            entry.layers.append(info.name)
    return entries


def point_key(geometry: LayerGeometry, in_channels: int, out_channels: int) -> str:
    return f"layer | {geometry.key()} | {in_channels}x{out_channels}"


def measure_grid(
    entries: dict[str, GridEntry],
    measurer: Measurer,
    batch: int,
    cache: MeasurementCache,
    settings: TimingSettings,
    progress: Progress | None = None,
) -> int:
    """Measure every grid point not yet in ``cache``; returns how many were measured now.

    Each batch of points is one request to the device (one round trip to a remote agent)."""
    todo: list[tuple[LayerGeometry, int, int]] = []
    seen: set[str] = set()
    for entry in entries.values():
        for cin, cout in entry.points():
            key = point_key(entry.geometry, cin, cout)
            if key not in cache and key not in seen:
                seen.add(key)
                todo.append((entry.geometry, cin, cout))
    total = len(todo)
    if progress:
        progress(0, total, "layer grid")
    try:
        for start in range(0, total, BATCH):
            chunk = todo[start : start + BATCH]
            results = measurer.measure(
                [(geometry.build(cin, cout), geometry.input_shape(batch, cin))
                 for geometry, cin, cout in chunk],
                settings,
            )
            for (geometry, cin, cout), result in zip(chunk, results, strict=True):
                cache.put(point_key(geometry, cin, cout), result)
            cache.flush()  # even a SIGKILL loses at most the batch in progress
            if progress:
                progress(min(start + BATCH, total), total, chunk[-1][0].key())
    finally:  # Ctrl-C or a crash keeps every finished point for the next run
        cache.flush()
    return total


def build_entries(
    entries: dict[str, GridEntry], layers: dict[str, LayerInfo], cache: MeasurementCache
) -> tuple[dict[str, LutEntry], dict[str, LutLayer]]:
    """LUT entries (raw and monotone tables) from measured points."""
    lut_entries: dict[str, LutEntry] = {}
    lut_layers: dict[str, LutLayer] = {}
    for key, entry in entries.items():
        depthwise = entry.geometry.kind == "depthwise"
        out_axis = [0] if depthwise else entry.out_axis
        raw = np.zeros((len(entry.in_axis), len(out_axis)))
        for a, cin in enumerate(entry.in_axis):
            for b, cout in enumerate(out_axis):
                point = cache.get(point_key(entry.geometry, cin, cin if depthwise else cout))
                if point is None:
                    raise RuntimeError(f"grid point {cin}x{cout} of {key} was never measured")
                raw[a, b] = point.median_ms
        lut_entries[key] = LutEntry(
            key=key, geometry=entry.geometry, depthwise=depthwise, in_axis=list(entry.in_axis),
            out_axis=[] if depthwise else list(entry.out_axis),
            latency_ms=monotone(raw).tolist(), measured_ms=raw.tolist(),
        )
        for name in entry.layers:
            info = layers[name]
            lut_layers[name] = LutLayer(
                name, key, info.in_channels, info.out_channels, info.out_elements_per_channel
            )
    return lut_entries, lut_layers


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def count_layers(model: nn.Module) -> int:
    return sum(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in model.modules())
