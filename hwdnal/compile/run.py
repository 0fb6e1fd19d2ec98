"""`hwdnal compile RUN`: a run directory's pruned network compiled for a target, recorded
in its result.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwdnal.accuracy import (
    ACCURACY_IMAGES,
    MAX_ACCURACY_DROP,
    held_out_images,
)
from hwdnal.atomic import write_json
from hwdnal.compile.artifact import CHECK_IMAGES, ONNX_ATOL, CompiledArtifact, compiled_dir
from hwdnal.compile.network import compile_network
from hwdnal.devices import Measurer
from hwdnal.errors import UserError
from hwdnal.quantize import CALIBRATION_IMAGES
from hwdnal.results import missing_keys
from hwdnal.run import RunDir

if TYPE_CHECKING:
    from hwdnal.data import DataSpec


def compile_run(
    run_dir: str | Path,
    measurer: Measurer,
    *,
    int8: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
    calibration_method: str = "MinMax",
    accuracy_images: int = ACCURACY_IMAGES,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    atol: float = ONNX_ATOL,
) -> CompiledArtifact:
    """Compile a finished run's ``pruned.pt`` into ``RUN/compiled/<target>/`` and record the
    files, their accuracy and the measured latency in its result.json. ``int8``: a Q/DQ
    ONNX calibrated on ``calibration_images`` of the run's training images. The deployed
    file classifies up to ``accuracy_images`` held-out images; it is refused when it loses
    more than ``max_accuracy_drop`` percentage points top-1 against PyTorch. ``measurer``:
    the target's device (the caller opens and closes it)."""
    import torch

    run = Path(run_dir)
    result = _read_result(run)
    target = measurer.target
    pruned_path = run / result.get("artifacts", {}).get("pruned_model", "pruned.pt")
    if not pruned_path.is_file():
        raise UserError(f"{pruned_path} is missing: the search in {run} did not finish")
    try:
        model = torch.load(pruned_path, weights_only=False, map_location="cpu")
    except Exception as error:
        raise UserError(f"{pruned_path} does not load ({type(error).__name__}: {error})") from None
    shape = (target.batch, *[int(d) for d in result["input_shape"][1:]])
    data, why = run_data(run)
    if int8 and data is None:
        raise UserError(f"INT8 calibration needs the run's training images, but {why}")
    calibration = (
        calibration_batches(data, shape, calibration_images) if int8 and data is not None
        else None
    )
    inputs = check_inputs_from(data, shape) if data is not None else None
    held_out = (held_out_images(data, accuracy_images) if data is not None and accuracy_images > 0
                else None)
    artifact = compile_network(
        model, shape, measurer, compiled_dir(run, target.name),
        int8_calibration=calibration, int8_method=calibration_method,
        check_inputs=inputs, check_source=f"{result.get('data', 'run')} test images",
        held_out=held_out, max_accuracy_drop=max_accuracy_drop, atol=atol,
        source={"run": str(run.resolve()), "model": pruned_path.name,
                "model_name": result.get("model")},
    )
    if artifact.accuracy is None:
        reason = why if data is None else "--accuracy-images 0"
        artifact.manifest["accuracy_note"] = f"not checked: {reason}"
        write_json(artifact.manifest_path, artifact.manifest)
    record_in_result(run, artifact)
    return artifact


def record_in_result(run_dir: str | Path, artifact: CompiledArtifact) -> dict[str, Any]:
    """Add the artifact's files to result.json's ``artifacts`` and its figures under
    ``compiled.<target>`` (read, modify, write atomically); returns the new result."""
    run = Path(run_dir)
    _read_result(run)  # a compile's own run: refused if it is not a hwdnal result

    def record(result: dict[str, Any]) -> None:
        result.setdefault("artifacts", {}).update(artifact.artifact_paths(run))
        result.setdefault("compiled", {})[artifact.target] = artifact.summary()

    return RunDir(run).update_result(record)


def check_inputs_from(data: DataSpec, shape: Sequence[int], count: int = CHECK_IMAGES) -> list:
    """Up to ``count`` held-out inputs of ``shape``: real images make a fairer comparison than
    noise, since they drive the activations through the ranges the network was trained on."""
    from hwdnal.data import batches

    batch = int(shape[0])
    found = []
    for images, _labels in batches(data, "test", max(batch, 1), shuffle=False):
        if len(images) == batch:
            found.append(images.reshape(*shape))
        if len(found) * batch >= count:
            break
    return found


def calibration_batches(data: DataSpec, shape: Sequence[int], images: int = CALIBRATION_IMAGES):
    """Training images in batches of ``shape`` that the INT8 quantizer calibrates on."""
    from hwdnal.data import batches

    batch, need, seen = int(shape[0]), max(int(images), 1), 0
    for chunk, _labels in batches(data, "train", 64, shuffle=True, seed=1234):
        for start in range(0, len(chunk) - batch + 1, batch):
            if seen >= need:
                return
            yield chunk[start : start + batch].reshape(*shape)
            seen += batch


def _read_result(run: Path) -> dict[str, Any]:
    result = RunDir(run).read_result()
    if missing_keys(result, ("input_shape",)):
        raise UserError(f"{run / 'result.json'} is not a hwdnal result (no input_shape)")
    return result


def run_data(run: Path) -> tuple[DataSpec | None, str]:
    """The run's data set (as configured), or None and why not (e.g. the folder is gone)."""
    from hwdnal.data import load_data

    try:
        config = RunDir(run).read_config()
    except UserError as error:
        return None, str(error)
    try:
        return load_data(
            config["data"], config.get("data_dir"), config.get("input_size"),
            config.get("train_subset"), config.get("test_subset"), config.get("seed", 0),
        ), ""
    except (UserError, KeyError) as error:
        return None, f"its data set does not load here ({error})"
