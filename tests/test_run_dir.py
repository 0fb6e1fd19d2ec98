"""The run directory: a re-run with the same settings resumes, other settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwdnal.errors import UserError
from hwdnal.run import RunDir


def _open(path: Path, config: dict, defaults: dict | None = None) -> bool:
    run = RunDir(path)
    try:
        return run.open(config, defaults)
    finally:
        run.unlock()


def test_a_setting_added_by_a_newer_hwdnal_at_its_default_still_resumes(tmp_path: Path):
    run, old = tmp_path / "run", {"model": "resnet20", "epochs_weights": 4}
    assert _open(run, old) is False
    (run / "state.json").write_text("{}")  # something was computed
    defaults = {"skip_bad_images": False}
    assert _open(run, {**old, "skip_bad_images": False}, defaults) is True
    with pytest.raises(UserError, match=r"other settings .*skip_bad_images"):
        _open(run, {**old, "skip_bad_images": True}, defaults)
