"""The ONNX a device builds from carries its precision (TensorRT builds strongly typed
networks only): FP16 targets get an FP16 graph made here, everything else is left alone."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from hwdnal.devices.precision import onnx_for_target
from hwdnal.models import create_model
from hwdnal.onnx_export import export_onnx
from hwdnal.targets import load_target

SHAPE = (1, 3, 16, 16)


def _initializer_types(data: bytes) -> set[int]:
    return {init.data_type for init in onnx.load_from_string(data).graph.initializer}


def test_fp16_tensorrt_targets_get_an_fp16_graph_that_still_computes_the_network():
    model = create_model("resnet20", 10, 3).eval()
    fp32 = export_onnx(model, SHAPE, check=False)
    fp16 = onnx_for_target(fp32, load_target("gpu"))  # tensorrt, fp16
    assert _initializer_types(fp16) == {onnx.TensorProto.FLOAT16}
    session = ort.InferenceSession(fp16, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"  # inputs and outputs stay FP32
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.dtype == np.float32 and np.abs(got - expected).max() < 0.05


def test_other_targets_and_graphs_are_left_as_they_are():
    fp32 = export_onnx(nn.Conv2d(3, 4, 3), SHAPE, check=False)
    assert onnx_for_target(fp32, load_target("cpu")) is fp32
    assert onnx_for_target(fp32, replace(load_target("gpu"), precision="fp32")) is fp32
    fp16 = onnx_for_target(fp32, load_target("gpu"))
    assert onnx_for_target(fp16, load_target("gpu")) is fp16  # already FP16


def test_a_quantized_graph_keeps_its_q_dq_nodes():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("z", TensorProto.INT8, [], [0])])
    data = helper.make_model(graph).SerializeToString()
    assert onnx_for_target(data, load_target("gpu")) is data
