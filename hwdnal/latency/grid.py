"""The channel grid a layer is measured on, and interpolation between its points.

Bilinear interpolation of a table that is monotone along both axes is itself monotone and
exact at the grid points, so the measured table is first made monotone (noise can make a
wider layer measure faster than a narrower one, which would give a gradient of the wrong
sign). The interpolation is a torch expression: gradients flow to the channel counts.
"""

from __future__ import annotations

import math

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


def _weights(axis: torch.Tensor, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Segment index and position (0..1, or beyond when extrapolating) of ``x`` on ``axis``."""
    n = axis.numel()
    if n == 1:
        return 0, x.new_zeros(())
    index = int(torch.searchsorted(axis, x.detach().reshape(1).to(axis.dtype), right=True)) - 1
    index = min(max(index, 0), n - 2)
    x0, x1 = axis[index], axis[index + 1]
    return index, (x - x0) / (x1 - x0)


def interpolate(
    in_axis: torch.Tensor, out_axis: torch.Tensor, table: torch.Tensor,
    in_channels: torch.Tensor, out_channels: torch.Tensor,
) -> torch.Tensor:
    """Bilinear interpolation of ``table[in, out]`` (linear extrapolation outside, floored at 0)."""
    i, t = _weights(in_axis, in_channels)
    o, u = _weights(out_axis, out_channels)
    if in_axis.numel() == 1 and out_axis.numel() == 1:
        return table[0, 0] + 0 * (t + u)
    if in_axis.numel() == 1:
        value = table[0, o] + u * (table[0, o + 1] - table[0, o])
    elif out_axis.numel() == 1:
        value = table[i, 0] + t * (table[i + 1, 0] - table[i, 0])
    else:
        low = table[i, o] + u * (table[i, o + 1] - table[i, o])
        high = table[i + 1, o] + u * (table[i + 1, o + 1] - table[i + 1, o])
        value = low + t * (high - low)
    return torch.clamp(value, min=0.0)
