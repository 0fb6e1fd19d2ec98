"""The channel grid a layer is measured on, and interpolation between its points.

Bilinear interpolation of a table that is monotone along both axes is itself monotone and
exact at the grid points, so the measured table is first made monotone (noise can make a
wider layer measure faster than a narrower one, which would give a gradient of the wrong
sign). The interpolation is a torch expression: gradients flow to the channel counts.

All layers of a network interpolate at once (:func:`interpolate_grids` on padded
:class:`Grids`), on whatever device the channel counts are on, without a host round trip:
segments are found with ``torch.searchsorted`` and read with tensor indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def channel_axis(
    full: int, minimum: int, step: int, max_points: int, multiple: int = 1
) -> list[int]:
    """Grid points for one axis: multiples of a step (widened to fit ``max_points``), ``full``
    and, when some channels can never be removed, ``minimum``."""
    full, minimum = int(full), max(1, min(int(minimum), int(full)))
    if minimum >= full:
        return [full]
    unit = math.lcm(max(1, step), max(1, multiple))
    effective = unit * max(1, math.ceil(full / (unit * max(1, max_points))))
    points = {p for p in range(effective, full, effective) if p > minimum}
    points.add(full)
    if minimum > 1:
        points.add(minimum)
    return sorted(points)


def monotone(table: np.ndarray) -> np.ndarray:
    """A table non-decreasing along every axis; unchanged where the input already is.

    Along each axis, the mean of the running maximum (from the small end) and the running
    minimum (from the large end): both are monotone, so is their mean, and noise spikes are
    only half propagated either way.
    """
    out = np.asarray(table, dtype=np.float64).copy()
    for axis in range(out.ndim):
        if out.shape[axis] < 2:
            continue
        rising = np.maximum.accumulate(out, axis=axis)
        falling = np.flip(np.minimum.accumulate(np.flip(out, axis=axis), axis=axis), axis=axis)
        out = 0.5 * (rising + falling)
    return out


@dataclass(frozen=True)
class Grids:
    """The tables of several layers padded to one shape, so that all interpolate at once.

    Row ``k`` holds layer ``k``: its axes (ascending, padded past their last point with
    further points that the segment search never selects) and its table. An axis of one
    point is widened to two (``[a, a + 1]``, the table repeated): interpolation along it is
    then constant, with a zero gradient, as it should be. Everything lives on one device;
    :meth:`to` gives the copy for another one.
    """

    in_axes: torch.Tensor  # [L, I]
    out_axes: torch.Tensor  # [L, O]
    #: index of the last segment of each row's axes (points - 2), [L] long
    in_last: torch.Tensor
    out_last: torch.Tensor
    tables: torch.Tensor  # [L, I, O]

    @property
    def device(self) -> torch.device:
        return self.tables.device

    def __len__(self) -> int:
        return self.tables.shape[0]

    def to(self, device: torch.device | str) -> Grids:
        return Grids(*(t.to(device) for t in (self.in_axes, self.out_axes, self.in_last,
                                              self.out_last, self.tables)))

    def rows(self, start: int, stop: int) -> Grids:
        """Rows ``start:stop`` (views: nothing is copied)."""
        return Grids(*(t[start:stop] for t in (self.in_axes, self.out_axes, self.in_last,
                                               self.out_last, self.tables)))


def stack_grids(
    layers: list[tuple[list[float], list[float], list[list[float]]]],
    dtype: torch.dtype = torch.float64,
) -> Grids:
    """:class:`Grids` (on the CPU) of ``[(in_axis, out_axis, table[in][out]), ...]``."""
    widened = [_widen(list(map(float, a)), list(map(float, b)), np.asarray(t, dtype=np.float64))
               for a, b, t in layers]
    rows = max((len(a) for a, _, _ in widened), default=2)
    cols = max((len(b) for _, b, _ in widened), default=2)
    in_axes = np.empty((len(widened), rows))
    out_axes = np.empty((len(widened), cols))
    tables = np.empty((len(widened), rows, cols))
    for k, (a, b, t) in enumerate(widened):
        in_axes[k] = _pad_axis(a, rows)
        out_axes[k] = _pad_axis(b, cols)
        tables[k] = np.pad(t, ((0, rows - t.shape[0]), (0, cols - t.shape[1])), mode="edge")
    return Grids(
        in_axes=torch.tensor(in_axes, dtype=dtype),
        out_axes=torch.tensor(out_axes, dtype=dtype),
        in_last=torch.tensor([len(a) - 2 for a, _, _ in widened], dtype=torch.long),
        out_last=torch.tensor([len(b) - 2 for _, b, _ in widened], dtype=torch.long),
        tables=torch.tensor(tables, dtype=dtype),
    )


def _widen(
    in_axis: list[float], out_axis: list[float], table: np.ndarray
) -> tuple[list[float], list[float], np.ndarray]:
    table = table.reshape(len(in_axis), len(out_axis))
    if len(in_axis) == 1:
        in_axis, table = [in_axis[0], in_axis[0] + 1.0], np.repeat(table, 2, axis=0)
    if len(out_axis) == 1:
        out_axis, table = [out_axis[0], out_axis[0] + 1.0], np.repeat(table, 2, axis=1)
    return in_axis, out_axis, table


def _pad_axis(axis: list[float], size: int) -> list[float]:
    return axis + [axis[-1] + k for k in range(1, size - len(axis) + 1)]


def interpolate_grids(
    grids: Grids, in_channels: torch.Tensor, out_channels: torch.Tensor,
    secant_gradient: bool = False,
) -> torch.Tensor:
    """Bilinear interpolation of every row at once: ``[L]`` channel counts give ``[L]`` values
    (``[L, T]`` counts, T architectures at once, give ``[L, T]``).

    Linear extrapolation outside each row's grid, floored at 0. The counts must be on the
    grids' device (as :class:`~hwdnal.latency.predictor.LatencyModel` arranges): segments
    are found and read with tensor indices, so nothing waits for the device (no ``.item()``).

    ``secant_gradient``: the value as above, but the gradient of the plane through each
    table's corners, the average cost of a channel over the whole range. On a CPU a layer's
    time moves in steps (SIMD widths): its segment at full width is often flat, and a gate
    that starts open would feel no latency pressure at all from the local slope.
    """
    single = in_channels.dim() == 1
    cin = in_channels.to(grids.tables.dtype)
    cout = out_channels.to(grids.tables.dtype)
    if single:
        cin, cout = cin.unsqueeze(1), cout.unsqueeze(1)
    i, t = _locate(grids.in_axes, grids.in_last, cin)
    o, u = _locate(grids.out_axes, grids.out_last, cout)
    _, rows, cols = grids.tables.shape
    flat = grids.tables.reshape(len(grids), rows * cols)

    def at(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, row * cols + col)

    low = at(i, o) + u * (at(i, o + 1) - at(i, o))
    high = at(i + 1, o) + u * (at(i + 1, o + 1) - at(i + 1, o))
    value = torch.clamp(low + t * (high - low), min=0.0)
    if secant_gradient:
        smooth = _corner_plane(grids, cin, cout)
        value = value.detach() + (smooth - smooth.detach())
    return value.squeeze(1) if single else value


def _corner_plane(grids: Grids, cin: torch.Tensor, cout: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation between each table's four corners (``[L, T]`` counts)."""
    first = torch.zeros_like(grids.in_last).unsqueeze(1)
    in_end, out_end = (grids.in_last + 1).unsqueeze(1), (grids.out_last + 1).unsqueeze(1)
    a0, a1 = grids.in_axes.gather(1, first), grids.in_axes.gather(1, in_end)
    b0, b1 = grids.out_axes.gather(1, first), grids.out_axes.gather(1, out_end)
    _, rows, cols = grids.tables.shape
    flat = grids.tables.reshape(len(grids), rows * cols)
    t, u = (cin - a0) / (a1 - a0), (cout - b0) / (b1 - b0)
    t00, t01 = flat.gather(1, first), flat.gather(1, out_end)
    t10, t11 = flat.gather(1, in_end * cols), flat.gather(1, in_end * cols + out_end)
    low = t00 + u * (t01 - t00)
    high = t10 + u * (t11 - t10)
    return low + t * (high - low)


def _locate(
    axes: torch.Tensor, last: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: segment index of each ``x`` ``[L, T]`` on ``axes`` and its position in it
    (0..1 inside)."""
    found = torch.searchsorted(axes, x.detach().contiguous(), right=True)
    index = torch.minimum((found - 1).clamp(min=0), last.unsqueeze(1))
    x0 = axes.gather(1, index)
    x1 = axes.gather(1, index + 1)
    return index, (x - x0) / (x1 - x0)


def interpolate(
    in_axis: torch.Tensor, out_axis: torch.Tensor, table: torch.Tensor,
    in_channels: torch.Tensor, out_channels: torch.Tensor,
) -> torch.Tensor:
    """Bilinear interpolation of ``table[in, out]`` (linear extrapolation outside, floored at 0).

    One layer's form of :func:`interpolate_grids`, computed on the device of
    ``in_channels`` (the grid follows the counts, which carry the gradients).
    """
    device = in_channels.device
    dtype = table.dtype if table.is_floating_point() else torch.float64
    in_axis = in_axis.to(device, dtype).reshape(-1)
    out_axis = out_axis.to(device, dtype).reshape(-1)
    table = table.to(device, dtype).reshape(in_axis.numel(), out_axis.numel())
    if in_axis.numel() == 1:
        in_axis, table = torch.cat([in_axis, in_axis + 1]), torch.cat([table, table], 0)
    if out_axis.numel() == 1:
        out_axis, table = torch.cat([out_axis, out_axis + 1]), torch.cat([table, table], 1)
    grids = Grids(
        in_axes=in_axis.unsqueeze(0), out_axes=out_axis.unsqueeze(0),
        in_last=torch.full((1,), in_axis.numel() - 2, dtype=torch.long, device=device),
        out_last=torch.full((1,), out_axis.numel() - 2, dtype=torch.long, device=device),
        tables=table.unsqueeze(0),
    )
    return interpolate_grids(grids, in_channels.reshape(1), out_channels.to(device).reshape(1))[0]
