"""The benchmark scripts run end to end (the smoke case of bench/compare_methods.py).

All four methods at one budget, one seed, a tiny subset and a fast copy of the `cpu` target;
everything lands in tmp_path, never in docs/. The numbers are meaningless: the test only
keeps the scripts from rotting.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("compare_methods",
                                                  ROOT / "bench" / "compare_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_methods"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _fast_target(folder: Path) -> Path:
    """The built-in cpu target with short timings: the test checks plumbing, not speed."""
    text = (ROOT / "targets" / "cpu.toml").read_text()
    for key, value in (("name", '"cpu-test"'), ("iterations", "10"), ("min_seconds", "0.1"),
                       ("layer_min_seconds", "0.02")):
        text = re.sub(rf"(?m)^{key} *=.*$", f"{key} = {value}", text)
    path = folder / "cpu-test.toml"
    path.write_text(text)
    return path


def test_compare_methods_smoke(tmp_path: Path, fashion_mnist_available: None) -> None:
    bench = _load_bench()
    out, img = tmp_path / "benchmarks.md", tmp_path / "img"
    code = bench.main(["--mode", "smoke", "--target", str(_fast_target(tmp_path)),
                       "--runs", str(tmp_path / "runs"), "--out", str(out),
                       "--img-dir", str(img)])
    assert code == 0
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert sorted(e["method"] for e in results["entries"]) == sorted(bench.METHODS)
    for entry in results["entries"]:
        if not entry["failed"]:
            assert entry["latency_ms"] > 0 and 0 <= entry["accuracy"] <= 1
            assert entry["macs"] < results["dense"][0]["macs"]
    text = out.read_text()
    for heading in ("## Verdict", "## 1. Accuracy", "## 3. Realised speedup",
                    "## 4. Latency-model fidelity", "## 5. Cost"):
        assert heading in text
    assert "python " in text and "revision" in text
    assert (img / "pareto.png").stat().st_size > 1000
    # the report is rebuilt from results.json alone
    again = tmp_path / "again.md"
    assert bench.main(["--report-only", str(tmp_path / "runs" / "results.json"), "--out",
                       str(again), "--img-dir", str(img)]) == 0
    assert again.read_text() == text
