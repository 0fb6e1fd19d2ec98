"""INT8 by explicit quantization: QuantizeLinear/DequantizeLinear nodes in the ONNX graph.

The exported FP32 ONNX file is quantized with ONNX Runtime's static quantization
(:mod:`onnxruntime.quantization`, shipped inside the onnxruntime wheel), calibrated on the
run's own training images. The result is a Q/DQ ("QDQ") ONNX model with symmetric INT8
activations and per-channel symmetric INT8 weights (zero points 0): the form TensorRT's
strongly typed networks take INT8 from, and one ONNX Runtime's CPU provider runs with its
INT8 kernels. One file therefore serves every target: ONNX Runtime deploys it as is, and a
TensorRT target builds its engine from it on the device.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwdnal.errors import UserError

#: training images the calibrator sees by default
CALIBRATION_IMAGES = 512
QUANTIZER = "onnxruntime.quantization"
METHODS = ("MinMax", "Entropy", "Percentile")


@dataclass(frozen=True)
class QuantizedOnnx:
    """A Q/DQ ONNX model and how it was made (the manifest's ``quantization``)."""

    data: bytes = field(repr=False)
    settings: dict[str, Any]

    @property
    def qdq_nodes(self) -> int:
        return count_qdq_nodes(self.data)


def quantize_int8(
    onnx_data: bytes,
    calibration: Iterable[Any],
    *,
    method: str = "MinMax",
) -> QuantizedOnnx:
    """``onnx_data`` (an FP32 model with one static-shape input) with Q/DQ nodes, calibrated
    on ``calibration``: arrays or tensors of the model's input shape, normalised as the
    network sees them. ``method`` is ORT's calibration method (MinMax, Entropy, Percentile).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise UserError(f"unknown calibration method '{method}': use one of {', '.join(METHODS)}")
    model = onnx.load_from_string(onnx_data)
    input_name = model.graph.input[0].name
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    batches = [np.ascontiguousarray(_as_array(b), dtype=np.float32) for b in calibration]
    batches = [b for b in batches if b.shape == shape]
    if not batches:
        raise UserError(f"no calibration batches of shape {shape} for INT8")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._feeds, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._feeds = iter(batches)

    settings = {
        "tool": QUANTIZER,
        "format": "QDQ",
        "calibration_images": sum(int(b.shape[0]) for b in batches),
        "method": method,
        "per_channel": True,
        "activations": "QInt8, symmetric",
        "weights": "QInt8, symmetric",
    }
    with tempfile.TemporaryDirectory(prefix="hwdnal-int8-") as folder:
        fp32, prepared, qdq = (Path(folder) / n for n in ("fp32.onnx", "pre.onnx", "qdq.onnx"))
        fp32.write_bytes(onnx_data)
        try:
            # shape inference and ORT's graph optimisations (Conv+BN folded) before the
            # quantizer places its Q/DQ pairs, as ORT's quantization guide recommends
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        except Exception:  # a graph the pre-processor cannot handle is quantized as it is
            prepared = fp32
        try:
            quantize_static(
                str(prepared), str(qdq), Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
                # TensorRT takes INT8 Q/DQ with zero point 0 only: symmetric everywhere, and
                # ORT's CPU provider runs the same file
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
            )
        except Exception as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise UserError(
                f"INT8 quantization with {QUANTIZER} failed ({type(error).__name__}: {first})"
            ) from None
        data = _standard_opsets_only(qdq.read_bytes())
    if not count_qdq_nodes(data):
        raise UserError("INT8 quantization inserted no QuantizeLinear/DequantizeLinear nodes")
    return QuantizedOnnx(data, settings)


def count_qdq_nodes(onnx_data: bytes) -> int:
    """How many QuantizeLinear and DequantizeLinear nodes the ONNX graph has."""
    import onnx

    graph = onnx.load_from_string(onnx_data).graph
    return sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _standard_opsets_only(onnx_data: bytes) -> bytes:
    """The model without the opset imports of domains no node uses: ORT's pre-processing
    declares its own (com.microsoft, …), which other runtimes' parsers need not know."""
    import onnx

    model = onnx.load_from_string(onnx_data)
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"}
    unused = [o for o in model.opset_import if o.domain not in used]
    if any(node.domain not in ("", "ai.onnx") for node in model.graph.node):
        raise UserError("INT8 quantization produced operators outside the standard ONNX "
                        "domain, which TensorRT cannot build")
    for opset in unused:
        model.opset_import.remove(opset)
    return model.SerializeToString()


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)
