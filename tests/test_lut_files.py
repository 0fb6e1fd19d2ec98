"""LUT files: a bad file gives exit code 2 and one clear line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from latency_helpers import synthetic_lut

from hwdnal.errors import UserError
from hwdnal.latency.lut import load_lut
from hwdnal.models import create_model
from hwdnal.targets import load_target


@pytest.fixture(scope="module")
def good_lut(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lut")
    lut = synthetic_lut(create_model("resnet20", num_classes=10), (1, 3, 16, 16), folder)
    return lut.save(folder / "good.json")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hwdnal.cli.app", *args], capture_output=True, text=True,
        timeout=120, check=False,
    )


def _variant(good: Path, tmp_path: Path, name: str, edit) -> Path:
    path = tmp_path / name
    edit(path, good.read_text())
    return path


def _set(key_path: list[str], value):
    def edit(path: Path, text: str) -> None:
        data = json.loads(text)
        node = data
        for key in key_path[:-1]:
            node = node[key]
        node[key_path[-1]] = value
        path.write_text(json.dumps(data))

    return edit


BAD = {
    "truncated.json": lambda p, t: p.write_text(t[: len(t) // 2]),
    "corrupt.json": lambda p, t: p.write_bytes(b"\x00\xff garbage" + t.encode()[:100]),
    "empty.json": lambda p, t: p.write_text(""),
    "wrong-version.json": _set(["version"], 99),
    "not-a-lut.json": _set(["schema"], "something-else"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_lut_is_one_line_and_exit_code_2(good_lut, tmp_path, name) -> None:
    path = _variant(good_lut, tmp_path, name, BAD[name])
    result = _cli("lut", str(path), "--target", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in lines[0]


def test_wrong_target_lut_is_refused_unless_forced(good_lut, tmp_path) -> None:
    path = _variant(good_lut, tmp_path, "other.json", _set(["fingerprint", "cpu_model"], "Other"))
    result = _cli("lut", str(path), "--target", "cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not match target 'cpu'" in lines[0] and "--force" in lines[0]
    assert _cli("lut", str(path), "--target", "cpu", "--force").returncode == 0


def test_good_lut_loads_and_round_trips(good_lut) -> None:
    result = _cli("lut", str(good_lut), "--target", "cpu")
    assert result.returncode == 0, result.stderr
    lut = load_lut(good_lut, target=load_target("cpu"))
    assert json.loads(good_lut.read_text()) == lut.to_dict()


def test_table_of_wrong_shape_is_refused(good_lut, tmp_path) -> None:
    data = json.loads(good_lut.read_text())
    entry = next(
        e for e in data["entries"].values() if not e["depthwise"] and len(e["latency_ms"]) > 1
    )
    entry["latency_ms"] = entry["latency_ms"][:-1]
    path = tmp_path / "shape.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="table"):
        load_lut(path)
