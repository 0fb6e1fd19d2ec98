"""Predicted latency of a gated or plain network from a LUT, as a differentiable expression.

    predicted = scale · Σ_layers LUT_layer(in, out) + memory · Σ_layers out · elements + offset

For a :class:`hwdnal.gated.GatedModel` the channel counts are the gates' expected counts
(`channel_counts()`), which carry DNAL's straight-through gradient, so the latency term
keeps a non-zero, correctly signed gradient on every gate parameter up to δ = 1e4 (the LUT
tables are monotone, so more channels never predict less latency). ``scale``, ``memory`` and
``offset`` come from the calibration against whole-network measurements: the per-layer sum
misses fusion, element-wise work between layers and per-run overheads.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from hwdnal.errors import UserError
from hwdnal.latency.grid import interpolate
from hwdnal.latency.lut import Lut
from hwdnal.latency.signature import channels_of, is_depthwise

Count = torch.Tensor | float | int


class LatencyModel:
    """A LUT turned into torch tables, ready to predict."""

    def __init__(self, lut: Lut) -> None:
        self.lut = lut
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]] = {}
        for key, entry in lut.entries.items():
            table = torch.tensor(entry.latency_ms, dtype=torch.float64)
            in_axis = torch.tensor(entry.in_axis, dtype=torch.float64)
            out_axis = torch.tensor(entry.out_axis or [1], dtype=torch.float64)
            self._tables[key] = (in_axis, out_axis, table, entry.depthwise)

    @property
    def scale(self) -> float:
        return self.lut.calibration.scale

    @property
    def offset_ms(self) -> float:
        return self.lut.calibration.offset_ms

    # -- the sum of layers ----------------------------------------------------------------
    def layer_latency(self, name: str, in_channels: Count, out_channels: Count) -> torch.Tensor:
        """LUT latency (ms, uncalibrated) of one layer at (possibly fractional) channel counts."""
        layer = self.lut.layers.get(name)
        if layer is None:
            raise UserError(f"the LUT has no layer '{name}': it was profiled for another model")
        in_axis, out_axis, table, depthwise = self._tables[layer.entry]
        cin = torch.as_tensor(in_channels, dtype=torch.float64)
        cout = torch.as_tensor(out_channels, dtype=torch.float64)
        if depthwise:
            return interpolate(in_axis, out_axis, table, cout, cout.new_ones(()))
        return interpolate(in_axis, out_axis, table, cin, cout)

    def raw(self, counts: Mapping[str, tuple[Count, Count]]) -> torch.Tensor:
        """Σ of LUT latencies for ``{layer name: (in, out)}``; every LUT layer must appear."""
        missing = set(self.lut.layers) - set(counts)
        if missing:
            raise UserError(
                f"the network lacks {len(missing)} layer(s) of the LUT (e.g. "
                f"'{sorted(missing)[0]}'): the LUT was profiled for another model"
            )
        total = torch.zeros((), dtype=torch.float64)
        for name in self.lut.layers:
            cin, cout = counts[name]
            total = total + self.layer_latency(name, cin, cout)
        return total

    def activations(self, counts: Mapping[str, tuple[Count, Count]]) -> torch.Tensor:
        """Σ output elements (millions) of the LUT's layers at these channel counts."""
        total = torch.zeros((), dtype=torch.float64)
        for name, layer in self.lut.layers.items():
            cout = torch.as_tensor(counts[name][1], dtype=torch.float64)
            total = total + cout * (layer.out_elements_per_channel / 1e6)
        return total

    def calibrate(self, raw_ms: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        cal = self.lut.calibration
        return cal.scale * raw_ms + cal.memory_ms_per_melem * activations + cal.offset_ms

    def predict_counts(self, counts: Mapping[str, tuple[Count, Count]]) -> torch.Tensor:
        """Calibrated prediction (ms) for ``{layer name: (in, out)}`` channel counts."""
        return self.calibrate(self.raw(counts), self.activations(counts))

    # -- what the search calls ------------------------------------------------------------
    def predict_gated(self, gated, hard: bool = False) -> torch.Tensor:
        """Predicted latency (ms, 0-dim float32 tensor with gradients to ``gated.gate.s``)."""
        counts = {c.name: (c.in_channels, c.out_channels) for c in gated.channel_counts(hard=hard)}
        known = {name: counts[name] for name in self.lut.layers if name in counts}
        missing = set(self.lut.layers) - set(known)
        if missing:
            raise UserError(
                f"the gated model lacks layer '{sorted(missing)[0]}' of the LUT: the LUT was "
                "profiled for another model"
            )
        device = gated.gate.s.device
        value = self.predict_counts(known)
        return value.to(device=device, dtype=gated.gate.s.dtype)

    def module_counts(self, module: nn.Module) -> dict[str, tuple[int, int]]:
        """Actual channel counts of the LUT's layers in a plain (dense or pruned) network."""
        modules = dict(module.named_modules())
        counts: dict[str, tuple[int, int]] = {}
        for name, layer in self.lut.layers.items():
            found = modules.get(name)
            if not isinstance(found, (nn.modules.conv._ConvNd, nn.Linear)):
                raise UserError(
                    f"the network has no conv/linear layer '{name}' of the LUT: the LUT was "
                    "profiled for another model"
                )
            cin, cout = channels_of(found)
            if is_depthwise(found):
                cin = cout
            if cin > layer.in_channels or cout > layer.out_channels:
                raise UserError(
                    f"layer '{name}' has {cin}->{cout} channels, wider than the profiled "
                    f"{layer.in_channels}->{layer.out_channels}: profile this model"
                )
            counts[name] = (cin, cout)
        return counts

    def features_module(self, module: nn.Module) -> tuple[float, float]:
        """(Σ LUT ms, Σ output elements in millions) of a plain network: what calibration fits."""
        counts = self.module_counts(module)
        with torch.no_grad():
            return float(self.raw(counts)), float(self.activations(counts))

    def predict_module(self, module: nn.Module) -> float:
        """Predicted latency (ms) of a plain network: the dense model or a pruned one."""
        with torch.no_grad():
            return float(self.predict_counts(self.module_counts(module)))
