"""What identifies the device a measurement was taken on (no heavy imports here).

A LUT records this fingerprint so that a table measured on one device and runtime is never
silently used for another; the agent reports it for its device, hwdnal for the local one,
with the same function.
"""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
from importlib import import_module
from pathlib import Path
from typing import Any

from hwdnal_agent import __version__

try:  # Python >= 3.8
    from importlib import metadata
except ImportError:  # pragma: no cover
    metadata = None  # type: ignore[assignment]


def package_version(*names: str) -> str:
    """Installed version of the first distribution found, or ``"not installed"``."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def is_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


def nvidia_gpu_present() -> tuple[bool, str]:
    """Is there an NVIDIA GPU (desktop driver or Jetson's nvgpu)? Looks only at the filesystem."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True, "NVIDIA GPU"
    if Path("/dev/nvidia0").exists():
        return True, "NVIDIA GPU"
    if is_jetson() or Path("/dev/nvhost-ctrl-gpu").exists():
        return True, "Jetson GPU"
    return False, "no NVIDIA GPU found"


def _run(command: list) -> str:
    if not shutil.which(command[0]):
        return ""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_name() -> str:
    """The GPU's marketing name, from nvidia-smi or the Jetson device tree; ``"unknown"``."""
    model = Path("/proc/device-tree/model")
    if is_jetson() and model.exists():
        return model.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
    lines = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).splitlines()
    return lines[0].strip() if lines else "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jetson_power_mode() -> str:
    """The nvpmodel power mode (``"MAXN"``, ``"15W"``…); latency depends on it."""
    first = _run(["nvpmodel", "-q"]).splitlines()
    for line in first:
        if "Power Mode" in line:
            return line.split(":", 1)[1].strip()
    return "unknown"


def fingerprint(runtime: str, device: str, precision: str, threads: int, batch: int
                ) -> dict[str, Any]:
    """The keys a LUT carries for measurements taken here with this runtime and settings,
    plus the host name (and the power mode on a Jetson)."""
    runtimes = import_module("hwdnal_agent.runtimes")
    found: dict[str, Any] = {
        "device": device,
        "arch": platform.machine().lower(),
        "cpu_model": cpu_model(),
        "gpu_model": gpu_name() if device != "cpu" else "none",
        "runtime": runtime,
        "runtime_version": runtimes.installed_version(runtime),
        "precision": precision,
        "batch": int(batch),
        "threads": int(threads),
        "host": socket.gethostname(),
        "agent_version": __version__,
    }
    if is_jetson():
        found["power_mode"] = jetson_power_mode()
    return found
