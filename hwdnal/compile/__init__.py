"""Compile a pruned network into what a user deploys, measure it on the target, say what it is.

`hwdnal compile` and the end of `hwdnal search` come here. Every target gets a static-shape
ONNX file, validated by onnx's checker and compared with PyTorch on the same inputs (the
largest absolute difference is recorded; above ``atol`` (times the largest output, when that
exceeds 1) the artifact is refused, because a deployed network that computes something else
is worse than none). With INT8 that file is quantized with Q/DQ nodes
(:mod:`hwdnal.quantize`), on every target. TensorRT targets build an engine from the ONNX
file. Building, running the deployed file on labelled held-out images (its top-1 against
PyTorch's, :mod:`hwdnal.accuracy`, refused beyond ``max_accuracy_drop``) and its timing all
go through the target's :class:`~hwdnal.devices.Measurer`, on the device that will run it:
this machine, or a device's `hwdnal-agent`. A ``manifest.json`` beside it records what it
is, how accurate it was, where it was measured and how fast it ran, so that an engine found
on a disk months later still explains itself.

torch is imported inside the functions: `hwdnal bench` on an ONNX file needs only ONNX
Runtime, and starts in a fraction of the time.
"""

from hwdnal.accuracy import ACCURACY_IMAGES, MAX_ACCURACY_DROP, HeldOut, held_out_images
from hwdnal.compile.artifact import (
    CHECK_IMAGES,
    ENGINE_NAME,
    INT8_ONNX_NAME,
    MANIFEST_NAME,
    ONNX_ATOL,
    ONNX_NAME,
    CompiledArtifact,
    compiled_dir,
)
from hwdnal.compile.bench import artifact_input_shape, artifact_kind, bench_artifact
from hwdnal.compile.network import compile_network
from hwdnal.compile.run import (
    calibration_batches,
    check_inputs_from,
    compile_run,
    record_in_result,
    run_data,
)
from hwdnal.quantize import CALIBRATION_IMAGES

__all__ = [
    "ACCURACY_IMAGES", "CALIBRATION_IMAGES", "CHECK_IMAGES", "ENGINE_NAME", "INT8_ONNX_NAME",
    "MANIFEST_NAME", "MAX_ACCURACY_DROP", "ONNX_ATOL", "ONNX_NAME", "CompiledArtifact",
    "HeldOut", "artifact_input_shape", "artifact_kind", "bench_artifact",
    "calibration_batches", "check_inputs_from", "compile_network", "compile_run",
    "compiled_dir", "held_out_images", "record_in_result", "run_data",
]
