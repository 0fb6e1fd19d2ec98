"""The ONNX file read back: its shapes and names, and its outputs against PyTorch's on the
same inputs (a deployed network that computes something else is worse than none)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

import numpy as np

from hwdnal.compile.artifact import ENGINE_SUFFIXES
from hwdnal.devices import Deployable, open_check_measurer
from hwdnal.errors import UserError

if TYPE_CHECKING:
    import torch


def ort_outputs(onnx_data: bytes, shape: tuple[int, ...], inputs: list) -> list[np.ndarray]:
    """The exported graph on this machine's ONNX Runtime (fp32, one thread), through the
    check's Measurer: the export itself is checked, whatever the target."""
    with closing(open_check_measurer()) as check:
        return check.run(Deployable(onnx_data, "onnx", tuple(shape)),
                         [x.numpy() for x in inputs])


def max_abs_diff(outputs: Sequence[Any], expected: list[np.ndarray]) -> float:
    worst = 0.0
    for got, want in zip(outputs, expected, strict=True):
        got = np.asarray(got, dtype=np.float32)
        if got.shape != want.shape:
            raise UserError(
                f"the compiled network outputs shape {got.shape}, PyTorch {want.shape}"
            )
        if got.size:
            worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def single_output(output: Any) -> torch.Tensor:
    import torch

    if isinstance(output, torch.Tensor):
        return output.float()
    raise UserError(
        f"the network returns {type(output).__name__}, not one tensor: compile supports "
        "single-output classifiers"
    )


def as_tensor(x: Any) -> torch.Tensor:
    import torch

    return x.detach().cpu().float() if isinstance(x, torch.Tensor) else torch.as_tensor(
        np.asarray(x, dtype=np.float32))


def load_onnx(data: bytes, what: str) -> Any:
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception:
        model = None
    if model is None or not model.graph.node or not model.graph.input:
        raise UserError(
            f"{what} is not an ONNX model (and TensorRT engines must end in "
            f"{', '.join(ENGINE_SUFFIXES)})"
        )
    return model


def onnx_input_shape(model: Any) -> tuple[int, ...]:
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(graph_inputs) != 1:
        raise UserError(f"the ONNX model has {len(graph_inputs)} inputs; hwdnal handles one")
    dims = graph_inputs[0].type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims):
        raise UserError(
            f"the ONNX model's input {graph_inputs[0].name} has a dynamic shape: export it "
            "with a fixed shape (hwdnal compile does)"
        )
    return tuple(int(d.dim_value) for d in dims)


def onnx_io_names(data: bytes) -> tuple[str, str]:
    model = load_onnx(data, "the exported graph")
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs[0], model.graph.output[0].name
