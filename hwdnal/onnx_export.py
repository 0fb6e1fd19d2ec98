"""Export a PyTorch module to one self-contained, static-shape ONNX file, and check it.

Every runtime that eats ONNX (ONNX Runtime, TensorRT) and ``hwdnal compile`` go through
here, so the exported graph is the same everywhere. The TorchScript-based exporter is used
first: it takes ~0.05 s for one layer and ~0.6 s for resnet18, where the dynamo exporter
takes seconds, which matters when a profile exports hundreds of layers. Where that path is
gone (newer torch), the dynamo exporter runs with ``external_data=False`` so the weights
stay inside the one file.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from hwdnal.atomic import atomic_write
from hwdnal.errors import UserError

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_onnx(
    module: nn.Module, input_shape: Sequence[int], opset: int = OPSET, check: bool = True
) -> bytes:
    """ONNX bytes of ``module`` in eval mode for a fixed ``input_shape`` (float32, on CPU)."""
    model = copy.deepcopy(module).cpu().float().eval()
    example = torch.randn(*input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
            )
        except Exception:  # the TorchScript exporter is absent or cannot trace this model
            buffer = io.BytesIO()
            torch.onnx.export(
                model, (example,), buffer, dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False,
                verbose=False,
            )
    data = buffer.getvalue()
    if check:
        import onnx

        try:
            onnx.checker.check_model(onnx.load_from_string(data))
        except onnx.checker.ValidationError as error:
            raise UserError(f"the exported ONNX graph is invalid: {error}") from error
    return data


def save_onnx(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))
