"""Through a pipe (CI, nohup, `| tee log`) the search logs one whole line per event, in order.

Under a terminal the live bars redraw in place; rich would hold them until the end and cut
them to 80 columns in a pipe, losing both the order of events and the text.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from budgets import reachable_budget
from tiny_run import quick_target

from hwdnal.cli.plain_log import CountLines, PlainLog

pytestmark = pytest.mark.slow


def _position(lines: list[str], pattern: str, after: int = -1) -> int:
    for index, line in enumerate(lines):
        if index > after and re.search(pattern, line):
            return index
    raise AssertionError(f"no line matching {pattern!r} after line {after}:\n" + "\n".join(lines))


@pytest.mark.latency
def test_a_piped_search_logs_each_event_as_one_whole_line_in_order(tmp_path: Path) -> None:
    target = quick_target(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "hwdnal.cli.app", "search", "--out", str(tmp_path / "run"),
         "--target", str(target), "--data", "synthetic", "--input-size", "16",
         "--budget", reachable_budget(target), "--train-subset", "256", "--test-subset", "128",
         "--batch-size", "64", "--epochs-weights", "2", "--epochs-arch", "1",
         "--epochs-finetune", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.splitlines()
    order = [r"^weights: started, 2 epoch\(s\) of 4 steps$",
             r"^weights: epoch 1/2  loss [0-9.]+  acc [0-9.]+  \([0-9.]+ s\)$",
             r"^weights: epoch 2/2 ", r"^weights: finished in ",
             r"^architecture: started", r"^architecture: epoch 1/1 .*delta",
             r"^architecture: finished in ", r"^prune: started",
             r"^fit round 1: predicted [0-9.]+ ms, measured .* ms, budgets? .*: .*the budget$",
             r"^finetune: started", r"^finetune: epoch 1/1 ", r"^finetune: finished in ",
             r"^compile: started", r"^compile: finished in ", r"top-1 accuracy"]
    at = -1
    for pattern in order:
        at = _position(lines, pattern, at)
    assert "…" not in done.stdout, "nothing is shortened"
    assert "\x1b[" not in done.stdout, "no terminal control codes in a log"
    assert any(len(line) > 80 for line in lines if line.startswith("fit round")), \
        "a long line stays whole, not wrapped at 80 columns"


def test_a_long_count_is_logged_at_each_tenth() -> None:
    class Lines:
        def __init__(self) -> None:
            self.text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None: ...

    stream = Lines()
    counter = CountLines(PlainLog(stream), "profile: layer grid")  # type: ignore[arg-type]
    for done in range(0, 201, 4):
        counter.update(done, 200)
    counter.update(200, 200)
    shown = stream.text.splitlines()
    assert shown[0] == "profile: layer grid: 0/200"
    assert shown[-1] == "profile: layer grid: 200/200"
    assert len(shown) == 11
