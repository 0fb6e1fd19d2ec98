"""PyTorch on a CUDA GPU without TensorRT: the module replayed as a CUDA graph, timed with
CUDA events. Used only where torch is already installed.

Locally, hwdnal hands over modules. Through the agent only ONNX arrives; it becomes a module
with ``onnx2torch`` when that is installed (``pip install onnx2torch``), and the runtime
says so otherwise. The ONNX file is what deploys.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np

from hwdnal_agent.device_info import gpu_name, nvidia_gpu_present, package_version
from hwdnal_agent.errors import DeviceError

NAME = "torch-cuda"


def installed_version() -> str:
    return package_version("torch")


def check() -> tuple[bool, str]:
    gpu, why = nvidia_gpu_present()
    if not gpu:
        return False, why
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} was built without CUDA or sees no GPU"
    return True, f"torch {torch.__version__} on {torch.cuda.get_device_name()}"


class CudaGraphCompiled:
    """A module captured once in a CUDA graph with static input and output tensors."""

    def __init__(self, module: Any, input_shape: tuple[int, ...], dtype: Any) -> None:
        import torch

        self.input_shape = input_shape
        self.module = module
        self.static_input = torch.randn(input_shape, device="cuda", dtype=dtype)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm-up outside the graph (cuDNN picks its algorithms)
                module(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_output = module(self.static_input)
        torch.cuda.synchronize()

    def run(self, x: np.ndarray | None = None) -> np.ndarray:
        import torch

        if x is not None:
            self.static_input.copy_(torch.from_numpy(np.ascontiguousarray(x)))
        self.graph.replay()
        torch.cuda.synchronize()
        return self.static_output.float().cpu().numpy()

    def timings(self, n: int) -> list[float]:
        import torch

        torch.cuda.synchronize()
        out = []
        for _ in range(n):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            self.graph.replay()
            end.record()
            end.synchronize()
            out.append(float(start.elapsed_time(end)))
        return out


class TorchCudaRuntime:
    name = NAME
    deployable_format = "onnx"

    def __init__(self, precision: str = "fp16", threads: int = 1) -> None:
        import torch

        if precision not in ("fp16", "fp32"):
            raise DeviceError(f"torch-cuda targets support fp16 or fp32, not {precision}")
        self.torch = torch
        self.precision = precision
        self.threads = int(threads)
        torch.backends.cudnn.benchmark = True

    def version(self) -> str:
        return f"{self.torch.__version__} (CUDA {self.torch.version.cuda})"

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name() if self.torch.cuda.is_available() else gpu_name()

    def _module(self, network: Any) -> Any:
        if isinstance(network, self.torch.nn.Module):
            return copy.deepcopy(network)
        if not isinstance(network, (bytes, bytearray)):
            raise DeviceError("torch-cuda compiles modules or ONNX bytes")
        try:
            import onnx
            from onnx2torch import convert
        except ImportError:
            raise DeviceError(
                "torch-cuda on an agent needs onnx2torch to run ONNX: pip install onnx2torch"
            ) from None
        return convert(onnx.load_from_string(bytes(network)))

    def compile(self, network: Any, input_shape: Sequence[int] | None) -> CudaGraphCompiled:
        if input_shape is None:
            raise DeviceError("torch-cuda needs the input shape")
        dtype = self.torch.float16 if self.precision == "fp16" else self.torch.float32
        module = self._module(network).eval().to(device="cuda", dtype=dtype)
        return CudaGraphCompiled(module, tuple(int(d) for d in input_shape), dtype)

    def build(self, onnx_data: bytes, input_shape: Sequence[int]) -> bytes:
        """The ONNX file deploys (a PyTorch deployment loads it, or the module it came from)."""
        return bytes(onnx_data)

    def load(self, deployable: bytes, input_shape: Sequence[int] | None) -> CudaGraphCompiled:
        return self.compile(deployable, input_shape)


def create(precision: str = "fp16", threads: int = 1) -> TorchCudaRuntime:
    return TorchCudaRuntime(precision=precision, threads=threads)
