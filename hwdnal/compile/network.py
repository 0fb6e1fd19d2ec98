"""Compiling one network for a target: ONNX export, the check against PyTorch, INT8 by
Q/DQ nodes, the engine built on the device, its held-out accuracy and its timing."""

from __future__ import annotations

import copy
import datetime as _dt
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwdnal import __version__
from hwdnal.accuracy import (
    MAX_ACCURACY_DROP,
    HeldOut,
    check_accuracy,
)
from hwdnal.atomic import write_json
from hwdnal.compile.artifact import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ONNX_ATOL,
    REJECTED_DIR,
    CompiledArtifact,
    sha256,
    write_files,
)
from hwdnal.compile.onnx_check import (
    as_tensor,
    load_onnx,
    max_abs_diff,
    onnx_input_shape,
    onnx_io_names,
    ort_outputs,
    single_output,
)
from hwdnal.devices import Measurement, Measurer
from hwdnal.devices.measurer import target_settings
from hwdnal.errors import UserError
from hwdnal.quantize import quantize_int8

if TYPE_CHECKING:
    from torch import nn


def compile_network(
    model: nn.Module,
    input_shape: Sequence[int],
    measurer: Measurer,
    out_dir: str | Path,
    *,
    int8_calibration: Iterable[Any] | None = None,
    int8_method: str = "MinMax",
    check_inputs: Sequence[Any] | None = None,
    check_source: str = "random",
    held_out: HeldOut | None = None,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    atol: float = ONNX_ATOL,
    measurement: Measurement | None = None,
    source: dict[str, Any] | None = None,
) -> CompiledArtifact:
    """Export, check, build (on the device), check the accuracy of, measure and describe
    ``model`` on ``measurer``'s device (it builds and measures; the caller opens and closes
    it). ``input_shape`` is the static shape the artifact accepts (its batch is
    the target's batch). ``int8_calibration``: INT8 on any ONNX Runtime or TensorRT target;
    it yields input batches (tensors or arrays of ``input_shape``) that ONNX Runtime's static
    quantizer calibrates on (``int8_method``: MinMax, Entropy or Percentile), and the Q/DQ
    ONNX it writes is what the device builds and deploys. ``check_inputs`` are inputs of
    ``input_shape`` compared between PyTorch and the deployed file on the device (four random
    ones are always added). ``held_out``: labelled images (:func:`held_out_images`) the
    deployed file and PyTorch classify; when the deployed top-1 falls more than
    ``max_accuracy_drop`` percentage points below PyTorch's, the files are moved to
    ``out_dir/rejected/`` and a :class:`UserError` says so (without ``held_out`` the manifest
    records ``accuracy: null``). ``measurement`` is a timing the caller already took of this
    very network on this device (the budget loop's last), recorded instead of timing again
    (not with INT8, whose FP32 and INT8 files are always timed together).
    """
    return _compile(model, input_shape, measurer, Path(out_dir), _Options(
        int8_calibration, int8_method, check_inputs, check_source, held_out,
        max_accuracy_drop, atol, measurement, source))


@dataclass
class _Options:
    int8_calibration: Iterable[Any] | None
    int8_method: str
    check_inputs: Sequence[Any] | None
    check_source: str
    held_out: HeldOut | None
    max_accuracy_drop: float
    atol: float
    measurement: Measurement | None
    source: dict[str, Any] | None


def _compile(
    model: nn.Module, input_shape: Sequence[int], measurer: Measurer, out: Path,
    options: _Options,
) -> CompiledArtifact:
    target = measurer.target
    shape = tuple(int(d) for d in input_shape)
    int8 = options.int8_calibration is not None
    if int8 and target.runtime not in ("onnxruntime", "tensorrt"):
        raise UserError(
            f"INT8 deploys a Q/DQ ONNX file, which ONNX Runtime and TensorRT targets run; "
            f"target '{target.name}' runs {target.runtime}: leave out --int8"
        )
    import torch

    from hwdnal.onnx_export import export_onnx

    model = copy.deepcopy(model).cpu().float().eval()  # the caller's model stays put
    inputs = [as_tensor(x) for x in options.check_inputs or []]
    for x in inputs:
        if tuple(x.shape) != shape:
            raise ValueError(f"check input of shape {tuple(x.shape)}, expected {shape}")
    generator = torch.Generator().manual_seed(0)
    inputs += [torch.randn(*shape, generator=generator) for _ in range(4)]
    with torch.no_grad():
        expected = [single_output(model(x)).numpy() for x in inputs]

    onnx_data = export_onnx(model, shape, check=True)  # onnx.checker runs inside
    static = onnx_input_shape(load_onnx(onnx_data, "the exported graph"))
    if static != shape:
        raise UserError(f"the exported ONNX input is {static}, not the static shape {shape}")
    # the export itself, checked here on the workstation with ONNX Runtime
    onnx_diff = max_abs_diff(ort_outputs(onnx_data, shape, inputs), expected)
    # float32 sums of thousands of products differ in their last bits between kernels: the
    # limit is absolute for outputs up to 1 and relative (atol × largest output) above
    scale = max(1.0, max(float(np.abs(e).max()) for e in expected if e.size))
    if not onnx_diff <= options.atol * scale:
        raise UserError(
            f"the ONNX export differs from PyTorch by {onnx_diff:.3g} (max abs, limit "
            f"{options.atol * scale:.3g} for outputs up to {scale:.3g}); the model probably "
            "uses an operator the exporter mis-translates: nothing was written"
        )
    quantized, int8_diff = None, None
    if options.int8_calibration is not None:
        quantized = quantize_int8(onnx_data, options.int8_calibration,
                                  method=options.int8_method)
        # the Q/DQ file runs on this machine's ONNX Runtime, whatever the target
        int8_diff = max_abs_diff(ort_outputs(quantized.data, shape, inputs), expected)
    # the device builds what deploys (a module travels along where its runtime runs modules)
    network: Any = model if target.runtime == "torch-cuda" else onnx_data
    deployable = measurer.build(quantized.data if quantized else network, shape)
    deployed_diff = max_abs_diff(
        measurer.run(deployable, [x.numpy() for x in inputs]), expected
    )
    accuracy = (check_accuracy(model, measurer, deployable, options.held_out, shape)
                if options.held_out is not None and len(options.held_out) else None)
    precision = "int8" if quantized else target.precision
    rejected = accuracy is not None and accuracy.drop_pp > options.max_accuracy_drop

    folder = out / REJECTED_DIR if rejected else out
    if rejected and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = write_files(folder, onnx_data, quantized.data if quantized else None, deployable)
    onnx_path, int8_path, engine_path = files["onnx"], files["int8_onnx"], files["engine"]
    deployable_path = engine_path or int8_path or onnx_path
    fp32_measurement = None
    if not rejected:
        if quantized is not None:  # both files, interleaved in one measurement
            measurement, fp32_measurement = measurer.measure(
                [(deployable, shape), (network, shape)], target_settings(target))
        else:
            measurement = options.measurement or measurer.measure(
                [(deployable, shape)], target_settings(target))[0]

    io_names = onnx_io_names(onnx_data)
    check_source = (f"{options.check_source} + 4 random" if options.check_inputs
                    else "4 random")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "hwdnal": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "target": {"name": target.name,
                   "fingerprint": deployable.fingerprint or measurer.fingerprint()},
        "device": measurer.where,
        "runtime": target.runtime,
        "precision": precision,
        "input_shape": list(shape),
        "input_name": io_names[0],
        "output_name": io_names[1],
        "output_shape": list(expected[0].shape),
        "deployable": deployable_path.name,
        "files": {kind: path.name for kind, path in files.items() if path is not None},
        "sha256": {path.name: sha256(path) for path in files.values() if path is not None},
        "check": {
            "onnx_vs_torch_max_abs_diff": onnx_diff,
            "int8_onnx_vs_torch_max_abs_diff": int8_diff,
            "deployed_vs_torch_max_abs_diff": deployed_diff,
            "engine_vs_torch_max_abs_diff": deployed_diff if engine_path else None,
            "deployed_checked_on": measurer.where,
            "tolerance": options.atol,
            "inputs": len(inputs),
            "input_source": check_source,
        },
        "accuracy": accuracy.to_dict() if accuracy else None,
        "max_accuracy_drop_pp": options.max_accuracy_drop,
    }
    if accuracy is None:
        manifest["accuracy_note"] = (
            "not checked: no labelled held-out images were given" if options.held_out is None
            else "not checked: the held-out set is empty")
    if quantized is not None:
        manifest["quantization"] = {**quantized.settings, "qdq_nodes": quantized.qdq_nodes}
    if rejected:
        assert accuracy is not None
        message = (
            f"the deployed {deployable_path.name} ({precision}) classifies {accuracy.images} "
            f"{accuracy.source} at {accuracy.deployed:.2%} top-1, PyTorch at "
            f"{accuracy.reference:.2%} ({accuracy.change_pp:+.2f} pp), beyond --max-accuracy-drop "
            f"{options.max_accuracy_drop:g}: not deployed, kept aside in {folder} for "
            f"inspection; pass --max-accuracy-drop {_above(accuracy.drop_pp)} to accept it "
            "knowingly"
        )
        write_json(folder / MANIFEST_NAME, {**manifest, "rejected": message})
        raise UserError(message)
    assert measurement is not None
    manifest["latency"] = {**measurement.to_dict(), "measured": deployable_path.name,
                           "measured_on": measurer.where}
    if fp32_measurement is not None:
        manifest["latency_fp32"] = {
            **fp32_measurement.to_dict(), "measured": onnx_path.name,
            "built_as": target.precision, "measured_on": measurer.where,
            "interleaved_with": deployable_path.name,
        }
        manifest["int8_speedup"] = fp32_measurement.median_ms / measurement.median_ms
    manifest["source"] = options.source or {}
    manifest_path = write_json(out / MANIFEST_NAME, manifest)
    return CompiledArtifact(
        out_dir=out, target=target.name, precision=precision, input_shape=shape,
        onnx_path=onnx_path, manifest_path=manifest_path, measurement=measurement,
        onnx_max_abs_diff=onnx_diff,
        engine_path=engine_path, engine_max_abs_diff=deployed_diff if engine_path else None,
        manifest=manifest, int8_onnx_path=int8_path, fp32_measurement=fp32_measurement,
        accuracy=accuracy,
    )


def _above(drop_pp: float) -> str:
    """A --max-accuracy-drop that accepts ``drop_pp``, rounded up to a tenth."""
    return f"{np.ceil(drop_pp * 10 + 1e-9) / 10:g}"
