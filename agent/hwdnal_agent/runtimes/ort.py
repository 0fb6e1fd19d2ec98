"""ONNX Runtime with its CPU execution provider: the runtime of the `cpu` and `arm-cpu` targets.

Threads are pinned (intra- and inter-op) and execution is sequential so a latency is a
property of the network, not of the scheduler; graph optimisations are all on, as deployed
(Conv+BN+ReLU fuse into one kernel). The ONNX file itself is what deploys.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwdnal_agent.device_info import cpu_model, package_version
from hwdnal_agent.errors import DeviceError

NAME = "onnxruntime"


def installed_version() -> str:
    return package_version("onnxruntime", "onnxruntime-gpu")


def check() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, f"onnxruntime {installed_version()}"


class OrtCompiled:
    """An ONNX Runtime session with its input bound to one random array."""

    def __init__(self, session: Any, input_shape: tuple[int, ...]) -> None:
        self.session = session
        self.input_shape = input_shape
        self._input_name = session.get_inputs()[0].name
        self._x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)

    def run(self, x: np.ndarray | None = None) -> np.ndarray:
        feed = self._x if x is None else np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run(None, {self._input_name: feed})[0]

    def timings(self, n: int) -> list[float]:
        run, feed, clock = self.session.run, {self._input_name: self._x}, time.perf_counter
        out = []
        for _ in range(n):
            start = clock()
            run(None, feed)
            out.append((clock() - start) * 1e3)
        return out


class OrtRuntime:
    name = NAME
    deployable_format = "onnx"

    def __init__(self, precision: str = "fp32", threads: int = 1) -> None:
        if precision != "fp32":
            raise DeviceError(
                f"onnxruntime targets run fp32 only, the target asks for {precision}; "
                "set precision = "
                "\"fp32\" in the target file"
            )
        import onnxruntime

        self._ort = onnxruntime
        self.precision = precision
        self.threads = int(threads)

    def version(self) -> str:
        return self._ort.__version__

    def device_name(self) -> str:
        return cpu_model()

    def compile(self, network: Any, input_shape: Sequence[int] | None) -> OrtCompiled:
        """A session for ONNX ``network`` (bytes or a path); its static input shape is used
        when ``input_shape`` is None."""
        if isinstance(network, (str, Path)):
            network = Path(network).read_bytes()
        if not isinstance(network, (bytes, bytearray)):
            raise DeviceError(f"onnxruntime compiles ONNX bytes, not {type(network).__name__}")
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(bytes(network), options,
                                           providers=["CPUExecutionProvider"])
        except Exception as error:  # ORT raises its own Fail/InvalidGraph types
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise DeviceError(f"onnxruntime cannot load the model: {first}") from None
        if input_shape is None:
            dims = session.get_inputs()[0].shape
            if not all(isinstance(d, int) and d > 0 for d in dims):
                raise DeviceError(f"the ONNX model's input has a dynamic shape {dims}")
            input_shape = dims
        return OrtCompiled(session, tuple(int(d) for d in input_shape))

    def build(self, onnx_data: bytes, input_shape: Sequence[int]) -> bytes:
        """CPU targets deploy the ONNX file itself: checked by loading it, returned as is."""
        self.compile(onnx_data, input_shape)
        return bytes(onnx_data)

    def load(self, deployable: bytes, input_shape: Sequence[int] | None) -> OrtCompiled:
        return self.compile(deployable, input_shape)


def create(precision: str = "fp32", threads: int = 1) -> OrtRuntime:
    return OrtRuntime(precision=precision, threads=threads)
