"""Property and fuzz tests: parsers meet arbitrary input with the clear error or a result.

Bounded (``max_examples``, no deadline) so that CI time stays predictable.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latency_helpers import synthetic_lut

from hwdnal.budget import parse_budget
from hwdnal.errors import UserError
from hwdnal.latency.grid import interpolate
from hwdnal.latency.lut import load_lut
from hwdnal.models import create_model
from hwdnal.targets import load_target, parse_target

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- budgets ------------------------------------------------------------------------------
@FUZZ
@given(st.text(max_size=20))
def test_any_budget_text_parses_or_is_the_clear_error(text: str):
    try:
        budget = parse_budget(text)
    except UserError as error:
        assert "budget" in str(error)
        return
    assert budget.resolve(10.0) > 0


@FUZZ
@given(st.floats(min_value=1e-3, max_value=1e5), st.sampled_from(["ms", "us", "s"]))
def test_absolute_budgets_round_trip(value: float, unit: str):
    scale = {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]
    budget = parse_budget(f"{value!r}{unit}")
    assert budget.milliseconds == pytest.approx(value * scale)
    assert budget.resolve(123.0) == pytest.approx(value * scale)


@FUZZ
@given(st.floats(min_value=0.001, max_value=0.999))
def test_relative_budgets_are_fractions_of_the_dense_latency(fraction: float):
    assert parse_budget(f"{fraction!r}x").resolve(40.0) == pytest.approx(40.0 * fraction)
    assert parse_budget(f"{fraction * 100!r}%").resolve(40.0) == pytest.approx(40.0 * fraction)


# -- LUT files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lut_text(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("fuzz-lut")
    lut = synthetic_lut(create_model("resnet20", num_classes=10), (1, 3, 16, 16), folder)
    return lut.save(folder / "good.json").read_text()


@FUZZ
@given(data=st.data())
def test_randomly_damaged_lut_loads_or_gives_the_clear_error(lut_text: str, tmp_path: Path,
                                                            data: st.DataObject):
    raw = bytearray(lut_text.encode())
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)),
                               min_size=1, max_size=8))
    for position, byte in edits:
        raw[position] = byte
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(raw))))
    path = tmp_path / "damaged.json"
    path.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    with contextlib.suppress(UserError):
        load_lut(path, load_target("cpu"))


@FUZZ
@given(data=st.data())
def test_lut_with_random_json_values_loads_or_gives_the_clear_error(
    lut_text: str, tmp_path: Path, data: st.DataObject
):
    document = json.loads(lut_text)
    key = data.draw(st.sampled_from(sorted(document)))
    document[key] = data.draw(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                        st.lists(st.integers(), max_size=3),
                                        st.dictionaries(st.text(max_size=3), st.integers(),
                                                        max_size=2)))
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(document))
    with contextlib.suppress(UserError):
        load_lut(path, load_target("cpu"))


# -- target files -------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_randomly_edited_target_file_parses_or_gives_the_clear_error(data: st.DataObject):
    text = (Path(__file__).parents[1] / "targets" / "cpu.toml").read_text()
    lines = text.splitlines()
    index = data.draw(st.integers(0, len(lines) - 1))
    lines[index] = data.draw(st.one_of(
        st.text(max_size=30),
        st.sampled_from(["threads = -1", "batch = 0", "runtime = 3", 'device = "tpu"',
                         "iterations = 'many'", "[profile", "warmup = 1e99"]),
    ))
    with contextlib.suppress(UserError):
        parse_target("\n".join(lines), "fuzzed.toml")


# -- interpolation ------------------------------------------------------------------------
@FUZZ
@given(st.lists(st.floats(min_value=0.001, max_value=100.0), min_size=9, max_size=9),
       st.floats(min_value=-10.0, max_value=200.0), st.floats(min_value=-10.0, max_value=200.0))
def test_interpolation_is_finite_everywhere(values: list[float], cin: float, cout: float):
    in_axis = torch.tensor([1.0, 8.0, 16.0], dtype=torch.float64)
    out_axis = torch.tensor([1.0, 32.0, 64.0], dtype=torch.float64)
    table = torch.tensor(values, dtype=torch.float64).view(3, 3).cummax(0).values.cummax(1).values
    value = interpolate(in_axis, out_axis, table, torch.tensor(cin, dtype=torch.float64),
                        torch.tensor(cout, dtype=torch.float64))
    assert torch.isfinite(value).all()
