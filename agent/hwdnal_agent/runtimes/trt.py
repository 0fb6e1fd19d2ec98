"""TensorRT: the runtime of the `gpu` and `jetson` targets. Engines are built on the device
that runs them (an engine is tied to its GPU model and TensorRT version) and are what
deploys.

``tensorrt`` is imported lazily (on PyPI it is a stub that downloads its libraries; on a
Jetson it comes with JetPack's system Python). Buffers and timing come from
:mod:`hwdnal_agent.runtimes.cuda_memory` (cuda-python, or torch where present). Written
against the TensorRT 10 name-based tensor API (``num_io_tensors``, ``set_tensor_address``,
``execute_async_v3``).

Not verified by the project: no machine available to its development has TensorRT.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hwdnal_agent.device_info import gpu_name, is_jetson, nvidia_gpu_present, package_version
from hwdnal_agent.errors import DeviceError
from hwdnal_agent.runtimes import cuda_memory

NAME = "tensorrt"
WORKSPACE_BYTES = 1 << 30
DEFAULT_CACHE_DIR = "~/.cache/hwdnal-agent"


def installed_version() -> str:
    found = package_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_libs")
    if found == "not installed":  # JetPack's apt package may carry no pip metadata
        import importlib.util

        if importlib.util.find_spec("tensorrt") is not None:
            try:
                import tensorrt

                return str(tensorrt.__version__)
            except Exception:
                return "unimportable"
    return found


def check() -> tuple[bool, str]:
    import importlib.util

    gpu, why = nvidia_gpu_present()
    if importlib.util.find_spec("tensorrt") is None:
        hint = ("JetPack's python3" if is_jetson()
                else "pip install 'hwdnal-agent[tensorrt]' or 'hwdnal[tensorrt]'")
        missing = f"tensorrt not installed ({hint})"
        return False, missing if gpu else f"{why}; {missing}"
    if not gpu:
        return False, why
    try:
        import tensorrt
    except Exception as error:  # PyPI stub without its libraries, wrong CUDA, ...
        return False, f"tensorrt does not import: {error}"
    if not cuda_memory.available():
        return False, ("neither cuda-python nor torch with CUDA is installed "
                       "(pip install cuda-python)")
    return True, f"tensorrt {tensorrt.__version__} on {gpu_name()}"


class TrtCompiled:
    """A deserialised engine with its execution context and device buffers."""

    def __init__(self, engine: Any, trt: Any, input_shape: Sequence[int] | None) -> None:
        self.engine = engine
        self.context = engine.create_execution_context()
        self.memory = cuda_memory.backend()
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}  # name -> device pointer, host
        self.input_name = ""
        self.output_name = ""
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                if input_shape is None:
                    input_shape = tuple(int(d) for d in engine.get_tensor_shape(name))
                    if any(d < 0 for d in input_shape):
                        raise DeviceError(
                            f"the engine's input {name} has a dynamic shape {input_shape}")
                self.context.set_input_shape(name, tuple(input_shape))
                self.input_name = self.input_name or name
            else:
                self.output_name = self.output_name or name
        if not self.input_name:
            raise DeviceError("the TensorRT engine has no input tensor")
        self.input_shape = tuple(int(d) for d in input_shape or ())
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.zeros(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            pointer = self.memory.alloc(host.nbytes)
            self.buffers[name] = (pointer, host)
            self.context.set_tensor_address(name, pointer)
        pointer, host = self.buffers[self.input_name]
        random = np.random.default_rng(0).standard_normal(host.shape)
        self.memory.upload(pointer, random.astype(host.dtype))
        self.memory.synchronize()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.memory.stream_handle()):
            raise DeviceError("TensorRT execution failed")

    def run(self, x: np.ndarray | None = None) -> np.ndarray:
        if x is not None:
            pointer, host = self.buffers[self.input_name]
            self.memory.upload(pointer, np.asarray(x).astype(host.dtype).reshape(host.shape))
        self._enqueue()
        self.memory.synchronize()
        pointer, host = self.buffers[self.output_name]
        self.memory.download(pointer, host)
        return host.astype(np.float32)

    def timings(self, n: int) -> list[float]:
        return self.memory.time_ms(self._enqueue, n)

    def __del__(self) -> None:
        for pointer, _ in getattr(self, "buffers", {}).values():
            self.memory.free(pointer)


class TrtRuntime:
    """Strongly typed engines only: the ONNX graph says each tensor's precision (an FP16
    graph for FP16, Q/DQ nodes for INT8). TensorRT 11 removed weak typing
    (``BuilderFlag.FP16``, ``BuilderFlag.INT8``, calibrators); TensorRT 10.3 (JetPack 6)
    already builds strongly typed networks, so one path serves both."""

    name = NAME
    deployable_format = "engine"

    def __init__(self, precision: str = "fp16", threads: int = 1,
                 cache_dir: str = DEFAULT_CACHE_DIR) -> None:
        import tensorrt

        if precision not in ("fp16", "fp32"):
            raise DeviceError(f"tensorrt targets support fp16 or fp32, not {precision}")
        self.trt = tensorrt
        self.precision = precision
        self.threads = int(threads)
        self.logger = tensorrt.Logger(tensorrt.Logger.WARNING)
        self.runtime = tensorrt.Runtime(self.logger)
        # kernel timings of this GPU and TensorRT version, kept across builds and runs: a
        # profile's hundreds of grid points do not re-tune the same tactics from nothing
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{gpu_name()}-trt{tensorrt.__version__}")
        self.timing_cache_path = Path(os.path.expanduser(cache_dir)) / (name + ".timing-cache")

    def version(self) -> str:
        return str(self.trt.__version__)

    def device_name(self) -> str:
        return gpu_name()

    def build(self, onnx_data: bytes, input_shape: Sequence[int]) -> bytes:
        """A serialised engine (plan) for the ONNX graph, in the graph's own precision."""
        trt = self.trt
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is None:
            raise DeviceError(f"TensorRT {trt.__version__} builds no strongly typed "
                              "networks: hwdnal needs TensorRT 10.3 or newer")
        builder = trt.Builder(self.logger)
        network = builder.create_network(1 << int(strongly_typed))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(bytes(onnx_data)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DeviceError(f"TensorRT cannot parse the ONNX graph: {errors}")
        if self.precision == "fp16" and not _has_reduced_precision(network, trt):
            raise DeviceError(
                "the target asks for fp16 but the ONNX graph has no FP16 or INT8 tensors: "
                "send an FP16 graph (hwdnal converts it on the workstation)")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        cache = config.create_timing_cache(self._read_timing_cache())
        config.set_timing_cache(cache, False)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise DeviceError("TensorRT failed to build an engine (see the agent's log)")
        self._write_timing_cache(config.get_timing_cache().serialize())
        return bytes(plan)

    def _read_timing_cache(self) -> bytes:
        try:
            return self.timing_cache_path.read_bytes()
        except OSError:
            return b""

    def _write_timing_cache(self, data: Any) -> None:
        """Atomically (the device lock keeps other agent processes out meanwhile)."""
        try:
            self.timing_cache_path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.timing_cache_path.with_suffix(".tmp")
            temporary.write_bytes(bytes(memoryview(data)))
            os.replace(str(temporary), str(self.timing_cache_path))
        except OSError:
            pass  # a cache that cannot be written only costs time

    def load(self, plan: bytes, input_shape: Sequence[int] | None) -> TrtCompiled:
        engine = self.runtime.deserialize_cuda_engine(bytes(plan))
        if engine is None:
            raise DeviceError(
                "the TensorRT engine does not load here: engines run only on the GPU model and "
                "TensorRT version that built them; rebuild it with `hwdnal compile`")
        return TrtCompiled(engine, self.trt, input_shape)

    def compile(self, network: Any, input_shape: Sequence[int] | None) -> TrtCompiled:
        if not isinstance(network, (bytes, bytearray)):
            raise DeviceError(f"tensorrt compiles ONNX bytes, not {type(network).__name__}")
        return self.load(self.build(network, input_shape or ()), input_shape)


def _has_reduced_precision(network: Any, trt: Any) -> bool:
    """Whether any layer of the parsed network computes in FP16 or INT8."""
    reduced = {trt.float16, trt.int8}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in reduced:
                return True
    return False


def create(precision: str = "fp16", threads: int = 1) -> TrtRuntime:
    return TrtRuntime(precision=precision, threads=threads)
