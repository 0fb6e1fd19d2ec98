"""A reused LUT meets the device: a LUT measured on a much slower machine (same fingerprint)
is recalibrated from fresh whole-network measurements before the search relies on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from budgets import reachable_budget
from measurers import measurer_for

from hwdnal.devices import open_measurer
from hwdnal.latency.lut import load_lut
from hwdnal.latency.pipeline import profile_model
from hwdnal.latency.reality import check_reused_lut, sibling_path
from hwdnal.models import create_model
from hwdnal.results import LATENCY_ERROR_FLAG
from hwdnal.search import DnalSearch, SearchConfig, SearchObserver
from hwdnal.targets import load_target

pytestmark = pytest.mark.latency  # every test here measures this CPU

SIZE = 32  # resnet20 at 32x32: about a millisecond on one thread, well above timing noise

TARGET = """
name = "cpu-reality"
description = "the cpu target, few timed runs, for tests"
runtime = "onnxruntime"
device = "cpu"
precision = "fp32"
threads = 1
warmup = 3
iterations = 20
min_seconds = 0.15

[profile]
grid_step = 4
grid_points = 6
layer_warmup = 1
layer_iterations = 5
layer_min_seconds = 0.02
calibrate = 6
validate = 0
"""


class _Messages(SearchObserver):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture(scope="module")
def slow_lut(tmp_path_factory) -> tuple[Path, Path]:
    """A LUT profiled here, then every timing multiplied by 3: 'a 3x slower machine'."""
    folder = tmp_path_factory.mktemp("reality")
    target = folder / "cpu-reality.toml"
    target.write_text(TARGET)
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with measurer_for(target) as device:
        result = profile_model(device, model, "resnet20", SIZE, 3, out=folder / "true.json",
                               cache_dir=folder / ".cache")
    data = json.loads(result.path.read_text())
    for entry in data["entries"].values():
        for key in ("latency_ms", "measured_ms"):
            entry[key] = _times(entry[key], 3.0)
    cal = data["calibration"]
    for key in ("offset_ms", "memory_ms_per_melem", "dense_measured_ms", "dense_raw_ms"):
        cal[key] = cal[key] * 3.0
    slow = folder / "slow.json"
    slow.write_text(json.dumps(data))
    return target, slow


def _times(value, factor: float):
    return [_times(v, factor) for v in value] if isinstance(value, list) else value * factor


def test_a_reused_lut_that_matches_the_device_is_confirmed(slow_lut, tmp_path: Path):
    target, _ = slow_lut
    true = target.parent / "true.json"
    measurer = open_measurer(load_target(str(target)))
    try:
        lut = load_lut(true, measurer)
        dense = lut.calibration.dense_measured_ms
        model = create_model("resnet20", num_classes=10, in_channels=3)
        same, check = check_reused_lut(measurer, lut, true, model, "resnet20",
                                       (1, 3, SIZE, SIZE), dense)
    finally:
        measurer.close()
    assert check.action == "confirmed" and same is lut, check.line()
    assert "confirmed" in check.line()
    assert not sibling_path(true, "recalibrated").exists()


def test_a_search_recalibrates_a_lut_from_a_slower_machine(slow_lut, tmp_path: Path):
    target, slow = slow_lut
    before = slow.read_bytes()
    observer = _Messages()
    config = SearchConfig(
        model="resnet20", data="synthetic", input_size=SIZE, train_subset=256, test_subset=128,
        batch_size=64, epochs_weights=1, epochs_arch=1, epochs_finetune=1,
        target=str(target), budget=reachable_budget(target, input_size=SIZE), lut=str(slow),
    )
    result = DnalSearch(config, tmp_path / "run", observer=observer).run()

    check = result["lut_check"]
    # recalibrated (a uniform 3x is what a new scale absorbs); re-profiled should timing noise
    # on a loaded machine leave the refit just beyond the tolerance: corrected either way
    assert check["action"] in ("recalibrated", "reprofiled"), check
    assert check["error"] > 1.0  # the 3x LUT predicted about 200% too much
    assert abs(check["after_error"]) <= 0.10 or check["action"] == "reprofiled"
    corrected = sibling_path(slow, check["action"])
    assert check["saved_to"] == str(corrected) and corrected.is_file()
    assert result["lut"] == str(corrected)
    assert slow.read_bytes() == before, "the LUT the user passed is never overwritten"
    new, old = load_lut(corrected).calibration, load_lut(slow).calibration
    assert new.dense_measured_ms < 0.6 * old.dense_measured_ms
    assert any(str(corrected) in line for line in observer.lines)

    pruned = result["pruned"]
    assert pruned["latency_ms"] > 0
    # the 3x is gone from the pruned network's prediction too (uncorrected it reads about
    # +200%). How close a coarse LUT comes on a searched shape depends on the CPU (-18% on
    # the CI machine of 2026-12-01, under 10% here): bench/latency_fidelity.py measures
    # that; here the search must report it and flag it past the threshold, not hide it
    assert abs(pruned["latency_error"]) <= 0.35, (pruned, result["fit_rounds"])
    assert pruned["predicted_latency_ms"] == pytest.approx(
        pruned["latency_ms"] * (1 + pruned["latency_error"]))
    assert result["latency_flag"] is (abs(pruned["latency_error"]) > LATENCY_ERROR_FLAG)
    if result["latency_flag"]:
        assert any("the LUT predicts" in line for line in observer.lines)


def test_recalibration_that_is_not_enough_reprofiles_beside_the_loaded_lut(slow_lut):
    target, slow = slow_lut
    before = slow.read_bytes()
    measurer = open_measurer(load_target(str(target)))
    try:
        lut = load_lut(slow, measurer)
        model = create_model("resnet20", num_classes=10, in_channels=3)
        dense = lut.calibration.dense_measured_ms / 3.0
        # a tolerance no refit meets: the LUT is profiled again, next to the loaded one
        fresh, check = check_reused_lut(measurer, lut, slow, model, "resnet20",
                                        (1, 3, SIZE, SIZE), dense, tolerance=1e-9)
    finally:
        measurer.close()
    assert check.action == "reprofiled", check.line()
    assert "re-profiled" in check.line()
    assert check.saved_to == str(sibling_path(slow, "reprofiled"))
    assert Path(check.saved_to).is_file() and slow.read_bytes() == before
    assert fresh.calibration.dense_measured_ms < 0.6 * lut.calibration.dense_measured_ms


def test_profile_again_measures_whole_networks_again_when_the_cache_is_off(slow_lut):
    target, _ = slow_lut
    folder = target.parent
    (cache,) = (folder / ".cache").glob("*.json")
    data = json.loads(cache.read_text())
    for key, point in data["points"].items():
        if key.startswith("net |"):
            point["median_ms"] *= 3.0
            point["p90_ms"] *= 3.0
    cache.write_text(json.dumps(data))
    model = create_model("resnet20", num_classes=10, in_channels=3)
    with measurer_for(target) as device:
        result = profile_model(device, model, "resnet20", SIZE, 3, out=folder / "again.json",
                               cache_dir=folder / ".cache")
    assert result.note and "measured again" in result.note
    assert result.networks_measured_now > 1
    true = load_lut(folder / "true.json").calibration.dense_measured_ms
    assert result.lut.calibration.dense_measured_ms == pytest.approx(true, rel=0.3)


def test_the_default_lut_prefers_the_correction_an_earlier_run_wrote_beside_it(
        slow_lut, profiles_in_tmp: Path):
    import torch

    from hwdnal.budget import parse_budget
    from hwdnal.budget.target import prepare_target_latency
    from hwdnal.latency.pipeline import default_lut_path

    target, slow = slow_lut
    spec = load_target(str(target))
    default = default_lut_path("resnet20", spec.name, (1, 3, SIZE, SIZE))
    assert default.parent == profiles_in_tmp, "default LUTs live in HWDNAL_PROFILES_DIR"
    default.parent.mkdir(parents=True)
    default.write_bytes(slow.read_bytes())  # "committed": measured on a 3x slower machine
    model = create_model("resnet20", num_classes=10, in_channels=3)
    lines: list[str] = []
    budget = reachable_budget(target, input_size=SIZE)
    measurer = open_measurer(spec)
    try:
        def prepare():
            return prepare_target_latency(spec, measurer, model, "resnet20",
                                          torch.randn(1, 3, SIZE, SIZE), parse_budget(budget),
                                          None, False, None, None, note=lines.append,
                                          lut_tolerance=0.25)  # 3x off either way; noise not
        first = prepare()
        second = prepare()
    finally:
        measurer.close()
    assert first.lut_check.action in ("recalibrated", "reprofiled"), lines
    assert default.read_bytes() == slow.read_bytes(), "the default LUT is left as it was"
    assert second.lut_path == first.lut_path != str(default)
    assert second.lut_check.action == "confirmed", lines
