"""TensorRT: engines built from ONNX with the tensorrt Python API, timed with CUDA sync.

The runtime of the `gpu` and `jetson` targets. tensorrt is imported only when a runtime is
created (PyPI's `tensorrt` is a stub that downloads its libraries; on a Jetson it comes with
JetPack's system Python). Device buffers are torch CUDA tensors, so no pycuda is needed.
Written against the TensorRT 10 name-based tensor API (``num_io_tensors``,
``set_tensor_address``, ``execute_async_v3``); TensorRT 8.5+ has the same calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hwdnal.errors import UserError
from hwdnal.runtimes._common import as_onnx_bytes, gpu_name, nvidia_gpu_present, package_version

NAME = "tensorrt"
WORKSPACE_BYTES = 1 << 30


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
        hint = "JetPack's python3" if why == "Jetson GPU" else "pip install hwdnal[tensorrt]"
        missing = f"tensorrt not installed ({hint})"
        return False, missing if gpu else f"{why}; {missing}"
    if not gpu:
        return False, why
    try:
        import tensorrt
    except Exception as error:  # PyPI stub without its libraries, wrong CUDA, ...
        return False, f"tensorrt does not import: {error}"
    return True, f"tensorrt {tensorrt.__version__} on {gpu_name()}"


class TrtCompiled:
    """A deserialised engine with its execution context and device buffers."""

    def __init__(self, engine: Any, input_shape: tuple[int, ...], trt: Any) -> None:
        import torch

        self.engine = engine
        self.context = engine.create_execution_context()
        self.input_shape = input_shape
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, torch.Tensor] = {}
        self.input_name = ""
        self.output_name = ""
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if is_input:
                self.context.set_input_shape(name, input_shape)
                self.input_name = self.input_name or name
            else:
                self.output_name = self.output_name or name
            shape = tuple(self.context.get_tensor_shape(name))
            numpy_dtype = trt.nptype(engine.get_tensor_dtype(name))
            dtype = torch.from_numpy(np.empty(0, dtype=numpy_dtype)).dtype
            self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.buffers[self.input_name].normal_()
        torch.cuda.synchronize()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")

    def run(self, x: np.ndarray | None = None) -> np.ndarray:
        import torch

        if x is not None:
            source = torch.from_numpy(np.ascontiguousarray(x))
            self.buffers[self.input_name].copy_(source.to(self.buffers[self.input_name].dtype))
        torch.cuda.synchronize()
        self._enqueue()
        self.stream.synchronize()
        return self.buffers[self.output_name].float().cpu().numpy()

    def timings(self, n: int) -> list[float]:
        import torch

        torch.cuda.synchronize()
        out = []
        for _ in range(n):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(self.stream)
            self._enqueue()
            end.record(self.stream)
            end.synchronize()
            out.append(float(start.elapsed_time(end)))
        return out


class TrtRuntime:
    name = NAME

    def __init__(self, precision: str = "fp16", threads: int = 1) -> None:
        ok, why = check()
        if not ok:
            raise UserError(f"the tensorrt runtime cannot run here: {why}")
        import tensorrt

        if precision not in ("fp16", "fp32"):
            raise UserError(f"tensorrt targets support fp16 or fp32, not {precision}")
        self.trt = tensorrt
        self.precision = precision
        self.threads = int(threads)
        self.logger = tensorrt.Logger(tensorrt.Logger.WARNING)
        self.runtime = tensorrt.Runtime(self.logger)

    def version(self) -> str:
        return self.trt.__version__

    def device_name(self) -> str:
        return gpu_name()

    def build(self, onnx_data: bytes) -> bytes:
        """A serialised engine (plan) for the ONNX graph; keep it to deploy."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_data):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise UserError(f"TensorRT cannot parse the ONNX graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT failed to build an engine (see its log above)")
        return bytes(plan)

    def load(self, plan: bytes, input_shape: Sequence[int]) -> TrtCompiled:
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise UserError("the TensorRT engine does not load here (built by another version?)")
        return TrtCompiled(engine, tuple(int(d) for d in input_shape), self.trt)

    def compile(self, network: Any, input_shape: Sequence[int]) -> TrtCompiled:
        return self.load(self.build(as_onnx_bytes(network, input_shape)), input_shape)


def create(precision: str = "fp16", threads: int = 1) -> TrtRuntime:
    return TrtRuntime(precision=precision, threads=threads)
