"""The benchmark's verdict rule, on hand-made results: a row that misses the budget loses to
one that meets it; between rows that meet it, the mean top-1 beyond the seeds' spread decides.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from compare_report import Table, compare, verdict  # noqa: E402

SETTINGS = {"seeds": [0, 1], "train_subset": 20000, "epochs_weights": 20, "epochs_arch": 1,
            "epochs_finetune": 4, "lambda_tries": 3, "lambda_tolerance": 0.04}


def _entry(method: str, fraction: float, seed: int, accuracy: float | None,
           ratio: float | None, failed: str | None = None) -> dict[str, Any]:
    return {"model": "resnet20", "seed": seed, "method": method, "fraction": fraction,
            "accuracy": accuracy, "latency_ms": None if ratio is None else ratio,
            "dense_ms": 1.0, "macs": 1000, "failed": failed, "tries": 1}


def _table(entries: list[dict[str, Any]]) -> Table:
    dense = [{"model": "resnet20", "seed": s, "macs": 2000, "latency_ms": 1.0} for s in (0, 1)]
    return Table({"entries": entries, "settings": SETTINGS, "dense": dense})


def test_a_baseline_over_the_budget_loses_even_when_more_accurate() -> None:
    table = _table([
        *(_entry("hwdnal", 0.3, s, 0.88, 0.30) for s in (0, 1)),
        *(_entry("uniform", 0.3, s, 0.90, 0.41) for s in (0, 1)),  # its fastest member
    ])
    outcome = compare(table, "resnet20", 0.3, "uniform")
    assert outcome is not None and outcome["outcome"] == "wins"
    line = next(x for x in verdict(table) if "against uniform" in x)
    assert "measured 41% of dense, over the 30% budget (counted as a loss for it)" in line


def test_hwdnal_that_failed_to_reach_the_budget_loses() -> None:
    table = _table([
        *(_entry("hwdnal", 0.3, s, None, None, failed="budget below the smallest") for s in (0, 1)),
        *(_entry("uniform", 0.3, s, 0.85, 0.30) for s in (0, 1)),
    ])
    outcome = compare(table, "resnet20", 0.3, "uniform")
    assert outcome is not None and outcome["outcome"] == "loses"
    line = next(x for x in verdict(table) if "against uniform" in x)
    assert "no network vs 85.0%" in line and "counted as a loss for hwdnal" in line


def test_within_the_budget_accuracy_beyond_the_spread_decides() -> None:
    close = _table([
        _entry("hwdnal", 0.5, 0, 0.900, 0.49), _entry("hwdnal", 0.5, 1, 0.910, 0.50),
        _entry("uniform", 0.5, 0, 0.895, 0.50), _entry("uniform", 0.5, 1, 0.905, 0.48),
    ])
    assert compare(close, "resnet20", 0.5, "uniform")["outcome"] == "ties"
    apart = _table([
        _entry("hwdnal", 0.5, 0, 0.920, 0.49), _entry("hwdnal", 0.5, 1, 0.921, 0.50),
        _entry("uniform", 0.5, 0, 0.900, 0.50), _entry("uniform", 0.5, 1, 0.901, 0.48),
    ])
    assert compare(apart, "resnet20", 0.5, "uniform")["outcome"] == "wins"
