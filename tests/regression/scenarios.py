"""Tiny seeded searches whose outcome a restructuring must not change.

Issue 23 moves the code of every stage; "behaviour stays the same" is checked here, not
argued: each scenario runs a whole search (weights, architecture, fit and prune, finetune)
in a process of its own and is reduced to a summary of what a user gets: the keep masks,
the accuracies, result.json without its timings, config.json, the state's fields and the
files of the run directory. tests/test_regression.py compares a run of today's code with
the summaries recorded (record.py) from the commit named in fixtures/meta.json.

This file and run_scenario.py are run against that older commit too (the test's fallback
on a CPU whose kernels round differently), so they import only names that exist in both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

#: what every scenario shares: seconds, not minutes, and nothing compiled
COMMON: dict[str, Any] = dict(
    data="synthetic", input_size=16, train_subset=256, test_subset=128, batch_size=64,
    epochs_weights=1, epochs_arch=2, epochs_finetune=1, compile=False,
)

#: name -> SearchConfig fields beyond COMMON; "lut" is filled in with a synthetic LUT
SCENARIOS: dict[str, dict[str, Any]] = {
    # weights -> architecture -> prune (aligned to the cpu target's step) -> finetune, with
    # residual-branch discovery and no device at all
    "resnet20_plain": dict(model="resnet20", seed=1),
    # the budget path: a reused LUT checked against the device, dense and smallest measured,
    # the latency switch, the LUT fit, fit rounds against the device, distillation
    "resnet20_budget": dict(model="resnet20", seed=1, budget="60%", distill=0.5, lut=True),
    # a supernet under a budget: every copy of the candidate rule and keep_only pruning
    "supernet_budget": dict(model="toy_models:tiny_supernet", seed=1, budget="70%",
                            lut=True),
}

#: the environment of a scenario's process: one thread, and kernels pinned to AVX2 so
#: that CPUs of one architecture but different vendors compute the same floats
PINNED_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
}

#: result.json keys that hold a machine's or a clock's values, not the search's outcome
VOLATILE_KEYS = frozenset({"seconds", "fingerprint", "hwdnal", "saved_to", "lut"})

#: the slower the scripted device times every network but a call's first (the dense one):
#: a fit's first round lands over the budget and the fit must rescale
SCRIPTED_SLOWDOWN = 1.07


class ScriptedDevice:
    """A deterministic Measurer: a network's latency is the synthetic LUT's prediction of it
    (x SCRIPTED_SLOWDOWN after a call's first network). Building and running are not part
    of these scenarios (compile=False)."""

    where = "a scripted device"

    def __init__(self, lut_path: Path) -> None:
        from hwdnal.latency.lut import load_lut
        from hwdnal.latency.predictor import LatencyModel
        from hwdnal.targets import load_target

        self.target = load_target("cpu")
        try:  # this machine's fingerprint of the target, asked where the code keeps it
            from hwdnal.devices import fingerprint_here
        except ImportError:  # the recorded commit: the target probed itself
            self._fingerprint = self.target.fingerprint()
        else:
            self._fingerprint = fingerprint_here(self.target)
        self.model = LatencyModel(load_lut(lut_path))

    @property
    def name(self) -> str:
        return "scripted"

    def fingerprint(self) -> dict[str, Any]:
        return dict(self._fingerprint)

    def measure(self, networks, settings):
        from hwdnal.devices.measurer import Measurement

        out = []
        for index, (network, _shape) in enumerate(networks):
            ms = self.model.predict_module(network) * (1.0 if index == 0 else SCRIPTED_SLOWDOWN)
            out.append(Measurement(median_ms=ms, p90_ms=1.1 * ms, samples=60))
        return out

    def build(self, network, input_shape):
        raise AssertionError("the regression scenarios do not compile")

    def run(self, deployable, inputs):
        raise AssertionError("the regression scenarios do not compile")

    def close(self) -> None:
        pass


def build_lut(model_name: str, folder: Path) -> Path:
    """A synthetic LUT of ``model_name`` at 16x16 (nothing is timed)."""
    from latency_helpers import synthetic_lut

    from hwdnal.models import create_model

    path = folder / "lut.json"
    synthetic_lut(create_model(model_name, 10, 3), (1, 3, 16, 16), folder).save(path)
    return path


def _packed(mask: Any) -> dict[str, Any]:
    bits = np.asarray(mask, dtype=bool).reshape(-1)
    return {"num_gates": int(bits.size), "bits": np.packbits(bits).tobytes().hex()}


def _without_volatile(value: Any, run_dir: str) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v, run_dir) for k, v in value.items()
                if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v, run_dir) for v in value]
    if isinstance(value, str):
        return value.replace(run_dir, "<run>")
    return value


def _key_order(value: Any) -> Any:
    if isinstance(value, dict):
        return [[k, _key_order(v)] for k, v in value.items()]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_key_order(value[0])]
    return None


def summarize(run_dir: Path) -> dict[str, Any]:
    """What a user gets from the run, without timings, paths or the machine's name."""
    import torch

    run = str(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    state = json.loads((run_dir / "state.json").read_text())
    architecture = torch.load(run_dir / "checkpoints" / "architecture.pt", weights_only=False)
    pruned_init = torch.load(run_dir / "checkpoints" / "pruned_init.pt", weights_only=False)
    gate = architecture["gate"]
    s = gate["s"] if "s" in gate else next(iter(gate.values()))
    arch_binary = torch.sigmoid(s.double() * float(architecture["delta"])) > 0.9
    pruned_state = pruned_init["model"].state_dict() if hasattr(
        pruned_init["model"], "state_dict") else pruned_init["model"]
    digest = hashlib.sha256()
    for name, tensor in pruned_state.items():  # the pruned network before finetuning
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
    return {
        "masks": {"arch_binary": _packed(arch_binary.numpy()),
                  "keep": _packed(pruned_init["keep"].numpy())},
        "accuracies": {"dense": result["dense"]["accuracy"],
                       "pruned": result["pruned"]["accuracy"],
                       "before_finetune": result["arch_mask"]["accuracy_before_finetune"]},
        "pruned_shapes": digest.hexdigest(),
        "result": _without_volatile(result, run),
        "key_order": _key_order(result),
        "config": {k: v for k, v in config.items() if k not in ("lut", "out")},
        "state": {"finished": state.get("finished"), "fields": list(state)},
        "files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                        if p.is_file() and p.name != ".lock"),
    }


def first_difference(expected: Any, actual: Any, where: str = "") -> str | None:
    """The path of the first value that differs, with both values; None if equal."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if list(expected) != list(actual):
            return f"{where or '/'}: keys {list(expected)} != {list(actual)}"
        for key in expected:
            found = first_difference(expected[key], actual[key], f"{where}/{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return f"{where}: {len(expected)} items != {len(actual)}"
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found = first_difference(e, a, f"{where}[{index}]")
            if found:
                return found
        return None
    return None if expected == actual else f"{where}: {expected!r} != {actual!r}"


#: the order in which summaries are compared: what matters most is named first
ORDER = ("masks", "accuracies", "pruned_shapes", "result", "key_order", "config", "state",
         "files")


def compare(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    for part in ORDER:
        found = first_difference(expected.get(part), actual.get(part), part)
        if found:
            return found
    return None


def run_in_process(name: str, out: Path, code: Path | None = None,
                   timeout: float = 900) -> dict[str, Any]:
    """Run scenario ``name`` in a fresh process (of the code under ``code``: a checkout's
    root, whose own run_scenario.py runs it) and return its summary."""
    import os
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    script = (code / "tests" / "regression" if code else here) / "run_scenario.py"
    env = {**os.environ, **PINNED_ENV}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script), name, str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"scenario {name} failed ({done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return json.loads((out / "summary.json").read_text())
