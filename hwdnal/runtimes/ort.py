"""ONNX Runtime with its CPU execution provider: the runtime of the `cpu` and `arm-cpu` targets.

Threads are pinned (intra- and inter-op) and execution is sequential so a latency is a
property of the network, not of the scheduler; graph optimisations are all on, as deployed
(Conv+BN+ReLU fuse into one kernel).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hwdnal.errors import UserError
from hwdnal.runtimes._common import as_onnx_bytes, package_version

NAME = "onnxruntime"


def installed_version() -> str:
    return package_version("onnxruntime", "onnxruntime-gpu")


def check() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime)"
    return True, f"onnxruntime {installed_version()}"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for fingerprints."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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

    def __init__(self, precision: str = "fp32", threads: int = 1) -> None:
        if precision != "fp32":
            raise UserError(
                f"onnxruntime targets run fp32 only, the target asks for {precision}; "
                "set precision = \"fp32\" in the target file"
            )
        import onnxruntime

        self._ort = onnxruntime
        self.precision = precision
        self.threads = int(threads)

    def version(self) -> str:
        return self._ort.__version__

    def device_name(self) -> str:
        return cpu_model()

    def compile(self, network: Any, input_shape: Sequence[int]) -> OrtCompiled:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(
            as_onnx_bytes(network, input_shape), options, providers=["CPUExecutionProvider"]
        )
        return OrtCompiled(session, tuple(int(d) for d in input_shape))


def create(precision: str = "fp32", threads: int = 1) -> OrtRuntime:
    return OrtRuntime(precision=precision, threads=threads)
