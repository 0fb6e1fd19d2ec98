"""Targets: built-in and user files, usability with a reason, fingerprints."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from hwdnal.devices import fingerprint_here, usable_here
from hwdnal.errors import UserError
from hwdnal.targets import INFO_KEYS, MATCH_KEYS, builtin_names, load_target


def test_builtin_targets_load() -> None:
    assert {"cpu", "arm-cpu", "gpu", "jetson"} <= set(builtin_names())
    gpu = load_target("gpu")
    assert gpu.runtime == "tensorrt" and gpu.precision == "fp16" and gpu.profile.grid_step == 8
    assert load_target("cpu").runtime == "onnxruntime"


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(UserError, match="cpu, gpu, jetson"):
        load_target("tpu")


def test_cpu_is_usable_here() -> None:
    ok, why = usable_here(load_target("cpu"))
    assert ok, why


@pytest.mark.skipif(platform.machine().lower() in ("aarch64", "arm64"), reason="on ARM")
def test_arm_target_says_wrong_architecture() -> None:
    ok, why = usable_here(load_target("arm-cpu"))
    assert not ok and "architecture" in why


def test_gpu_target_says_why_not() -> None:
    ok, why = usable_here(load_target("gpu"))
    if not ok:
        assert "GPU" in why or "tensorrt" in why


def test_user_target_file(tmp_path) -> None:
    path = tmp_path / "laptop.toml"
    path.write_text('name = "laptop"\nruntime = "onnxruntime"\ndevice = "cpu"\nthreads = 4\n'
                    "[profile]\ngrid_points = 3\n")
    target = load_target(str(path))
    assert target.threads == 4 and target.profile.grid_points == 3
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nruntime = "openvino"\ndevice = "cpu"\n')
    with pytest.raises(UserError, match="openvino"):
        load_target(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_target(str(tmp_path / "missing.toml"))


def test_fingerprint_has_what_identifies_a_measurement() -> None:
    fp = fingerprint_here(load_target("cpu"))
    jetson_only = {"power_mode"}  # nvpmodel's mode, reported on Jetsons alone
    identifying = set(MATCH_KEYS) - jetson_only
    always = {"hwdnal_version", "agent_version", "target", "host", "cpu_cores"}
    assert identifying | always <= set(fp)
    assert set(fp) - identifying - always <= set(INFO_KEYS)  # where the OS reports them
    assert not set(INFO_KEYS) & set(MATCH_KEYS)  # informational: existing LUTs still match
    assert isinstance(fp["cpu_cores"], int) and fp["cpu_cores"] >= 1
    assert fp["runtime"] == "onnxruntime" and fp["threads"] == 1


def test_targets_command_lists_every_target() -> None:
    result = subprocess.run([sys.executable, "-m", "hwdnal.cli.app", "targets"],
                            capture_output=True, text=True, timeout=120, check=False,
                            env={"COLUMNS": "200", "PATH": ""})
    assert result.returncode == 0, result.stderr
    for name in ("cpu", "arm-cpu", "gpu", "jetson"):
        assert name in result.stdout
    assert "yes" in result.stdout


def test_unknown_target_on_the_cli_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hwdnal.cli.app", "profile", "--target", "tpu", "--model",
         "resnet20", "--input-size", "32"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown target 'tpu': use one of arm-cpu, cpu, gpu, jetson or the path to a "
        ".toml target file"
    ]


def test_target_files_may_name_a_remote_agent(tmp_path) -> None:
    text = (tmp_path / "cpu.toml")
    text.write_text(  # top-level keys come before the [profile] table
        'remote = "tcp://127.0.0.1:7787"\ntoken_file = "~/agent.token"\n'
        + (Path(__file__).parent.parent / "targets" / "cpu.toml").read_text()
    )
    target = load_target(text)
    assert (target.remote, target.token_file) == ("tcp://127.0.0.1:7787", "~/agent.token")
    assert target.with_remote("exec:hwdnal-agent stdio").remote == "exec:hwdnal-agent stdio"
    assert target.with_remote(None) is target


def test_a_remote_that_is_no_agent_url_is_refused(tmp_path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('name = "x"\nruntime = "onnxruntime"\ndevice = "cpu"\n'
                    'remote = "http://jetson:80"\n')
    with pytest.raises(UserError, match="not an agent URL: use ssh://"):
        load_target(path)
    with pytest.raises(UserError, match="--remote 'jetson' is not an agent URL"):
        load_target("cpu").with_remote("jetson")
