"""Measuring on a device through `hwdnal-agent`: real agent processes on 127.0.0.1.

The agent runs from the torch-free environment that `make test` builds (`.venv-agent`:
`pip install ./agent[onnxruntime]` with the oldest Python the agent supports that this
machine has); without it, from this environment. Its request counts prove that the
measurements, builds and runs were the agent's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from budgets import reachable_budget
from hwdnal_agent.client import connect
from test_errors import assert_clear_error
from tiny_run import copy_run, quick_target, tiny_run

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("agent_processes",
                                               ROOT / "agent" / "tests" / "processes.py")
processes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(processes)

AGENT_VENV = Path(os.environ.get("HWDNAL_AGENT_VENV", ROOT / ".venv-agent")).resolve()


def agent_python() -> str | None:
    """The torch-free agent environment's interpreter; None means this one (CI requires it)."""
    python = AGENT_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    if os.environ.get("HWDNAL_REQUIRE_AGENT_VENV"):
        pytest.fail(f"{python} is missing: `make agent-venv` builds the torch-free agent")
    return None


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):
    started = processes.start_agent(tmp_path_factory.mktemp("agent"), python=agent_python())
    yield started
    assert started.stop() == 0, started.log.read_text()


def stats(agent) -> dict:
    with connect(agent.url, token=agent.token) as client:
        found = client.stats()
    return {"measure": found["requests"].get("measure", 0),
            "build": found["requests"].get("build", 0), "run": found["requests"].get("run", 0),
            "models": found["models_measured"]}


def hwdnal(*args: str, cwd: Path, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HWDNAL_AGENT_TOKEN"}
    env["COLUMNS"] = "250"  # rich tables on one line each
    if token is not None:
        env["HWDNAL_AGENT_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "hwdnal.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_the_agent_environment_has_no_torch():
    python = agent_python()
    if python is None:
        pytest.skip("no torch-free agent environment (make agent-venv)")
    done = subprocess.run([python, "-c", "import hwdnal_agent, onnxruntime; import torch"],
                          capture_output=True, text=True, check=False)
    assert "No module named 'torch'" in done.stderr


@pytest.mark.slow
def test_a_profile_with_validation_is_measured_by_an_exec_agent(tmp_path: Path):
    lock = tmp_path / "device.lock"
    url = processes.exec_url(lock, python=agent_python())
    out = tmp_path / "lut.json"
    done = hwdnal("profile", "--target", str(quick_target(tmp_path)), "--model", "resnet20",
                  "--input-size", "16", "--num-classes", "10", "--validate", "2",
                  "--remote", url, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lut = json.loads(out.read_text())
    assert lut["fingerprint"]["remote"] == url and lut["fingerprint"]["agent_version"]
    assert lut["validation"]["samples"] == 2
    assert lut["profile"]["layer_measurements"] > 20


@pytest.mark.slow
@pytest.mark.latency
def test_a_budgeted_search_measures_every_fit_round_on_the_agent(tmp_path: Path, agent):
    before = stats(agent)
    run = tmp_path / "run"
    done = hwdnal("search", "--out", str(run), "--target", str(quick_target(tmp_path)),
                  "--data", "synthetic", "--input-size", "16",
                  "--budget", reachable_budget(quick_target(tmp_path)),
                  "--train-subset", "256", "--test-subset", "128", "--batch-size", "64",
                  "--epochs-weights", "1", "--epochs-arch", "1", "--epochs-finetune", "1",
                  "--remote", agent.url, cwd=tmp_path, token=agent.token)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run / "result.json").read_text())
    after = stats(agent)
    rounds = len(result["fit_rounds"])
    assert rounds >= 1 and result["budget_met"] in (True, False)
    # dense+smallest, the profile (grid batches and whole networks), each fit round, the
    # final dense-vs-pruned measurement and the deployed file's timing: all the agent's
    measured = after["measure"] - before["measure"]
    assert measured >= 1 + 2 + rounds + 1
    assert after["models"] - before["models"] >= 2 + 2 * rounds + 2
    # one build; runs: the outputs compared with PyTorch, then the held-out accuracy check
    assert (after["build"] - before["build"], after["run"] - before["run"]) == (1, 2)
    fingerprint = result["target"]["fingerprint"]
    assert fingerprint["remote"] == agent.url and fingerprint["host"]
    manifest = json.loads((run / "compiled" / "cpu-quick" / "manifest.json").read_text())
    assert manifest["device"] == agent.url
    assert manifest["check"]["deployed_checked_on"] == agent.url
    assert manifest["check"]["deployed_vs_torch_max_abs_diff"] < 1e-4
    assert manifest["accuracy"]["images"] == 128 and manifest["accuracy"]["agreement"] >= 0.99
    assert hwdnal("report", str(run), cwd=tmp_path).returncode == 0
    assert f"through hwdnal-agent at {agent.url}" in (run / "report.md").read_text()


@pytest.mark.slow
def test_compile_and_bench_go_to_the_agent(tmp_path_factory, tmp_path: Path, agent):
    run = copy_run(tiny_run(tmp_path_factory), tmp_path)
    target = quick_target(tmp_path)
    before = stats(agent)
    done = hwdnal("compile", str(run), "--target", str(target), "--remote", agent.url,
                  cwd=tmp_path, token=agent.token)
    assert done.returncode == 0, done.stderr[-3000:]
    onnx_file = run / "compiled" / "cpu-quick" / "model.onnx"
    done = hwdnal("bench", str(onnx_file), "--target", str(target), "--remote", agent.url,
                  cwd=tmp_path, token=agent.token)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"on the agent at {agent.url}" in done.stdout
    after = stats(agent)
    assert (after["build"] - before["build"], after["run"] - before["run"]) == (1, 2)
    assert after["measure"] - before["measure"] == 2  # compile's timing, then bench's


def test_refusals_are_one_line_and_the_agent_keeps_serving(tmp_path: Path, agent):
    bench = ("bench", str(tmp_path / "m.onnx"), "--target", "cpu", "--remote", agent.url)
    from torch import nn

    from hwdnal.onnx_export import export_onnx

    (tmp_path / "m.onnx").write_bytes(export_onnx(nn.Conv2d(2, 2, 1), (1, 2, 4, 4)))
    assert_clear_error(hwdnal(*bench, cwd=tmp_path, token="f" * 64),
                   "authentication failed", "token")
    assert_clear_error(hwdnal(*bench, cwd=tmp_path), "needs a token", "HWDNAL_AGENT_TOKEN")
    closed = processes.start_agent(tmp_path / "gone", python=agent_python())
    closed.stop()
    assert_clear_error(hwdnal("bench", str(tmp_path / "m.onnx"), "--target", "cpu",
                          "--remote", closed.url, cwd=tmp_path, token=agent.token),
                   "cannot reach the agent", closed.url)
    assert agent.alive()
    done = hwdnal(*bench, cwd=tmp_path, token=agent.token)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_protocol_mismatch_is_one_line(tmp_path: Path, agent, monkeypatch):
    import hwdnal_agent.client as client_module

    from hwdnal.devices import open_measurer
    from hwdnal.errors import UserError
    from hwdnal.targets import load_target

    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", 99)
    monkeypatch.setenv("HWDNAL_AGENT_TOKEN", agent.token)
    with pytest.raises(UserError, match="protocol") as refused:
        open_measurer(load_target("cpu").with_remote(agent.url))
    assert "\n" not in str(refused.value)
    monkeypatch.undo()
    with connect(agent.url, token=agent.token) as client:
        assert client.hello()["protocol"] == client_module.PROTOCOL_VERSION


def test_a_target_file_names_its_agent_and_token_file(tmp_path: Path, agent):
    token_file = tmp_path / "token"
    token_file.write_text(agent.token + "\n")
    target = tmp_path / "board.toml"
    target.write_text(f'remote = "{agent.url}"\ntoken_file = "{token_file}"\n'
                      + quick_target(tmp_path).read_text())
    done = hwdnal("targets", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if "cpu-quick" in line]
    from hwdnal_agent import __version__ as agent_version

    assert agent.url in row and f"yes (agent {agent_version} on" in row


@pytest.mark.slow
@pytest.mark.latency
def test_a_fit_resumes_from_the_rounds_it_measured(tmp_path: Path, agent, monkeypatch):
    """A fit cut short re-runs deterministically; its measured rounds come from the cache."""
    import copy

    import torch

    from hwdnal.budget import parse_budget
    from hwdnal.budget.measure import fit_to_budget
    from hwdnal.budget.target import prepare_target_latency
    from hwdnal.devices import open_measurer
    from hwdnal.gating.model import GatedModel
    from hwdnal.latency.cache import MeasurementCache
    from hwdnal.models import create_model
    from hwdnal.targets import load_target

    monkeypatch.setenv("HWDNAL_AGENT_TOKEN", agent.token)
    target = load_target(quick_target(tmp_path)).with_remote(agent.url)
    measurer = open_measurer(target)
    model, example = create_model("resnet20", 10, 3).eval(), torch.randn(1, 3, 16, 16)
    latency = prepare_target_latency(target, measurer, model, "resnet20", example,
                                     parse_budget(reachable_budget(quick_target(tmp_path))),
                                     None, False, None, None)
    gated = GatedModel(copy.deepcopy(model), example)
    torch.manual_seed(0)
    with torch.no_grad():
        gated.gate.s.copy_(torch.randn(gated.plan.num_gates))
    cache_file = tmp_path / "fit-measurements.json"

    before = stats(agent)
    keep, rounds = fit_to_budget(gated, model, latency, example,
                                 cache=MeasurementCache(cache_file, measurer.fingerprint()))
    middle = stats(agent)
    again, rounds_again = fit_to_budget(
        gated, model, latency, example,
        cache=MeasurementCache(cache_file, measurer.fingerprint()))
    after = stats(agent)
    # one device call per cached pair (a round that proposes a measured mask again reuses it)
    calls = len(MeasurementCache(cache_file, measurer.fingerprint())) // 2
    measurer.close()

    assert middle["measure"] - before["measure"] == calls
    assert 1 <= calls <= sum(len(r.calls_ms) for r in rounds)
    assert after["measure"] == middle["measure"], "no round is measured twice"
    assert torch.equal(keep, again) and rounds == rounds_again
