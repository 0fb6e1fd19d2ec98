"""The four stages on real Fashion-MNIST, through the command line, and resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fashion_mnist_available")]

_SCRATCH = Path(tempfile.mkdtemp(prefix="hwdnal-e2e-"))
SMALL = ["--train-subset", "1536", "--test-subset", "1000", "--batch-size", "64",
         "--epochs-weights", "2", "--epochs-arch", "1", "--epochs-finetune", "1"]


def hwdnal(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a scratch folder (LUTs land in ./profiles)."""
    done = subprocess.run([sys.executable, "-m", "hwdnal.cli.app", *args],
                          capture_output=True, text=True, timeout=900, cwd=_SCRATCH)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_search_runs_all_four_stages_and_removes_channels(tmp_path: Path):
    run = tmp_path / "run"
    # no budget: DNAL's own mode, where λa alone asks for a smaller network. With gates that
    # start open, 0.1 over this run's 24 architecture steps closes nothing; 1.0 does
    hwdnal("search", "--out", str(run), *SMALL, "--lambda-a", "1.0")

    result = json.loads((run / "result.json").read_text())
    assert [stage["name"] for stage in result["stages"]] == [
        "weights", "architecture", "prune", "finetune", "compile"]
    for part in ("dense", "pruned"):
        assert 0.0 <= result[part]["accuracy"] <= 1.0
        assert result[part]["params"] > 0 and result[part]["macs"] > 0
    assert result["dense"]["accuracy"] > 0.5, "two epochs on real data must learn something"
    assert result["pruned"]["params"] < result["dense"]["params"]
    assert result["pruned"]["macs"] < result["dense"]["macs"]
    kept = sum(g["kept"] for g in result["groups"])
    total = sum(g["total"] for g in result["groups"])
    assert 0 < kept < total
    assert all(g["kept"] >= 1 for g in result["groups"])
    for name in ("config.json", "dense.pt", "pruned.pt", "state.json"):
        assert (run / name).exists()
    for artifact in result["artifacts"].values():
        assert (run / artifact).exists()

    pruned = torch.load(run / "pruned.pt", weights_only=False)
    assert sum(p.numel() for p in pruned.parameters()) == result["pruned"]["params"]
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_run_killed_after_the_weight_stage_resumes_there(tmp_path: Path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "hwdnal.cli.app", "search", "--out", str(run), *SMALL]
    process = subprocess.Popen(args, cwd=_SCRATCH, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    state = run / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if state.exists() and "weights" in json.loads(state.read_text())["finished"]:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = json.loads(state.read_text())["finished"]
    assert "weights" in finished and "finetune" not in finished
    dense_before = (run / "dense.pt").read_bytes()

    resumed = hwdnal("search", "--out", str(run), *SMALL)
    assert "resuming" in resumed.stderr
    assert (run / "dense.pt").read_bytes() == dense_before, "the weight stage must not rerun"
    result = json.loads((run / "result.json").read_text())
    assert [s["name"] for s in result["stages"]] == ["weights", "architecture", "prune",
                                                     "finetune", "compile"]


def test_sigterm_in_the_architecture_stage_saves_and_the_rerun_resumes_mid_epoch(
    tmp_path: Path,
):
    run = tmp_path / "run"
    options = [*SMALL[:-4], "--epochs-arch", "3", "--epochs-finetune", "1"]
    args = [sys.executable, "-m", "hwdnal.cli.app", "search", "--out", str(run), *options]
    process = subprocess.Popen(args, cwd=_SCRATCH, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "weights: finished" in line or "weights finished" in line:  # piped or a terminal
            break
    time.sleep(1.5)  # inside the architecture stage (3 epochs of 24 steps)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Resume with: hwdnal search" in stderr and "Traceback" not in stderr
    checkpoint = torch.load(run / "checkpoints" / "architecture.pt", weights_only=False)
    steps_per_epoch = 1536 // 64
    assert 0 < checkpoint["step"] < steps_per_epoch, "stopped mid-epoch, after a whole step"
    assert "architecture" not in json.loads((run / "state.json").read_text())["finished"]

    resumed = hwdnal("search", "--out", str(run), *options)
    assert f"step {checkpoint['step'] + 1}/{steps_per_epoch}" in resumed.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["pruned"]["params"] < result["dense"]["params"]


def test_resuming_with_other_settings_is_refused(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": 1, "model": "resnet56"}))
    (run / "state.json").write_text(json.dumps({"finished": ["weights"]}))
    done = hwdnal("search", "--out", str(run), *SMALL, check=False)
    assert done.returncode == 2
    assert "other settings" in done.stderr and "Traceback" not in done.stderr
