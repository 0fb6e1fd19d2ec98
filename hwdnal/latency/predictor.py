"""Predicted latency of a gated or plain network from a LUT, as a differentiable expression.

    predicted = scale · Σ_layers LUT_layer(in, out) + memory · Σ_layers out · elements + offset

For a :class:`hwdnal.gating.model.GatedModel` the channel counts are the gates' expected counts
(``layer_channels()``), which carry DNAL's straight-through gradient, so the latency term
keeps a non-zero, correctly signed gradient on every gate parameter up to δ = 1e4 (the LUT
tables are monotone, so more channels never predict less latency). ``scale``, ``memory`` and
``offset`` come from the calibration against whole-network measurements: the per-layer sum
misses fusion, element-wise work between layers and per-run overheads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hwdnal.errors import UserError
from hwdnal.latency.grid import Grids, interpolate_grids, stack_grids
from hwdnal.latency.lut import Lut
from hwdnal.layers import channels_of, is_depthwise_conv

Count = torch.Tensor | float | int


class LatencyModel:
    """A LUT turned into torch tables, ready to predict.

    The tables of every LUT layer are stacked into one padded :class:`Grids` (LUT layer
    order), built on the CPU and copied once to each device a prediction is asked on: the
    gates' device during a search, so that every step interpolates all layers where the
    gates are, with no host↔device copy and no host read. Calibration coefficients are
    Python floats, read from the LUT at each call (calibration may replace them).
    """

    def __init__(self, lut: Lut) -> None:
        self.lut = lut
        #: gradients from the average cost per channel instead of the local slope (the
        #: architecture stage's latency term; values are the same either way)
        self.secant_gradient = False
        self.names: list[str] = list(lut.layers)
        self._row = {name: k for k, name in enumerate(self.names)}
        grids = []
        for layer in lut.layers.values():
            entry = lut.entries[layer.entry]
            grids.append((entry.in_axis, entry.out_axis or [1], entry.latency_ms))
        cpu = torch.device("cpu")
        self._on: dict[torch.device, _Tables] = {cpu: _Tables(
            grids=stack_grids(grids),
            depthwise=torch.tensor(
                [lut.entries[layer.entry].depthwise for layer in lut.layers.values()],
                dtype=torch.bool),
            melem_per_channel=torch.tensor(
                [layer.out_elements_per_channel / 1e6 for layer in lut.layers.values()],
                dtype=torch.float64),
        )}
        #: per (gated model's layer names, device): where each LUT layer sits among them
        self._positions: dict[tuple[tuple[str, ...], torch.device], torch.Tensor] = {}

    @property
    def scale(self) -> float:
        return self.lut.calibration.scale

    @property
    def offset_ms(self) -> float:
        return self.lut.calibration.offset_ms

    def tables(self, device: torch.device | str = "cpu") -> _Tables:
        """The stacked tables on ``device``: copied there on first use, then reused."""
        device = torch.device(device)
        if device.type != "cpu" and device.index is None:
            device = torch.device(device.type, torch.empty(0, device=device).device.index)
        tables = self._on.get(device)
        if tables is None:
            tables = self._on[device] = self._on[torch.device("cpu")].to(device)
        return tables

    # -- the sum of layers ----------------------------------------------------------------
    def layer_latencies(
        self, in_channels: torch.Tensor, out_channels: torch.Tensor,
        presence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LUT latency (ms, uncalibrated) of every LUT layer, computed on the counts' device.

        ``in_channels``/``out_channels``: ``[L]`` counts in LUT layer order (``names``), or
        ``[L, T]`` for T architectures at once (the result then ``[L, T]``).
        ``presence``: ``[L]`` factors, 0 for the layers of a supernet's dropped candidate
        block (their whole cost vanishes, not only their channels'); None: all present.
        Parallel candidates add up: the runtimes hwdnal targets run branches one after
        the other.
        """
        tables = self.tables(in_channels.device)
        cin = in_channels.to(torch.float64)
        cout = out_channels.to(device=cin.device, dtype=torch.float64)
        depthwise = tables.depthwise if cin.dim() == 1 else tables.depthwise.unsqueeze(1)
        # a depthwise layer's cost follows its channels (= its outputs), on a 1-wide out axis
        latency = interpolate_grids(tables.grids, torch.where(depthwise, cout, cin),
                                    torch.where(depthwise, torch.ones_like(cout), cout),
                                    secant_gradient=self.secant_gradient)
        if presence is not None:
            latency = latency * presence.to(latency)
        return latency

    def layer_latency(self, name: str, in_channels: Count, out_channels: Count) -> torch.Tensor:
        """LUT latency (ms, uncalibrated) of one layer at (possibly fractional) channel counts."""
        row = self._row.get(name)
        if row is None:
            raise UserError(f"the LUT has no layer '{name}': it was profiled for another model")
        device = _device_of(in_channels, out_channels)
        tables = self.tables(device).rows(row, row + 1)
        cin = _scalar(in_channels, device).reshape(1)
        cout = _scalar(out_channels, device).reshape(1)
        return interpolate_grids(tables.grids, torch.where(tables.depthwise, cout, cin),
                                 torch.where(tables.depthwise, torch.ones_like(cout), cout))[0]

    def _vectors(
        self, counts: Mapping[str, tuple[Count, Count]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[L]`` in and out counts in LUT order; every LUT layer must appear."""
        missing = set(self.lut.layers) - set(counts)
        if missing:
            raise UserError(
                f"the network lacks {len(missing)} layer(s) of the LUT (e.g. "
                f"'{sorted(missing)[0]}'): the LUT was profiled for another model"
            )
        pairs = [counts[name] for name in self.names]
        device = _device_of(*(c for pair in pairs for c in pair))
        if not pairs:
            empty = torch.zeros(0, dtype=torch.float64, device=device)
            return empty, empty
        cin = torch.stack([_scalar(pair[0], device) for pair in pairs])
        cout = torch.stack([_scalar(pair[1], device) for pair in pairs])
        return cin, cout

    def raw(self, counts: Mapping[str, tuple[Count, Count]]) -> torch.Tensor:
        """Σ of LUT latencies for ``{layer name: (in, out)}``; every LUT layer must appear
        (a dropped candidate block's layers as (0, 0): they cost nothing)."""
        cin, cout = self._vectors(counts)
        return self.layer_latencies(cin, cout, _present(cin, cout)).sum()

    def activations(self, counts: Mapping[str, tuple[Count, Count]]) -> torch.Tensor:
        """Σ output elements (millions) of the LUT's layers at these channel counts."""
        _, cout = self._vectors(counts)
        return self._activations(cout)

    def _activations(self, out_channels: torch.Tensor,
                     presence: torch.Tensor | None = None) -> torch.Tensor:
        """Σ output elements (millions); a layer that is not there (a dropped candidate's
        projection keeps its out channels) writes none."""
        per_channel = self.tables(out_channels.device).melem_per_channel
        elements = out_channels.to(torch.float64) * per_channel
        if presence is not None:
            elements = elements * presence.to(elements)
        return elements.sum()

    def calibrate(self, raw_ms: torch.Tensor, activations: torch.Tensor,
                  layers: torch.Tensor | float = 0.0) -> torch.Tensor:
        cal = self.lut.calibration
        return (cal.scale * raw_ms + cal.memory_ms_per_melem * activations
                + cal.per_layer_ms * layers + cal.offset_ms)

    def predict_vectors(
        self, in_channels: torch.Tensor, out_channels: torch.Tensor
    ) -> torch.Tensor:
        """Calibrated prediction (ms, float64) for ``[L]`` counts in LUT layer order."""
        present = _present(in_channels, out_channels)
        raw = self.layer_latencies(in_channels, out_channels, present).sum()
        return self.calibrate(raw, self._activations(out_channels), present.sum())

    def predict_present(self, in_channels: torch.Tensor, out_channels: torch.Tensor,
                        presence: torch.Tensor) -> torch.Tensor:
        """:meth:`predict_vectors` with explicit (differentiable) layer presence."""
        raw = self.layer_latencies(in_channels, out_channels, presence).sum()
        return self.calibrate(raw, self._activations(out_channels, presence),
                              presence.to(raw.dtype).sum())

    def predict_counts(self, counts: Mapping[str, tuple[Count, Count]]) -> torch.Tensor:
        """Calibrated prediction (ms) for ``{layer name: (in, out)}`` channel counts."""
        return self.predict_vectors(*self._vectors(counts))

    # -- what the search calls ------------------------------------------------------------
    def predict_gated(self, gated, hard: bool = False,
                      values: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted latency (ms, 0-dim tensor of the gates' dtype, on the gates' device,
        with gradients to ``gated.gate.s``).

        The whole computation stays on the gates' device: their expected channel counts
        (one gather for all layers), the LUT layers picked from them by a cached index, the
        interpolation of all tables at once and the calibration. Nothing is read back.
        ``values`` (one per gate) replaces the gates' own, e.g. the raw binary gates.
        """
        names, cin, cout = gated.layer_channels(hard=hard, values=values)
        rows = self.positions_in(tuple(names), cin.device)
        if gated.blocks:  # candidates or residual branches that vanish take their whole cost
            presence = gated.layer_presence(hard=hard, values=values)[rows]
            value = self.predict_present(cin[rows], cout[rows], presence)
        else:
            value = self.predict_vectors(cin[rows], cout[rows])
        return value.to(dtype=gated.gate.s.dtype)

    def positions_in(self, names: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """For each LUT layer, its position among ``names`` (cached per order and device)."""
        key = (names, device)
        positions = self._positions.get(key)
        if positions is None:
            where = {name: k for k, name in enumerate(names)}
            missing = [name for name in self.names if name not in where]
            if missing:
                raise UserError(
                    f"the gated model lacks layer '{sorted(missing)[0]}' of the LUT: the LUT "
                    "was profiled for another model"
                )
            positions = torch.tensor([where[name] for name in self.names], dtype=torch.long)
            positions = self._positions[key] = positions.to(device)
        return positions

    def module_counts(self, module: nn.Module) -> dict[str, tuple[int, int]]:
        """Actual channel counts of the LUT's layers in a plain (dense or pruned) network."""
        modules = dict(module.named_modules())
        counts: dict[str, tuple[int, int]] = {}
        for name, layer in self.lut.layers.items():
            found = modules.get(name)
            supernet_candidate = (".candidates." in name
                                  and _parent_of_candidate(name) in modules)
            if found is None and (supernet_candidate or _inside_removed_block(name, modules)):
                counts[name] = (0, 0)  # a candidate or a residual block removed by pruning
                continue
            if not isinstance(found, (nn.modules.conv._ConvNd, nn.Linear)):
                raise UserError(
                    f"the network has no conv/linear layer '{name}' of the LUT: the LUT was "
                    "profiled for another model"
                )
            cin, cout = channels_of(found)
            if is_depthwise_conv(found):
                cin = cout
            if cin > layer.in_channels or cout > layer.out_channels:
                raise UserError(
                    f"layer '{name}' has {cin}->{cout} channels, wider than the profiled "
                    f"{layer.in_channels}->{layer.out_channels}: profile this model"
                )
            counts[name] = (cin, cout)
        return counts

    def features_module(self, module: nn.Module) -> tuple[float, float, float]:
        """(Σ LUT ms, Σ output elements in millions, layers present) of a plain network:
        what calibration fits."""
        counts = self.module_counts(module)
        with torch.no_grad():
            cin, cout = self._vectors(counts)
            return (float(self.raw(counts)), float(self.activations(counts)),
                    float(_present(cin, cout).sum()))

    def smallest_layer_ms(self) -> float:
        """The cheapest entry of any layer's table: a bound on a fixed per-layer cost."""
        values = [v for entry in self.lut.entries.values() for row in entry.latency_ms
                  for v in row]
        return min(values) if values else 0.0

    def predict_module(self, module: nn.Module) -> float:
        """Predicted latency (ms) of a plain network: the dense model or a pruned one."""
        with torch.no_grad():
            return float(self.predict_counts(self.module_counts(module)))


@dataclass(frozen=True)
class _Tables:
    """What a prediction reads, on one device."""

    grids: Grids
    depthwise: torch.Tensor  # [L] bool
    melem_per_channel: torch.Tensor  # [L] output elements per channel, in millions

    def to(self, device: torch.device) -> _Tables:
        return _Tables(self.grids.to(device), self.depthwise.to(device),
                       self.melem_per_channel.to(device))

    def rows(self, start: int, stop: int) -> _Tables:
        return _Tables(self.grids.rows(start, stop), self.depthwise[start:stop],
                       self.melem_per_channel[start:stop])


def _device_of(*values: Count) -> torch.device:
    """Where a computation over ``values`` runs: the first tensor's device (else the CPU)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _scalar(value: Count, device: torch.device) -> torch.Tensor:
    """A 0-dim float64 tensor on ``device``; a Python number is filled there (no copy)."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float64).reshape(())
    return torch.full((), float(value), dtype=torch.float64, device=device)


def _present(in_channels: torch.Tensor, out_channels: torch.Tensor) -> torch.Tensor:
    """1 for a layer with channels on both sides, 0 for one that was removed (0 channels)."""
    return ((in_channels > 0) & (out_channels.to(in_channels.device) > 0)).to(torch.float64)


def _inside_removed_block(name: str, modules: Mapping[str, nn.Module]) -> bool:
    """'layer2.1.conv1' where 'layer2.1' became the identity (:mod:`hwdnal.gating.blocks`)."""
    parts = name.split(".")
    return any(isinstance(modules.get(".".join(parts[:n])), nn.Identity)
               for n in range(1, len(parts)))


def _parent_of_candidate(name: str) -> str:
    """'features.5.candidates.k3e6.block.0' → 'features.5' (the mixed layer)."""
    return name.split(".candidates.")[0]
