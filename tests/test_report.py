"""`hwdnal report`: report.md and valid PNG plots from a real run, with or without latency."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import copy_run, tiny_run

from hwdnal.report import PLOTS, architecture_curve, channel_rows, latency_rows, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return tiny_run(tmp_path_factory)


def _assert_png(path: Path) -> None:
    """The file is a PNG that both PIL and matplotlib decode to a non-empty image."""
    import matplotlib.image
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and float(pixels.std()) > 0


def _with_budget_keys(run: Path) -> dict:
    """Give a real run's result.json the keys a budgeted search with a LUT writes."""
    result = json.loads((run / "result.json").read_text())
    result["budget_ms"] = 0.12
    result["dense"]["latency_ms"] = 0.2
    result["pruned"]["latency_ms"] = 0.11
    result["pruned"]["predicted_latency_ms"] = 0.105
    result["speedup"] = 0.2 / 0.11
    result["arch_mask"] = {"kept": 40, "total": 64, "predicted_ms": 0.1164, "of_budget": 0.97,
                           "fit_changed": 5}
    for layer in result["layers"]:
        layer["dense_lut_ms"] = 1e-4 * layer["dense_in"] * layer["dense_out"]
        layer["pruned_lut_ms"] = 1e-4 * layer["pruned_in"] * layer["pruned_out"]
    for entry in result["arch_curve"]:
        entry["predicted_latency_ms"] = 0.2 - 0.02 * entry["step"]
        entry["latency_weight"] = 0.1 * entry["step"]
    (run / "result.json").write_text(json.dumps(result))
    return result


def test_report_from_a_real_run_writes_markdown_and_valid_pngs(run: Path, tmp_path: Path):
    mine = copy_run(run, tmp_path)
    result = json.loads((mine / "result.json").read_text())
    path = write_report(mine)
    assert path == mine / "report.md"
    text = path.read_text()

    assert channel_rows(result) and architecture_curve(result)[0]
    for key in ("channels", "architecture"):
        _assert_png(mine / "report" / PLOTS[key])
        assert f"](report/{PLOTS[key]})" in text
    assert "| top-1 accuracy |" in text and "| parameters |" in text and "| MACs |" in text
    assert "## Stages" in text and "| weights |" in text
    if not latency_rows(result):  # a run without a LUT: no latency plot, and the report says why
        assert not (mine / "report" / PLOTS["latency"]).exists()
        assert "_Not plotted: the run has no per-layer latency" in text
    if result.get("budget_ms") is None:
        assert "**Budget**: none" in text


def test_report_with_a_budget_plots_latency_and_the_budget_line(run: Path, tmp_path: Path):
    mine = copy_run(run, tmp_path)
    (mine / "report").mkdir()
    result = _with_budget_keys(mine)
    text = write_report(mine).read_text()
    for key, name in PLOTS.items():
        if key == "blocks":  # a supernet's chosen blocks (tests/test_supernet.py)
            assert not (mine / "report" / name).exists() and "Chosen blocks" not in text
            continue
        _assert_png(mine / "report" / name)
        assert f"](report/{name})" in text
    assert "_Not plotted" not in text
    assert "| latency, measured median (ms) | 0.200 | 0.110 | 0.55x |" in text
    assert "| latency, predicted (ms) | | 0.105 |" in text
    assert f"**{result['speedup']:.2f}x**" in text
    assert "**Budget**: 0.120 ms; measured 0.110 ms = 92% of it (met)" in text
    assert "**Target**: `cpu`" in text or result["target"] is None
    # where the stage ended (its best late architecture), apart from its last step
    assert "at the last one δ = " in text
    assert ("The stage ended on 40/64 channels, 0.116 ms by the LUT (97% of the budget); "
            "the fit then changed 5 channel(s).") in text

    # the same run without its latency keys: the latency plot goes, and nothing stale remains
    for layer in result["layers"]:
        del layer["dense_lut_ms"], layer["pruned_lut_ms"]
    (mine / "result.json").write_text(json.dumps(result))
    write_report(mine)
    assert not (mine / "report" / PLOTS["latency"]).exists()


def test_report_shows_the_prediction_error_and_flags_it_above_10_percent(
        run: Path, tmp_path: Path):
    mine = copy_run(run, tmp_path)
    result = _with_budget_keys(mine)
    text = write_report(mine).read_text()
    assert "| latency, predicted (ms) | | 0.105 | -4.5% vs measured |" in text
    assert "**Warning**" not in text and "**Note**" not in text

    result["pruned"]["predicted_latency_ms"] = 0.307  # the LUT of a 2.7x slower machine
    result["pruned"]["latency_error"] = (0.307 - 0.11) / 0.11
    result["lut_check"] = {"action": "recalibrated", "error": 1.7,
                           "saved_to": "profiles/x.recalibrated.json"}
    (mine / "result.json").write_text(json.dumps(result))
    text = write_report(mine).read_text()
    assert "| latency, predicted (ms) | | 0.307 | +179.1% vs measured |" in text
    assert "> **Warning**: the LUT's predicted latency of the pruned network is +179.1% off" in text
    assert "it was recalibrated before the search (written to `profiles/x.recalibrated.json`)" \
        in text


def test_report_data_helpers_fall_back_to_groups_and_history():
    result = {
        "groups": [{"name": "conv1", "kept": 3, "total": 16}],
        "arch_history": [{"epoch": 0, "delta": 1e4, "loss": 1.0, "kept": 3}],
        "layers": [{"name": "conv1", "dense_in": 3, "dense_out": 16, "pruned_in": 3,
                    "pruned_out": 3, "dense_lut_ms": 0.5, "pruned_lut_ms": math.nan}],
    }
    assert channel_rows(result) == [("conv1", 16.0, 3.0)]
    assert latency_rows(result) == []  # NaN is not a latency
    curve, unit = architecture_curve(result)
    assert unit == "epoch" and curve[0]["step"] == 1


def test_report_through_the_cli(run: Path, tmp_path: Path):
    mine = copy_run(run, tmp_path)
    command = [sys.executable, "-m", "hwdnal.cli.app", "report", str(mine)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env=env)
    assert done.returncode == 0, done.stderr
    assert (mine / "report.md").is_file()
    _assert_png(mine / "report" / PLOTS["channels"])

    missing = [sys.executable, "-m", "hwdnal.cli.app", "report", str(tmp_path / "nothing")]
    done = subprocess.run(missing, capture_output=True, text=True, timeout=120, check=False,
                          env=env)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and len(done.stderr.strip().splitlines()) == 1
