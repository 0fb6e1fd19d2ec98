"""What a compile leaves on disk: the artifact's files, its manifest and its summary, so
that an engine found on a disk months later still explains itself."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwdnal.accuracy import (
    AccuracyCheck,
)
from hwdnal.atomic import atomic_write
from hwdnal.devices import Deployable, Measurement

MANIFEST_FORMAT = 1


#: the most an ONNX output may differ from PyTorch's before the artifact is refused
ONNX_ATOL = 1e-4


ONNX_NAME = "model.onnx"


INT8_ONNX_NAME = "model.int8.onnx"


ENGINE_NAME = "model.engine"


MANIFEST_NAME = "manifest.json"


#: where a compile refused for its accuracy keeps the files, inside the target's folder
REJECTED_DIR = "rejected"


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


#: test images compared between PyTorch and the compiled network (plus random ones)
CHECK_IMAGES = 8


@dataclass(frozen=True)
class CompiledArtifact:
    """The files of one compiled network and what was measured of them."""

    out_dir: Path
    target: str
    precision: str
    input_shape: tuple[int, ...]
    onnx_path: Path
    manifest_path: Path
    measurement: Measurement
    onnx_max_abs_diff: float
    engine_path: Path | None = None
    engine_max_abs_diff: float | None = None
    manifest: dict[str, Any] = field(default_factory=dict, compare=False)
    #: the Q/DQ ONNX file of an INT8 compile
    int8_onnx_path: Path | None = None
    #: the FP32 ONNX file timed beside the INT8 one (INT8 compiles)
    fp32_measurement: Measurement | None = None
    #: top-1 of PyTorch and of the deployed file; None without labelled images
    accuracy: AccuracyCheck | None = None

    @property
    def deployable(self) -> Path:
        """The file a user ships: the engine on TensorRT targets, else the ONNX file (the
        Q/DQ one with INT8)."""
        return self.engine_path or self.int8_onnx_path or self.onnx_path

    @property
    def int8_speedup(self) -> float | None:
        """FP32 latency over INT8 latency (below 1: INT8 is slower here)."""
        if self.fp32_measurement is None or not self.measurement.median_ms:
            return None
        return self.fp32_measurement.median_ms / self.measurement.median_ms

    def artifact_paths(self, run_dir: str | Path) -> dict[str, str]:
        """``artifacts`` entries for result.json, relative to ``run_dir``."""
        root = Path(run_dir).resolve()
        paths = {"onnx": self.onnx_path, "int8_onnx": self.int8_onnx_path,
                 "manifest": self.manifest_path, "engine": self.engine_path}
        return {
            f"{self.target}.{kind}": _relative(path, root)
            for kind, path in paths.items() if path is not None
        }

    def summary(self) -> dict[str, Any]:
        """The figures result.json keeps per compiled target."""
        return {
            "precision": self.precision,
            "input_shape": list(self.input_shape),
            "deployable": self.deployable.name,
            "median_ms": self.measurement.median_ms,
            "p90_ms": self.measurement.p90_ms,
            "samples": self.measurement.samples,
            "fp32_median_ms": self.fp32_measurement.median_ms if self.fp32_measurement else None,
            "int8_speedup": self.int8_speedup,
            "onnx_max_abs_diff": self.onnx_max_abs_diff,
            "engine_max_abs_diff": self.engine_max_abs_diff,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
        }


def write_files(folder: Path, onnx_data: bytes, int8_data: bytes | None,
                 deployable: Deployable) -> dict[str, Path | None]:
    """The FP32 ONNX, the Q/DQ ONNX and the engine of this compile into ``folder``; files
    an earlier compile left there and this one does not make are removed."""
    from hwdnal.onnx_export import save_onnx

    files: dict[str, Path | None] = {"onnx": save_onnx(onnx_data, folder / ONNX_NAME),
                                     "int8_onnx": None, "engine": None}
    if int8_data is not None:
        files["int8_onnx"] = atomic_write(folder / INT8_ONNX_NAME,
                                          lambda handle: handle.write(int8_data))
    else:
        _remove(folder / INT8_ONNX_NAME)
    if deployable.format == "engine":
        files["engine"] = atomic_write(folder / ENGINE_NAME,
                                       lambda handle: handle.write(deployable.data))
    else:
        _remove(folder / ENGINE_NAME)
    return files


def compiled_dir(run_dir: str | Path, target_name: str) -> Path:
    """Where a run keeps what was compiled for one target."""
    return Path(run_dir) / "compiled" / target_name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _remove(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            path.unlink()
