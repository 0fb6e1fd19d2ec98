"""`hwdnal bench`: any deployable file (ONNX or an engine) timed on a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hwdnal.compile.artifact import ENGINE_SUFFIXES, MANIFEST_NAME
from hwdnal.compile.onnx_check import load_onnx, onnx_input_shape
from hwdnal.devices import Deployable, Measurement, Measurer
from hwdnal.devices.measurer import target_settings
from hwdnal.errors import UserError


def artifact_kind(path: str | Path) -> str:
    """``"engine"`` or ``"onnx"``, judged by the suffix, else by whether ONNX can parse it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (give an .onnx file or a TensorRT engine)")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return "engine"
    load_onnx(path.read_bytes(), str(path))
    return "onnx"


def artifact_input_shape(path: str | Path) -> tuple[int, ...] | None:
    """The static input shape of an ONNX file, or of an engine from its manifest."""
    path = Path(path)
    if artifact_kind(path) == "onnx":
        return onnx_input_shape(load_onnx(path.read_bytes(), str(path)))
    manifest = path.parent / MANIFEST_NAME
    if manifest.is_file():
        try:
            return tuple(int(d) for d in json.loads(manifest.read_text())["input_shape"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def bench_artifact(path: str | Path, measurer: Measurer) -> Measurement:
    """Time an ONNX file or a TensorRT engine on ``measurer``'s device with its target's
    settings."""
    spec = measurer.target
    path = Path(path)
    kind = artifact_kind(path)
    if kind == "engine" and spec.runtime != "tensorrt":
        raise UserError(
            f"{path.name} is a TensorRT engine, but target '{spec.name}' runs "
            f"{spec.runtime}: bench the .onnx file beside it, or use a TensorRT target"
        )
    shape = artifact_input_shape(path)  # None: an engine knows its own
    if kind == "engine":
        network: Any = Deployable(path.read_bytes(), "engine", shape or ())
    else:
        network = path.read_bytes()
    return measurer.measure([(network, shape)], target_settings(spec))[0]
