"""The ONNX graph a device builds from carries its precision: TensorRT builds strongly typed
networks (TensorRT 11 has no other kind), so an FP16 engine needs an FP16 graph.

The conversion happens here, on the workstation, so the device needs neither onnx nor a
converter. It uses onnxconverter-common's ``convert_float_to_float16`` (Microsoft, pure
Python, inputs and outputs kept FP32 with casts inside): NVIDIA's ModelOpt AutoCast would do
the same job, but its ``[onnx]`` extra installs onnxruntime-gpu and cupy, which replace the
CPU onnxruntime every CPU target measures with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwdnal.targets import Target

#: ONNX TensorProto.FLOAT
_FLOAT32 = 1
_QUANTIZERS = ("QuantizeLinear", "DequantizeLinear")


def onnx_for_target(onnx_data: bytes, target: Target) -> bytes:
    """``onnx_data`` as the target's device should build it: FP16 for FP16 TensorRT targets,
    unchanged otherwise (FP32 targets, Q/DQ INT8 graphs, graphs already in FP16)."""
    if target.runtime != "tensorrt" or target.precision != "fp16":
        return onnx_data
    import onnx

    model = onnx.load_from_string(onnx_data)
    if any(node.op_type in _QUANTIZERS for node in model.graph.node):
        return onnx_data  # INT8 where the Q/DQ nodes say, the rest as exported
    if not any(init.data_type == _FLOAT32 for init in model.graph.initializer):
        return onnx_data
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True).SerializeToString()
