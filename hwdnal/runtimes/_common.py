"""Small helpers shared by the runtime modules (no heavy imports here)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any


def package_version(*names: str) -> str:
    """Installed version of the first distribution found, or ``"not installed"``."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def as_onnx_bytes(network: Any, input_shape: Sequence[int]) -> bytes:
    """ONNX bytes from bytes, a path, or a module (exported at ``input_shape``)."""
    if isinstance(network, (bytes, bytearray)):
        return bytes(network)
    if isinstance(network, (str, Path)):
        return Path(network).read_bytes()
    from hwdnal.onnx_export import export_onnx

    return export_onnx(network, input_shape, check=False)


def nvidia_gpu_present() -> tuple[bool, str]:
    """Is there an NVIDIA GPU (desktop driver or Jetson's nvgpu)? Looks only at the filesystem."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True, "NVIDIA GPU"
    if Path("/dev/nvidia0").exists():
        return True, "NVIDIA GPU"
    if Path("/etc/nv_tegra_release").exists() or Path("/dev/nvhost-ctrl-gpu").exists():
        return True, "Jetson GPU"
    return False, "no NVIDIA GPU found"


def gpu_name() -> str:
    """The GPU's marketing name, from nvidia-smi or the Jetson device tree; ``"unknown"``."""
    import shutil
    import subprocess

    model = Path("/proc/device-tree/model")
    if Path("/etc/nv_tegra_release").exists() and model.exists():
        return model.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=False,
            ).stdout.strip().splitlines()
            if out:
                return out[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"
