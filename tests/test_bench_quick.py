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
    out, img, ledger = tmp_path / "benchmarks.md", tmp_path / "img", tmp_path / "ledger"
    target = str(_fast_target(tmp_path))
    common = ["--mode", "smoke", "--target", target, "--ledger", str(ledger), "--runs",
              str(tmp_path / "runs"), "--out", str(out), "--img-dir", str(img)]

    # a sitting with no time left trains nothing but says how to go on
    assert bench.main([*common, "--hours", "0"]) == 0
    assert not list(ledger.glob("*/seed*/*.json"))

    assert bench.main(common) == 0
    results = json.loads((ledger / "results.json").read_text())
    assert sorted(e["method"] for e in results["entries"]) == sorted(bench.METHODS)
    assert results["progress"]["done"] == results["progress"]["units"] == len(bench.METHODS)
    for entry in results["entries"]:
        if not entry["failed"]:
            assert entry["latency_ms"] > 0 and 0 <= entry["accuracy"] <= 1
            assert entry["macs"] < results["dense"][0]["macs"]
            assert entry["latency_source"] == "seed"  # the seed's final measurement
    text = out.read_text()
    for heading in ("## Verdict", "## 1. Accuracy", "## 3. Realised speedup",
                    "## 4. Latency-model fidelity", "## 5. Cost"):
        assert heading in text
    assert "python " in text and "revision" in text and "provisional" not in text
    assert (img / "pareto-resnet20.png").stat().st_size > 1000
    # the searches started from the seed's shorter dense training (search_after), kept in
    # the ledger; the reference dense network stayed the one the report compares with
    early = json.loads((ledger / "resnet20" / "seed0" / "dense-1ep.json").read_text())
    assert early["epochs"] == 1 and (ledger / "resnet20" / "seed0" / "dense-1ep.pt").exists()
    assert "search early" in text

    # the report is rebuilt from the ledger alone
    again = tmp_path / "again.md"
    assert bench.main([*common[:-4], "--report-only", "--out", str(again),
                       "--img-dir", str(img)]) == 0
    assert again.read_text() == text


def test_compare_methods_resumes_unit_by_unit(tmp_path: Path,
                                              fashion_mnist_available: None) -> None:
    """A sitting stopped after some units is continued by the same command, even after
    its scratch folder is lost (a new machine): finished units are not trained again."""
    bench = _load_bench()
    ledger = tmp_path / "ledger"
    common = ["--mode", "smoke", "--target", str(_fast_target(tmp_path)), "--ledger",
              str(ledger), "--out", str(tmp_path / "b.md"), "--img-dir", str(tmp_path / "img")]
    assert bench.main([*common, "--runs", str(tmp_path / "runs1"), "--methods", "hwdnal",
                       "uniform"]) == 0
    first = {p.name: p.read_text() for p in ledger.glob("resnet20/seed0/*-*.json")
             if not p.name.startswith("dense-")}
    assert sorted(first) == ["hwdnal-0.5.json", "uniform-0.5.json"]
    assert "provisional" in (tmp_path / "b.md").read_text()

    assert bench.main([*common, "--runs", str(tmp_path / "runs2")]) == 0
    units = {p.name: p.read_text() for p in ledger.glob("resnet20/seed0/*-*.json")
             if p.name != "dnal-tries.json" and not p.name.startswith("dense-")}
    assert len(units) == len(bench.METHODS)
    for name, text in first.items():  # untouched by the second sitting
        assert units[name] == text
    scratch = json.loads(units["hwdnal-scratch-0.5.json"])
    assert scratch["keep"] == json.loads(first["hwdnal-0.5.json"])["keep"]
    sittings = json.loads((ledger / "sittings.json").read_text())
    assert [s["units"] for s in sittings] == [3, len(bench.METHODS) - 2]  # dense counted once


def test_ledger_refuses_other_settings(tmp_path: Path) -> None:
    bench = _load_bench()
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    (ledger / "settings.json").write_text(json.dumps({"settings": {"mode": "quick"},
                                                      "target": "cpu"}))
    assert bench.main(["--mode", "smoke", "--ledger", str(ledger), "--status"]) == 2


def test_masks_survive_the_ledger() -> None:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from ledger import mask_from_text, mask_to_text

    keep = torch.rand(301) > 0.4
    assert torch.equal(mask_from_text(mask_to_text(keep)), keep)


def test_l1_reuses_the_network_another_budget_trained(tmp_path: Path,
                                                      fashion_mnist_available: None) -> None:
    """Two L1 budgets whose ratios round to the same channels are one network: the second
    budget takes the first one's accuracy and cost, says so, and is still measured; a ratio
    that rounds elsewhere is trained."""
    import dataclasses

    import torch

    bench = _load_bench()
    from ledger import Ledger
    from methods import l1_pruned

    from hwdnal.targets import load_target

    settings = dataclasses.replace(bench.MODES["smoke"], fractions=(0.5, 0.3))
    target = load_target(str(_fast_target(tmp_path)))
    ledger = Ledger(tmp_path / "ledger")
    # knob 0.4 and 0.5 keep the same channel counts at a step of 8 (16 -> 8, 32 -> 16, ...)
    ledger.write("resnet20/families.json", {"l1": [{"knob": 0.4, "ratio": 0.46},
                                                    {"knob": 0.5, "ratio": 0.45}]})
    run = bench.Bench(settings, target, str(_fast_target(tmp_path)), tmp_path / "runs", ledger,
                      methods=("l1",))
    trained = bench.Entry("resnet20", 0, "l1", 0.5, knob=0.4, accuracy=0.4321,
                          stages=[{"name": "finetune", "epochs": 1, "seconds": 12.0}])
    ledger.save_unit(trained)

    entry, net = run.l1("resnet20", 0, 0.3, None, "", "l1")  # the fastest member: knob 0.5
    assert entry.knob == 0.5 and entry.same_network_as == "l1-0.5"
    assert entry.accuracy == 0.4321 and entry.stages == trained.stages
    dense = run.fresh("resnet20", 0).eval()
    run.finish(entry, net, dense, 0)
    assert entry.accuracy == 0.4321 and entry.latency_ms > 0  # measured, not copied
    assert entry.macs < bench.params_and_macs(dense, torch.randn(1, 1, 28, 28))[1]

    start = run.start_network("resnet20", 0)
    elsewhere = l1_pruned(start, torch.randn(1, 1, 28, 28), 0.8, run.step())
    assert run.trained_twin("resnet20", 0, 0.3, "l1", start, elsewhere) is None
    assert bench.l1_twins(ledger, settings, "resnet20", run.step()) == 1
