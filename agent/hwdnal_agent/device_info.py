"""What identifies the device a measurement was taken on (no heavy imports here).

A LUT records this fingerprint so that a table measured on one device and runtime is never
silently used for another; the agent reports it for its device, hwdnal for the local one,
with the same function.
"""

from __future__ import annotations

import glob
import os
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


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def cpu_max_mhz() -> int | None:
    """The first core's highest clock in MHz (cpufreq), where the OS exposes it."""
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    return int(khz) // 1000 if khz.isdigit() else None


def cpu_caches() -> str | None:
    """The first core's caches, e.g. ``"L1d 48K, L1i 32K, L2 1024K, L3 32768K"`` (sysfs)."""
    found = []
    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        level, kind = _read(index + "/level"), _read(index + "/type")
        size = _read(index + "/size")
        if not (level and size):
            continue
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        found.append(f"L{level}{suffix} {size}")
    return ", ".join(found) or None


def gpu_max_clocks() -> str | None:
    """The GPU's highest clocks: nvidia-smi's SM/memory maxima, or a Jetson's GPU devfreq."""
    if is_jetson():
        for folder in sorted(glob.glob("/sys/class/devfreq/*")):
            if any(n in os.path.basename(folder) for n in ("gpu", "ga10b", "gv11b", "gp10b")):
                hz = _read(folder + "/max_freq")
                if hz.isdigit():
                    return f"{int(hz) // 1000000} MHz"
        return None
    lines = _run(["nvidia-smi", "--query-gpu=clocks.max.sm,clocks.max.mem",
                  "--format=csv,noheader"]).splitlines()
    return lines[0].strip() if lines else None


def informational() -> dict[str, Any]:
    """What tells machines apart beyond the matched keys, where the OS reports it: core
    count, clocks, cache sizes. Recorded in a LUT and shown, never required to match (an
    existing LUT stays usable); hwdnal's check of a reused LUT against the device's own
    measurement is what catches a machine these keys do not tell apart."""
    found: dict[str, Any] = {"cpu_cores": os.cpu_count()}
    for key, value in (("cpu_max_mhz", cpu_max_mhz()), ("cpu_caches", cpu_caches())):
        if value:
            found[key] = value
    return found


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
    found.update(informational())
    if device != "cpu":
        clocks = gpu_max_clocks()
        if clocks:
            found["gpu_max_clocks"] = clocks
    return found
