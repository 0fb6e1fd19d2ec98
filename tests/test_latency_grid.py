"""The channel grid and the interpolation the latency model is built on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwdnal.latency.grid import channel_axis, interpolate, monotone

#: interpolation runs where the channel counts are: the CPU, and a CUDA GPU where there is one
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA GPU visible to torch on this machine (torch.cuda.is_available() is False)",
    )),
]


def test_axis_holds_full_width_and_step_multiples() -> None:
    assert channel_axis(64, 1, 8, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert channel_axis(512, 1, 8, 8) == [64, 128, 192, 256, 320, 384, 448, 512]
    assert channel_axis(100, 1, 8, 4) == [32, 64, 96, 100]


def test_axis_of_channels_no_gate_removes_is_one_point() -> None:
    assert channel_axis(3, 3, 8, 8) == [3]


def test_axis_keeps_grouped_conv_channels_multiples_of_groups() -> None:
    assert all(p % 6 == 0 for p in channel_axis(48, 1, 4, 8, multiple=6))


def _table(draw_values: list[float], rows: int, cols: int) -> np.ndarray:
    increments = np.asarray(draw_values[: rows * cols]).reshape(rows, cols)
    return np.cumsum(np.cumsum(increments, axis=0), axis=1)  # monotone along both axes


tables = st.integers(2, 5).flatmap(
    lambda rows: st.integers(1, 5).flatmap(
        lambda cols: st.lists(st.floats(0.0, 3.0), min_size=rows * cols, max_size=rows * cols).map(
            lambda values: _table(values, rows, cols)
        )
    )
)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(table=tables)
def test_interpolation_is_exact_at_grid_points(table: np.ndarray, device: str) -> None:
    rows, cols = table.shape
    in_axis = torch.arange(1, rows + 1, dtype=torch.float64, device=device) * 8
    out_axis = torch.arange(1, cols + 1, dtype=torch.float64, device=device) * 16
    t = torch.tensor(table, device=device)
    for i in range(rows):
        for o in range(cols):
            value = interpolate(in_axis, out_axis, t, in_axis[i], out_axis[o])
            assert value.device == in_axis.device
            assert float(value) == np.float64(table[i, o]) or abs(float(value) - table[i, o]) < 1e-9


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=60, deadline=None)
@given(table=tables, cin=st.floats(8, 40), cout=st.floats(16, 80), d_in=st.floats(0, 8),
       d_out=st.floats(0, 16))
def test_interpolation_is_monotone_in_both_channel_counts(
    table: np.ndarray, cin: float, cout: float, d_in: float, d_out: float, device: str
) -> None:
    rows, cols = table.shape
    in_axis = torch.arange(1, rows + 1, dtype=torch.float64, device=device) * 8
    out_axis = torch.arange(1, cols + 1, dtype=torch.float64, device=device) * 16
    t = torch.tensor(table, device=device)

    def f(a: float, b: float) -> float:
        return float(interpolate(in_axis, out_axis, t,
                                 torch.tensor(a, dtype=torch.float64, device=device),
                                 torch.tensor(b, dtype=torch.float64, device=device)))

    assert f(cin + d_in, cout) >= f(cin, cout) - 1e-9
    assert f(cin, cout + d_out) >= f(cin, cout) - 1e-9


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=12, max_size=12))
def test_monotone_projection(values: list[float]) -> None:
    noisy = np.asarray(values).reshape(3, 4)
    fixed = monotone(noisy)
    assert np.all(np.diff(fixed, axis=0) >= -1e-12)
    assert np.all(np.diff(fixed, axis=1) >= -1e-12)
    np.testing.assert_allclose(monotone(fixed), fixed)  # already monotone: unchanged


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_reaches_channel_counts(device: str) -> None:
    f64 = dict(dtype=torch.float64, device=device)
    in_axis = torch.tensor([8.0, 16.0], **f64)
    out_axis = torch.tensor([8.0, 16.0], **f64)
    table = torch.tensor([[1.0, 2.0], [3.0, 5.0]], **f64)
    cin = torch.tensor(16.0, **f64, requires_grad=True)  # at the top grid point
    cout = torch.tensor(12.0, **f64, requires_grad=True)
    interpolate(in_axis, out_axis, table, cin, cout).backward()
    assert cin.grad.device == cin.device
    assert cin.grad > 0 and cout.grad > 0


@pytest.mark.parametrize("device", DEVICES)
def test_one_point_axes_interpolate_constantly_with_no_gradient(device: str) -> None:
    f64 = dict(dtype=torch.float64, device=device)
    cin = torch.tensor(3.0, **f64, requires_grad=True)
    cout = torch.tensor(20.0, **f64, requires_grad=True)
    value = interpolate(torch.tensor([3.0], **f64), torch.tensor([16.0, 32.0], **f64),
                        torch.tensor([[1.0, 3.0]], **f64), cin, cout)
    value.backward()
    assert float(value.detach()) == 1.5 and float(cin.grad) == 0.0 and float(cout.grad) > 0
    alone = interpolate(torch.tensor([3.0], **f64), torch.tensor([10.0], **f64),
                        torch.tensor([[2.5]], **f64), torch.tensor(7.0, **f64),
                        torch.tensor(99.0, **f64))
    assert float(alone) == 2.5


def test_a_secant_gradient_prices_channels_where_the_table_is_flat() -> None:
    """A CPU's time moves in steps: here 48 and 64 output channels measure the same, so the
    local slope at full width is 0 and a gate that starts open would feel no latency at all.
    The secant gradient keeps the value and prices every channel at its average cost."""
    from hwdnal.latency.grid import interpolate_grids, stack_grids

    table = [[1.0, 2.0, 3.0, 3.0], [2.0, 4.0, 6.0, 6.0]]  # in 8, 16; out 16, 32, 48, 64
    grids = stack_grids([([8, 16], [16, 32, 48, 64], table)])
    for secant in (False, True):
        cin = torch.tensor([16.0], dtype=torch.float64, requires_grad=True)
        cout = torch.tensor([63.0], dtype=torch.float64, requires_grad=True)
        value = interpolate_grids(grids, cin, cout, secant_gradient=secant)
        assert float(value.detach()) == pytest.approx(6.0)
        value.sum().backward()
        if secant:
            assert float(cout.grad) == pytest.approx((6.0 - 2.0) / (64 - 16))
            at_63 = (63 - 16) / 48  # the corner plane between out 16 and 64
            assert float(cin.grad) == pytest.approx(((2 + 4 * at_63) - (1 + 2 * at_63)) / 8)
        else:
            assert float(cout.grad) == 0.0
