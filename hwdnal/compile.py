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

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hwdnal import __version__
from hwdnal.accuracy import (
    ACCURACY_IMAGES,
    MAX_ACCURACY_DROP,
    AccuracyCheck,
    HeldOut,
    check_accuracy,
    held_out_images,
)
from hwdnal.atomic import atomic_write, write_json
from hwdnal.devices import Deployable, Measurement, Measurer, as_measurer, open_measurer
from hwdnal.devices.measurer import target_settings
from hwdnal.errors import UserError
from hwdnal.quantize import CALIBRATION_IMAGES, quantize_int8
from hwdnal.run import RunDir
from hwdnal.targets import Target, load_target

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hwdnal.data import DataSpec

__all__ = [
    "ACCURACY_IMAGES", "CALIBRATION_IMAGES", "MAX_ACCURACY_DROP", "CompiledArtifact",
    "HeldOut", "bench_artifact", "calibration_batches", "check_inputs_from", "compile_network",
    "compile_run", "compiled_dir", "held_out_images", "record_in_result",
]

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


# -- compiling ---------------------------------------------------------------------------
def compile_network(
    model: nn.Module,
    input_shape: Sequence[int],
    target: Measurer | Target | str | Path,
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
    ``model`` for ``target``.

    ``target`` is a :class:`Measurer` (its device builds and measures), or a target whose own
    device is opened. ``input_shape`` is the static shape the artifact accepts (its batch is
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
    measurer, owned = as_measurer(load_target(target) if isinstance(target, Path) else target)
    try:
        return _compile(model, input_shape, measurer, Path(out_dir), _Options(
            int8_calibration, int8_method, check_inputs, check_source, held_out,
            max_accuracy_drop, atol, measurement, source))
    finally:
        if owned:
            measurer.close()


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
    inputs = [_as_tensor(x) for x in options.check_inputs or []]
    for x in inputs:
        if tuple(x.shape) != shape:
            raise ValueError(f"check input of shape {tuple(x.shape)}, expected {shape}")
    generator = torch.Generator().manual_seed(0)
    inputs += [torch.randn(*shape, generator=generator) for _ in range(4)]
    with torch.no_grad():
        expected = [_single_output(model(x)).numpy() for x in inputs]

    onnx_data = export_onnx(model, shape, check=True)  # onnx.checker runs inside
    static = _onnx_input_shape(_load_onnx(onnx_data, "the exported graph"))
    if static != shape:
        raise UserError(f"the exported ONNX input is {static}, not the static shape {shape}")
    # the export itself, checked here on the workstation with ONNX Runtime
    onnx_diff = _max_abs_diff(_ort_outputs(onnx_data, shape, inputs), expected)
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
        int8_diff = _max_abs_diff(_ort_outputs(quantized.data, shape, inputs), expected)
    # the device builds what deploys (a module travels along where its runtime runs modules)
    network: Any = model if target.runtime == "torch-cuda" else onnx_data
    deployable = measurer.build(quantized.data if quantized else network, shape)
    deployed_diff = _max_abs_diff(
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
    files = _write_files(folder, onnx_data, quantized.data if quantized else None, deployable)
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

    io_names = _onnx_io_names(onnx_data)
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
        "sha256": {path.name: _sha256(path) for path in files.values() if path is not None},
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


def _write_files(folder: Path, onnx_data: bytes, int8_data: bytes | None,
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


def _above(drop_pp: float) -> str:
    """A --max-accuracy-drop that accepts ``drop_pp``, rounded up to a tenth."""
    return f"{np.ceil(drop_pp * 10 + 1e-9) / 10:g}"


def compiled_dir(run_dir: str | Path, target_name: str) -> Path:
    """Where a run keeps what was compiled for one target."""
    return Path(run_dir) / "compiled" / target_name


def compile_run(
    run_dir: str | Path,
    target_name_or_path: str | Path,
    *,
    int8: bool = False,
    calibration_images: int = CALIBRATION_IMAGES,
    calibration_method: str = "MinMax",
    accuracy_images: int = ACCURACY_IMAGES,
    max_accuracy_drop: float = MAX_ACCURACY_DROP,
    atol: float = ONNX_ATOL,
    remote: str | None = None,
) -> CompiledArtifact:
    """Compile a finished run's ``pruned.pt`` into ``RUN/compiled/<target>/`` and record the
    files, their accuracy and the measured latency in its result.json. ``int8``: a Q/DQ
    ONNX calibrated on ``calibration_images`` of the run's training images. The deployed
    file classifies up to ``accuracy_images`` held-out images; it is refused when it loses
    more than ``max_accuracy_drop`` percentage points top-1 against PyTorch. ``remote``: the
    agent's URL when the target's device is elsewhere."""
    import torch

    run = Path(run_dir)
    result = _read_result(run)
    target = load_target(target_name_or_path).with_remote(remote)
    pruned_path = run / result.get("artifacts", {}).get("pruned_model", "pruned.pt")
    if not pruned_path.is_file():
        raise UserError(f"{pruned_path} is missing: the search in {run} did not finish")
    try:
        model = torch.load(pruned_path, weights_only=False, map_location="cpu")
    except Exception as error:
        raise UserError(f"{pruned_path} does not load ({type(error).__name__}: {error})") from None
    shape = (target.batch, *[int(d) for d in result["input_shape"][1:]])
    data, why = _run_data(run)
    if int8 and data is None:
        raise UserError(f"INT8 calibration needs the run's training images, but {why}")
    calibration = (
        calibration_batches(data, shape, calibration_images) if int8 and data is not None
        else None
    )
    inputs = check_inputs_from(data, shape) if data is not None else None
    held_out = (held_out_images(data, accuracy_images) if data is not None and accuracy_images > 0
                else None)
    with closing(open_measurer(target)) as measurer:
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
    result = _read_result(run)
    result.setdefault("artifacts", {}).update(artifact.artifact_paths(run))
    result.setdefault("compiled", {})[artifact.target] = artifact.summary()
    write_json(run / "result.json", result)
    return result


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


# -- benchmarking any artifact -----------------------------------------------------------
def artifact_kind(path: str | Path) -> str:
    """``"engine"`` or ``"onnx"``, judged by the suffix, else by whether ONNX can parse it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist (give an .onnx file or a TensorRT engine)")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return "engine"
    _load_onnx(path.read_bytes(), str(path))
    return "onnx"


def artifact_input_shape(path: str | Path) -> tuple[int, ...] | None:
    """The static input shape of an ONNX file, or of an engine from its manifest."""
    path = Path(path)
    if artifact_kind(path) == "onnx":
        return _onnx_input_shape(_load_onnx(path.read_bytes(), str(path)))
    manifest = path.parent / MANIFEST_NAME
    if manifest.is_file():
        try:
            return tuple(int(d) for d in json.loads(manifest.read_text())["input_shape"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def bench_artifact(
    path: str | Path, target: Measurer | Target | str | Path, remote: str | None = None
) -> Measurement:
    """Time an ONNX file or a TensorRT engine on ``target``'s device with its settings."""
    if not isinstance(target, (str, Path, Target)):
        measurer, owned = target, False
    else:
        spec = load_target(target) if isinstance(target, (str, Path)) else target
        measurer, owned = None, True
        spec = spec.with_remote(remote)
    spec = measurer.target if measurer is not None else spec
    path = Path(path)
    kind = artifact_kind(path)
    if kind == "engine" and spec.runtime != "tensorrt":
        raise UserError(
            f"{path.name} is a TensorRT engine, but target '{spec.name}' runs "
            f"{spec.runtime}: bench the .onnx file beside it, or use a TensorRT target"
        )
    shape = artifact_input_shape(path)  # None: an engine knows its own
    measurer = measurer or open_measurer(spec)
    try:
        if kind == "engine":
            network: Any = Deployable(path.read_bytes(), "engine", shape or ())
        else:
            network = path.read_bytes()
        return measurer.measure([(network, shape)], target_settings(spec))[0]
    finally:
        if owned:
            measurer.close()


# -- helpers -------------------------------------------------------------------------------
def _read_result(run: Path) -> dict[str, Any]:
    result = RunDir(run).read_result()
    if "input_shape" not in result:
        raise UserError(f"{run / 'result.json'} is not a hwdnal result (no input_shape)")
    return result


def _run_data(run: Path) -> tuple[DataSpec | None, str]:
    """The run's data set (as configured), or None and why not (e.g. the folder is gone)."""
    from hwdnal.data import load_data

    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as error:
        return None, f"{run / 'config.json'} is unreadable ({error})"
    try:
        return load_data(
            config["data"], config.get("data_dir"), config.get("input_size"),
            config.get("train_subset"), config.get("test_subset"), config.get("seed", 0),
        ), ""
    except (UserError, KeyError) as error:
        return None, f"its data set does not load here ({error})"


def _ort_outputs(onnx_data: bytes, shape: tuple[int, ...], inputs: list) -> list[np.ndarray]:
    """The exported graph on this machine's ONNX Runtime: checks the export itself."""
    from hwdnal_agent.runtimes.ort import OrtRuntime

    session = OrtRuntime(precision="fp32", threads=1).compile(onnx_data, shape)
    return [session.run(x.numpy()) for x in inputs]


def _max_abs_diff(outputs: Sequence[Any], expected: list[np.ndarray]) -> float:
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


def _single_output(output: Any) -> torch.Tensor:
    import torch

    if isinstance(output, torch.Tensor):
        return output.float()
    raise UserError(
        f"the network returns {type(output).__name__}, not one tensor: compile supports "
        "single-output classifiers"
    )


def _as_tensor(x: Any) -> torch.Tensor:
    import torch

    return x.detach().cpu().float() if isinstance(x, torch.Tensor) else torch.as_tensor(
        np.asarray(x, dtype=np.float32))


def _load_onnx(data: bytes, what: str) -> Any:
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


def _onnx_input_shape(model: Any) -> tuple[int, ...]:
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


def _onnx_io_names(data: bytes) -> tuple[str, str]:
    model = _load_onnx(data, "the exported graph")
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return inputs[0], model.graph.output[0].name


def _sha256(path: Path) -> str:
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
