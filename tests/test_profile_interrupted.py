"""A real `hwdnal profile` process stopped with SIGTERM resumes without measuring again."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import quick_target

pytestmark = pytest.mark.slow

def test_sigterm_mid_profile_saves_and_the_rerun_skips_what_was_measured(tmp_path: Path):
    target = quick_target(tmp_path)
    command = [sys.executable, "-m", "hwdnal.cli.app", "profile", "--target", str(target),
               "--model", "resnet20", "--input-size", "16", "--out", "lut.json"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    cache = tmp_path / ".cache"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if cache.exists() and any(cache.iterdir()):  # the first batch of points is saved
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Resume with: hwdnal profile" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "lut.json").exists()

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    counts = re.search(r"(\d+) layer measurements \((\d+) taken now\)", resumed.stdout)
    assert counts is not None, resumed.stdout
    total, taken_now = int(counts[1]), int(counts[2])
    assert 0 < taken_now < total, "the resumed profile measured only what was missing"
    assert (tmp_path / "lut.json").exists()
